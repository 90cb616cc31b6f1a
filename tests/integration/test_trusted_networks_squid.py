"""Delivery Optimization by IP address, through a real Squid 5.7 and the store-ID helper.

The DO host name maps to the origin on 127.0.0.1; a cache on 127.0.0.2, inside the DO class's
`trusted_networks` (127.0.0.0/30), serves the same bytes. The named URL, the bare-address URL
and the Connected Cache URL (`?...&cacheHostOrigin=dl.delivery.mp.microsoft.com`) of one GUID
make one upstream copy. (127.0.0.2 is in no hosts_file line: Squid's dstdomain would otherwise
find the class's name by reverse lookup, and the generated `dst -n` ACL would go untested.) An
impostor on 127.0.0.9 (outside the network) serves other bytes under the same path: its
answers never reach the shared key, in either URL form, and the genuine copy stays served.

Upstream traffic is counted at the origins, GETs only (the helper's size look-up is a HEAD).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.suite_stack import StackFactory, codes_since, fetch_whole, running_squid

from patchcache.testbed import MiB, Origin, OriginObject, http_request

pytestmark = pytest.mark.squid

TRUSTED_ADDRESS = "127.0.0.2"
UNTRUSTED_ADDRESS = "127.0.0.9"
RULES = """\
[settings]
default_max_object_size = "8 MiB"

[classes.delivery-optimization]
trusted_networks = ["127.0.0.0/30"]
"""
DO_HOST = "dl.delivery.mp.microsoft.com"
PATH = "/filestreamingservice/files/5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
ORIGIN_PARAM = f"cacheHostOrigin={DO_HOST}"


@pytest.fixture
def cache() -> Iterator[Origin]:
    with Origin(TRUSTED_ADDRESS) as server:
        yield server


def gets(origin: Origin, path: str) -> int:
    return sum(1 for record in origin.requests(path) if record.method == "GET")


def get_range(proxy: str, target: str, obj: OriginObject, first: int, last: int) -> None:
    reply = http_request(proxy, target, headers={"Range": f"bytes={first}-{last}"})
    assert reply.status == 206, (reply.status, target)
    assert reply.header("Content-Range") == f"bytes {first}-{last}/{obj.size}"
    assert reply.body == obj.content.read(first, last - first + 1), f"wrong bytes from {target}"


def get_whole(proxy: str, target: str, obj: OriginObject) -> None:
    reply = fetch_whole(proxy, target, verify=obj.content)
    assert (reply.status, reply.length) == (200, obj.size), (reply.status, reply.length, target)


def test_named_and_trusted_address_urls_share_one_upstream_copy(
    origin: Origin, cache: Origin, stack_factory: StackFactory
) -> None:
    obj = origin.register(PATH, 3 * MiB, seed="do-by-address")
    cache.register(PATH, content=obj.content, etag=obj.etag or False)
    stack = stack_factory(RULES, head_lookup=False)
    squid = running_squid(stack)
    proxy = stack.proxy_url
    named = f"http://{DO_HOST}:{origin.port}{PATH}"
    get_whole(proxy, f"{named}?P1=1800000001&P2=404&P4=c2ln", obj)
    mark = len(squid.wait_for_access_lines(1))

    by_address = f"http://{TRUSTED_ADDRESS}:{cache.port}{PATH}"
    get_range(proxy, f"{by_address}?P1=1800000002&P2=404&P4=b3Ro", obj, 0, MiB - 1)
    get_range(proxy, f"{by_address}?P1=1800000003&P4=eA&{ORIGIN_PARAM}", obj, 2 * MiB, 3 * MiB - 1)
    assert codes_since(squid, mark, 2) == ["TCP_HIT/206", "TCP_HIT/206"]
    assert gets(origin, PATH) + gets(cache, PATH) == 1

    # An address outside the network: its own bytes each time, never the shared copy's, and
    # the shared copy is not replaced by them.
    with Origin(UNTRUSTED_ADDRESS) as impostor:
        fake = impostor.register(PATH, 3 * MiB, seed="impostor")
        base = f"http://{UNTRUSTED_ADDRESS}:{impostor.port}{PATH}"
        get_whole(proxy, f"{base}?P1=1800000004&P4=eQ", fake)
        get_whole(proxy, f"{base}?P1=1800000005&P4=eg&{ORIGIN_PARAM}", fake)
        assert gets(impostor, PATH) == 2
    get_range(proxy, f"{named}?P1=1800000006&P4=ew", obj, MiB, 2 * MiB - 1)
    get_range(proxy, f"{by_address}?P1=1800000007", obj, MiB, MiB + 99)
    assert gets(origin, PATH) + gets(cache, PATH) == 1
