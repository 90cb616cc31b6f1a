"""The ICAP service (`patchcache icap`) as Squid 5.7's RESPMOD service, in the whole suite.

Squid has one global `maximum_object_size`; the generated config raises it to the largest class
limit, and the ICAP service marks responses that their class must not store
(`X-PatchCache-Store: no; ...`, matched by `store_miss deny pc_nostore`). Ordinary traffic
(no class) keeps the `default_max_object_size` through a `rep_header Content-Length` rule. The
service also records the first sight of a ranged download (one queued prefetch job per object,
however many clients miss at once) and objects too big for their class (never expanded).

Whether something was stored is read from the origin (did the second fetch reach it?) and
from access.log result codes of requests made one at a time.
"""

from __future__ import annotations

import threading

import pytest
from support.client_threads import run_in_threads
from support.suite_stack import (
    StackFactory,
    WholeReply,
    codes_since,
    fetch_whole,
    running_squid,
)
from support.wu_fetches import WU_DIR, get_range, origin_url

from patchcache.testbed import MiB, Origin, OriginObject, bits_download
from patchcache.testbed.squid_logs import read_lines, wait_until
from patchcache.testbed.stack import Stack

pytestmark = pytest.mark.squid

RULES = """\
[settings]
default_max_object_size = "8 MiB"

[classes.windows-update]
max_object_size = "256 MiB"
"""
SMALL_CLASS_RULES = """\
[settings]
default_max_object_size = "8 MiB"

[classes.windows-update]
max_object_size = "16 MiB"
"""
WU_HOSTS = (
    "download.windowsupdate.com",
    "au.download.windowsupdate.com",
    "wsus.ds.download.windowsupdate.com",
)
MIRROR = "mirror.example.com"
HIT_CODES = ("TCP_HIT/200", "TCP_MEM_HIT/200")


def wu_object(origin: Origin, size: int, seed: str, *, chunked: bool = False) -> OriginObject:
    return origin.register_digest_named(WU_DIR, size, seed=seed, suffix=".cab", chunked=chunked)


def fetch_twice(stack: Stack, target: str, obj: OriginObject) -> tuple[list[str], list[WholeReply]]:
    """Two whole GETs one after the other (the second only once the first is logged, so its
    entry is complete); every byte checked. Returns the result codes and both replies."""
    squid = running_squid(stack)
    mark = len(squid.access_log_entries())
    replies = []
    for number in range(2):
        reply = fetch_whole(stack.proxy_url, target, verify=obj.content, timeout=120)
        assert (reply.status, reply.length) == (200, obj.size), (reply, target)
        replies.append(reply)
        squid.wait_for_access_lines(mark + number + 1, timeout=30)
    return codes_since(squid, mark, 2), replies


# -- (7)-(9) per-class limits against the global one ------------------------------------------


def test_big_update_within_its_class_limit_is_stored(
    origin: Origin, stack_factory: StackFactory
) -> None:
    """64 MiB: over the 8 MiB default, within the class's 256 MiB."""
    obj = wu_object(origin, 64 * MiB, "big-wu")
    stack = stack_factory(RULES)
    codes, replies = fetch_twice(stack, origin_url(origin, WU_HOSTS[0], obj.path), obj)
    assert codes[0] == "TCP_MISS/200" and codes[1] in HIT_CODES, codes
    assert replies[0].header("X-PatchCache-Store") is None
    assert len(origin.requests(obj.path)) == 1
    assert origin.bytes_sent(obj.path) == obj.size


def test_big_file_outside_every_class_is_not_stored(
    origin: Origin, stack_factory: StackFactory
) -> None:
    """64 MiB from a host no class trusts: the default limit (8 MiB) applies."""
    obj = origin.register("/pub/images/big-64m.iso", 64 * MiB, seed="big-mirror")
    stack = stack_factory(RULES)
    codes, _ = fetch_twice(stack, origin_url(origin, MIRROR, obj.path), obj)
    assert codes == ["TCP_MISS/200", "TCP_MISS/200"], codes
    assert len(origin.requests(obj.path)) == 2
    assert origin.bytes_sent(obj.path) == 2 * obj.size


