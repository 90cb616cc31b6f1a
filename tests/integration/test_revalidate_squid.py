"""`freshness = "revalidate"`: a file changed in place is served new, not stale (real Squid).

Antivirus definitions, trust lists and installers keep their URL when their content changes.
Squid's default `refresh_pattern . 0 20% 4320` keeps an object fresh for a fifth of its age (up
to 3 days) without asking the origin; the generated `refresh_pattern ^<class key prefix>/ 0 0% 0`
makes every hit of such a class a conditional request, answered 304 while nothing changed.
"""

from __future__ import annotations

import pytest
from support.suite_stack import StackFactory, running_squid

from patchcache.testbed import Origin
from patchcache.testbed.clients import bits_download, http_request

pytestmark = pytest.mark.squid

# windows-update-path: Windows Update files without a digest in the name, freshness revalidate.
PATH = "/d/msdownload/update/software/ftpk/2026/11/mpam-fe.exe"
SIZE = 3 * 1024 * 1024


def test_changed_in_place_is_served_new(origin: Origin, stack_factory: StackFactory) -> None:
    old = origin.register(PATH, SIZE, seed="definitions-v1")
    stack = stack_factory(prefetch=False)
    squid = running_squid(stack)
    url = f"http://download.windowsupdate.com:{origin.port}{PATH}"

    first = http_request(stack.proxy_url, url)
    assert first.status == 200 and first.body == old.content.read(0, SIZE)
    again = http_request(stack.proxy_url, url)
    assert again.body == first.body
    unchanged = origin.requests(PATH)

    # Changed in place: same URL and Last-Modified, new content and ETag.
    new = origin.register(PATH, SIZE, seed="definitions-v2")
    assert new.etag != old.etag
    # A ranged client (BITS) gets the new bytes, range by range, and so does a whole GET.
    stats = bits_download(stack.proxy_url, url, size=SIZE, verify=new.content, timeout=60)
    assert stats.bytes_received == SIZE
    fresh = http_request(stack.proxy_url, url)
    assert fresh.status == 200 and fresh.body == new.content.read(0, SIZE)
    assert fresh.header("ETag") == new.etag
    codes = [e.result for e in squid.access_log_entries() if PATH in e.url]
    assert "TCP_REFRESH_UNMODIFIED" in codes and "TCP_REFRESH_MODIFIED" in codes, codes
    # While unchanged, the cached copy was served after a 304 (no body upstream).
    assert [(r.status, r.body_bytes) for r in unchanged] == [(200, SIZE), (304, 0)]
