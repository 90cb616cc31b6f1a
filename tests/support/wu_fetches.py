"""Windows Update objects on the test origin and checked GETs for them through a proxy.

The store-ID tests fetch one object under several names: :func:`wu_object` registers a
digest-named file under ``/d/`` and the same bytes under ``/c/`` (as the CDN serves it);
:func:`origin_url` names a path on any host the proxy maps to the origin; :func:`get_range` and
:func:`get_whole` assert the answer's status and every byte.
"""

from __future__ import annotations

from patchcache.testbed import Origin, OriginObject, http_request
from support.suite_stack import fetch_whole

WU_DIR = "/d/msdownload/update/software/secu/2026/11"
# The closed-loop stacks' rules: Windows Update objects up to 64 MiB are stored whole (everything
# else up to 8 MiB), and a first sight is prefetched after a second.
WU_PREFETCH_RULES = """\
[settings]
default_max_object_size = "8 MiB"
prefetch_delay = 1
[classes.windows-update]
max_object_size = "64 MiB"
"""


def origin_url(origin: Origin, host: str, path_query: str) -> str:
    """``path_query`` on the origin as ``host`` (which the proxy resolves to loopback)."""
    return f"http://{host}:{origin.port}{path_query}"


def wu_object(origin: Origin, size: int, seed: str) -> tuple[OriginObject, str]:
    """A digest-named WU file under /d/, and the path of the same bytes under /c/."""
    obj = origin.register_digest_named(WU_DIR, size, seed=seed, suffix=".msu")
    c_path = obj.path.replace("/d/", "/c/", 1)
    origin.register(c_path, content=obj.content, etag=obj.etag or False)
    return obj, c_path


def get_range(proxy: str, target: str, obj: OriginObject, first: int, last: int) -> None:
    """One ranged GET through the proxy: a 206 with exactly this Content-Range and bytes."""
    reply = http_request(proxy, target, headers={"Range": f"bytes={first}-{last}"})
    assert reply.status == 206, (reply.status, target)
    content_range = reply.header("Content-Range")
    assert content_range == f"bytes {first}-{last}/{obj.size}", content_range
    assert reply.body == obj.content.read(first, last - first + 1), f"wrong bytes from {target}"


def get_whole(proxy: str, target: str, obj: OriginObject) -> None:
    """One plain GET through the proxy: a 200 with every byte of ``obj``."""
    reply = fetch_whole(proxy, target, verify=obj.content)
    assert (reply.status, reply.length) == (200, obj.size), (reply.status, reply.length, target)


def assert_variants_not_merged(proxy: str, origin: Origin, obj: OriginObject, c_path: str) -> None:
    """Three rounds of the whole object under /d/ and its first KiB under /c/ on another host,
    through a proxy whose store-ID helper maps nothing: two URLs, two entries. The whole object
    is stored under its own URL (one origin GET); the ranges pass through (three)."""
    for _ in range(3):
        get_whole(proxy, origin_url(origin, "download.windowsupdate.com", obj.path), obj)
        get_range(proxy, origin_url(origin, "au.download.windowsupdate.com", c_path), obj, 0, 1023)
    assert len(origin.requests(obj.path)) == 1
    assert len(origin.requests(c_path)) == 3