def test_small_file_outside_every_class_is_stored(
    origin: Origin, stack_factory: StackFactory
) -> None:
    obj = origin.register("/pub/small-1m.bin", MiB, seed="small-mirror")
    stack = stack_factory(RULES)
    codes, _ = fetch_twice(stack, origin_url(origin, MIRROR, obj.path), obj)
    assert codes[0] == "TCP_MISS/200" and codes[1] in HIT_CODES, codes
    assert len(origin.requests(obj.path)) == 1


# -- (10) unknown size ------------------------------------------------------------------------


def test_chunked_reply_of_a_limited_class_is_not_stored(
    origin: Origin, stack_factory: StackFactory
) -> None:
    """No Content-Length: Squid's `rep_header` rules cannot see the size, and the class limit
    (256 MiB) is below Squid's global one (the DO pack's 16 GiB), so only the ICAP service
    stands between this response and the store. The client still gets every byte."""
    obj = wu_object(origin, 3 * MiB, "chunked-wu", chunked=True)
    stack = stack_factory(RULES)
    codes, replies = fetch_twice(stack, origin_url(origin, WU_HOSTS[1], obj.path), obj)
    assert codes == ["TCP_MISS/200", "TCP_MISS/200"], codes
    assert len(origin.requests(obj.path)) == 2
    for reply in replies:
        assert reply.header("Content-Length") is None
        mark = reply.header("X-PatchCache-Store") or ""
        assert mark.startswith("no;") and "size unknown" in mark, reply.headers


# -- (11) one job per object ------------------------------------------------------------------


def test_concurrent_ranged_misses_queue_exactly_one_job(
    origin: Origin, stack_factory: StackFactory
) -> None:
    obj = wu_object(origin, 16 * MiB, "first-sight")
    c_path = obj.path.replace("/d/", "/c/", 1)
    origin.register(c_path, content=obj.content, etag=obj.etag or False)
    stack = stack_factory(RULES, prefetch=False)
    targets = [
        origin_url(origin, WU_HOSTS[0], obj.path),
        origin_url(origin, WU_HOSTS[1], c_path),
        origin_url(origin, WU_HOSTS[2], obj.path),
    ]
    start = threading.Barrier(len(targets))

    def client(number: int) -> None:
        start.wait(timeout=30)
        first = number * 3 * MiB
        get_range(stack.proxy_url, targets[number], obj, first, first + MiB - 1)

    run_in_threads(client, len(targets))
    status = stack.status()
    assert len(status["queue"]) == 1, status["queue"]
    assert status["queue"][0]["key"].endswith(obj.path.rsplit("_", 1)[1].split(".")[0])
    assert status["counts"]["queued"] == 1, status["counts"]
    assert sum(status["counts"].values()) == 1, status["counts"]


# -- (12) the service is down -----------------------------------------------------------------


ICAP_LOG = "icap_log stdio:{logs}/icap.log icap_squid\n"


def icap_log_codes(stack: Stack, method: str, at_least: int, timeout: float = 10.0) -> list[str]:
    """`ICAP_<how>/<status>` of the icap.log lines for `method`, waiting (bounded) for
    `at_least` of them (Squid writes a line when the ICAP transaction ends)."""
    path = running_squid(stack).workdir / "logs" / "icap.log"

    def codes() -> list[str]:
        lines = read_lines(path)
        return [f[3] for f in (line.split() for line in lines) if f[5:6] == [method]]

    return wait_until(
        codes,
        lambda found: len(found) >= at_least,
        timeout=timeout,
        awaiting=f"{at_least} {method} lines in {path}",
    )


