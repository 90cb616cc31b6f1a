"""An origin that sends its bodies chunked (no Content-Length), through the whole stack.

Expanded, a range of such an object becomes a whole fetch answered with a chunked `200`, whose
size nobody can read from its head. The ICAP service refuses to let Squid store an object of
unknown size in a class whose limit is below Squid's global one (it cannot enforce the limit),
which for an expanded object meant one whole copy upstream for every range. The store-ID helper
only says `expand=1` for an object whose recorded size is within its class limit, and Squid
hands that note to the ICAP service (`X-PC-Expand`): such a response is stored, once.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest
from support.suite_stack import (
    StackFactory,
    codes_since,
    fetch_whole,
    running_squid,
    wait_state_created,
    wait_swapped_out,
)

from patchcache.rules import load_rules
from patchcache.state import StateStore
from patchcache.testbed import MiB, Origin, verify_bytes

pytestmark = pytest.mark.squid

# Squid's global limit is the largest class limit (the Windows Update pack's 8 GiB): the
# delivery-optimization class, limited to 64 MiB here, relies on the ICAP service for its limit.
RULES = """\
[settings]
default_max_object_size = "8 MiB"
prefetch_delay = 3600
[classes.delivery-optimization]
max_object_size = "64 MiB"
"""
GUID = "0c0ffee0-2222-3333-4444-555555555555"


def test_expanded_chunked_object_is_stored_once(
    origin: Origin, stack_factory: StackFactory
) -> None:
    obj = origin.register(
        f"/filestreamingservice/files/{GUID}", 8 * MiB, seed="chunk", chunked=True
    )
    urls = [
        f"http://dl.delivery.mp.microsoft.com:{origin.port}{obj.path}?P1={1800000000 + i}&P4=s{i}"
        for i in range(3)
    ]
    stack = stack_factory(RULES, head_lookup=False)
    squid = running_squid(stack)
    wait_state_created(stack)  # before this test writes it as root
    found = load_rules(stack.rules_path).key_for(urls[0])
    assert found is not None
    cls, key = found
    # Known from an earlier first sight (a 206's Content-Range total): the first range expands.
    with StateStore(stack.state_dir) as state:
        assert state.record_first_sight(
            key, urls[0], cls.name, obj.size, obj.etag, obj.last_modified, due_at=time.time() + 3600
        )
    ranges = [(0, MiB - 1), (3 * MiB, 4 * MiB - 1), (7 * MiB, 8 * MiB - 1)]
    mark = len(squid.access_log_entries())
    for index, (url, (first, last)) in enumerate(zip(urls, ranges, strict=True)):
        reply = fetch_whole(
            stack.proxy_url, url, verify=obj.content, headers={"Range": f"bytes={first}-{last}"}
        )
        # While the entry fills, Squid answers a range of a chunked whole fetch with the whole
        # `200` (checked byte by byte by fetch_whole); from the cache, with the range asked.
        assert reply.status in (200, 206), reply
        assert reply.length == (obj.size if reply.status == 200 else last - first + 1)
        if index == 0:
            wait_swapped_out(squid, GUID.split("-")[0])
    codes = codes_since(squid, mark, len(urls))
    assert "HIT" in codes[-1], codes
    gets = [r for r in origin.requests(obj.path) if r.method == "GET"]
    assert len(gets) == 1, gets
    assert origin.bytes_sent(obj.path) == obj.size


def test_stored_chunked_object_serves_the_right_bytes_from_the_cache(
    origin: Origin, stack_factory: StackFactory
) -> None:
    """Later requests are hits with the origin's bytes and cost nothing upstream.

    Squid 5.7 answers a range of an object stored without a length with the whole `200` (it
    serves ranges only of objects whose length it knows): correct bytes, but more than asked.
    """
    obj = origin.register(
        f"/filestreamingservice/files/{GUID}", 4 * MiB, seed="bytes", chunked=True
    )
    url = f"http://dl.delivery.mp.microsoft.com:{origin.port}{obj.path}?P1=1"
    stack = stack_factory(RULES, head_lookup=False)
    squid = running_squid(stack)
    wait_state_created(stack)  # before this test writes it as root
    found = load_rules(stack.rules_path).key_for(url)
    assert found is not None
    with StateStore(stack.state_dir) as state:
        assert state.record_first_sight(
            found[1],
            url,
            found[0].name,
            obj.size,
            obj.etag,
            obj.last_modified,
            due_at=time.time() + 3600,
        )
    fetch_whole(stack.proxy_url, url, verify=obj.content, headers={"Range": "bytes=0-99"})
    wait_swapped_out(squid, GUID.split("-")[0])
    sent = origin.bytes_sent(obj.path)
    mark = len(squid.access_log_entries())
    first, last = MiB + 5, 2 * MiB + 10
    proxy = urlsplit(stack.proxy_url)
    assert proxy.hostname is not None and proxy.port is not None
    conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=30)
    try:
        conn.request("GET", url, headers={"Range": f"bytes={first}-{last}"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status == 206:
        assert len(body) == last - first + 1
        verify_bytes(obj.content, first, body, url=url)
    else:
        assert response.status == 200
        assert len(body) == obj.size
        verify_bytes(obj.content, 0, body, url=url)
    assert "HIT" in codes_since(squid, mark, 1)[0]
    assert origin.bytes_sent(obj.path) == sent
