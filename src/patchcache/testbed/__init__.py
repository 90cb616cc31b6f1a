"""A throwaway Squid, a byte-counting origin and BITS-like clients, all on loopback.

Shared by the tests (via tests/support/fixtures.py), the demo command and the benchmarks.
`stack` runs the whole suite (Squid, helpers, ICAP service, prefetcher) as an admin would,
`scenarios` the ranged downloads `patchcache demo` and bench/amplification.py measure, and
`topology` several proxies (a tree, a CARP farm)::

    with Origin() as origin, run_squid("range_offset_limit none", workdir=tmp) as squid:
        obj = origin.register("/d/msdownload/update/software/secu/2024/01/kb.cab", 8 * MiB)
        url = origin.url(obj, host="download.windowsupdate.com")
        bits_download(squid.proxy_url, url, size=obj.size, verify=obj.content)
        assert origin.copies_sent(obj.path) == 1.0
"""

from patchcache.testbed.clients import (
    BITS_USER_AGENT,
    DO_USER_AGENT,
    DownloadError,
    DownloadStats,
    HttpReply,
    MiB,
    bits_download,
    http_request,
    probe_size,
    run_clients,
    verify_bytes,
)
from patchcache.testbed.content import (
    BytesContent,
    ContentSource,
    CorruptedContent,
    PatternContent,
    content_sha1,
    digest_name,
    first_difference,
)
from patchcache.testbed.origin import (
    ByteRange,
    Origin,
    OriginObject,
    RequestRecord,
    plan_response,
    resolve_range,
)
from patchcache.testbed.ports import free_port
from patchcache.testbed.squid import (
    UPDATE_HOSTS,
    AccessLogEntry,
    SquidError,
    SquidInstance,
    SquidStartError,
    run_squid,
    squid_parse,
)

__all__ = [
    "BITS_USER_AGENT",
    "DO_USER_AGENT",
    "UPDATE_HOSTS",
    "AccessLogEntry",
    "ByteRange",
    "BytesContent",
    "ContentSource",
    "CorruptedContent",
    "DownloadError",
    "DownloadStats",
    "HttpReply",
    "MiB",
    "Origin",
    "OriginObject",
    "PatternContent",
    "RequestRecord",
    "SquidError",
    "SquidInstance",
    "SquidStartError",
    "bits_download",
    "content_sha1",
    "digest_name",
    "first_difference",
    "free_port",
    "http_request",
    "plan_response",
    "probe_size",
    "resolve_range",
    "run_clients",
    "run_squid",
    "squid_parse",
    "verify_bytes",
]