def test_dead_service_with_bypass_leaves_clients_served(
    origin: Origin, stack_factory: StackFactory
) -> None:
    before = wu_object(origin, 2 * MiB, "bypass-before")
    stack = stack_factory(RULES, extra_config=ICAP_LOG)
    squid = running_squid(stack)
    # A first miss opens Squid's persistent ICAP connection, which the kill then breaks.
    reply = fetch_whole(stack.proxy_url, origin_url(origin, WU_HOSTS[0], before.path), verify=None)
    assert reply.status == 200
    assert icap_log_codes(stack, "RESPMOD", 1) == ["ICAP_ECHO/204"]
    stack.kill("icap")
    objects = [wu_object(origin, 2 * MiB, f"bypass-{n}") for n in range(3)]
    for number, obj in enumerate(objects):
        stats = bits_download(
            stack.proxy_url,
            origin_url(origin, WU_HOSTS[number % 3], obj.path),
            size=obj.size,
            chunk=MiB // 2,
            verify=obj.content,
            timeout=60,
        )
        assert stats.bytes_received == obj.size
        whole = fetch_whole(
            stack.proxy_url,
            origin_url(origin, WU_HOSTS[(number + 1) % 3], obj.path),
            verify=obj.content,
        )
        assert (whole.status, whole.length) == (200, obj.size)
    plain = origin.register("/pub/plain.bin", MiB, seed="bypass-plain")
    whole = fetch_whole(
        stack.proxy_url, origin_url(origin, MIRROR, plain.path), verify=plain.content
    )
    assert (whole.status, whole.length) == (200, plain.size)
    # Squid did try the service for the misses after the kill, and went on without it.
    after = icap_log_codes(stack, "RESPMOD", 2)[1:]
    assert after and all(code == "ICAP_ECHO/000" for code in after), after
    assert squid.running
    assert "FATAL" not in squid.cache_log_text()


# -- (13) too big for its class ---------------------------------------------------------------


def test_object_over_its_class_limit_is_never_expanded(
    origin: Origin, stack_factory: StackFactory
) -> None:
    """32 MiB against a 16 MiB class limit: every range passes through (the origin sees each
    Range), exactly the bytes asked cross the uplink, the state says too_big, no job."""
    obj = wu_object(origin, 32 * MiB, "too-big")
    stack = stack_factory(SMALL_CLASS_RULES, prefetch=False)
    asked = 0
    for number, host in enumerate(WU_HOSTS):
        stats = bits_download(
            stack.proxy_url,
            origin_url(origin, host, obj.path),
            size=obj.size,
            verify=obj.content,
            start=number * 5 * MiB,
            stop_after=6 * MiB,
            timeout=60,
        )
        asked += stats.bytes_received
    # The store-ID helper's one HEAD (size look-up: over the limit, so never expanded) aside.
    every = origin.requests(obj.path)
    assert sum(r.method == "HEAD" for r in every) <= 1
    records = [r for r in every if r.method == "GET"]
    assert len(records) == 18
    assert all(r.range is not None and r.range != "bytes=0-" for r in records), [
        r.range for r in records
    ]
    assert origin.bytes_sent(obj.path) == asked == 18 * MiB
    status = stack.status()
    assert status["counts"]["too_big"] == 1 and not status["queue"], status
    assert status["too_big"][0]["total_size"] == obj.size


# -- a class's limit stays with its class -----------------------------------------------------


def test_smaller_class_limit_does_not_refuse_a_larger_class_on_the_same_host(
    origin: Origin, stack_factory: StackFactory
) -> None:
    """windows-update (digest names, limited to 16 MiB here) and windows-update-path (other WU
    files, 8 GiB) trust the same hosts. Squid's `rep_header` rules see only the host: the
    smaller limit must not apply to the other class's files there; the ICAP service, which
    knows the class by path, refuses exactly the over-limit digest-named file."""
    other = origin.register("/d/msdownload/update/others/2026/11/setup-helper.cab", 32 * MiB)
    digest_named = wu_object(origin, 32 * MiB, "over-16m")
    stack = stack_factory(SMALL_CLASS_RULES, prefetch=False)
    codes, replies = fetch_twice(stack, origin_url(origin, WU_HOSTS[0], other.path), other)
    # windows-update-path is revalidated (freshness "revalidate"): the second answer comes
    # from the cache after a 304, its body crossed the uplink once.
    assert codes == ["TCP_MISS/200", "TCP_REFRESH_UNMODIFIED/200"], codes
    assert [r.status for r in origin.requests(other.path)] == [200, 304]
    codes, replies = fetch_twice(
        stack, origin_url(origin, WU_HOSTS[0], digest_named.path), digest_named
    )
    assert codes == ["TCP_MISS/200", "TCP_MISS/200"], codes
    mark = replies[0].header("X-PatchCache-Store") or ""
    assert mark.startswith("no; class=windows-update;") and "over" in mark, mark
    assert len(origin.requests(digest_named.path)) == 2
