"""RESPMOD decisions: per-class limits and first sight, from ICAP bytes as Squid sends them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from patchcache.icap_service.decision import AddResponseHeaders, NoModification
from patchcache.icap_service.patchcache_service import (
    MARK_HEADER,
    PatchcacheService,
    object_size,
    squid_global_limit,
)
from patchcache.icap_service.protocol import Headers, IcapConnection, RequestHead
from patchcache.rules import CompiledRules, load_rules

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU_URL = f"http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb_{D40}.msu"
OTHER_URL = "http://files.example.org/big.iso"
MiB = 1024 * 1024


@dataclass
class FakeState:
    """Records the calls; a pure stand-in for StateStore in unit tests (real one in integration)."""

    first: list[tuple[object, ...]] = field(default_factory=list)
    too_big: list[tuple[object, ...]] = field(default_factory=list)
    due: list[float | None] = field(default_factory=list)
    unstorable: list[tuple[str, str]] = field(default_factory=list)

    def record_first_sight(self, *args: object, due_at: float | None = None) -> bool:
        self.first.append(args)
        self.due.append(due_at)
        return len(self.first) == 1

    def record_too_big(self, *args: object) -> bool:
        self.too_big.append(args)
        return True

    def record_unstorable(self, key: str, reason: str) -> bool:
        self.unstorable.append((key, reason))
        return True


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> CompiledRules:
    path: Path = tmp_path_factory.mktemp("rules") / "rules.toml"
    path.write_text(
        """
packs = ["windows-update"]
[settings]
default_max_object_size = "8 MiB"
[classes.windows-update]
max_object_size = "256 MiB"
[classes.windows-update-express]
max_object_size = "256 MiB"
[classes.windows-update-path]
max_object_size = "256 MiB"
[classes.windows-update-path-express]
max_object_size = "256 MiB"
[classes.smallish]
hosts = ["small.example"]
max_object_size = "1 MiB"
[classes.nocache]
hosts = ["nocache.example"]
cache = false
"""
    )
    return load_rules(path)


def respmod_head(
    url: str, status_line: str, headers: list[str], icap_headers: str = ""
) -> RequestHead:
    host = url.split("/")[2]
    req = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    res = (status_line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    icap = (
        (
            "RESPMOD icap://127.0.0.1:1344/respmod ICAP/1.0\r\n"
            "Host: 127.0.0.1:1344\r\nAllow: 204, 206\r\nPreview: 0\r\n"
            f"{icap_headers}"
            f"Encapsulated: req-hdr=0, res-hdr={len(req)}, res-body={len(req) + len(res)}\r\n\r\n"
        ).encode()
        + req
        + res
        + b"0; ieof\r\n\r\n"
    )
    conn = IcapConnection()
    conn.receive_data(icap)
    event = conn.next_event()
    assert isinstance(event, RequestHead), event
    return event


def decide(rules: CompiledRules, state: FakeState | None, *args: object) -> object:
    url, status, headers = args
    assert isinstance(url, str) and isinstance(status, str) and isinstance(headers, list)
    service = PatchcacheService(rules, state, clock=lambda: 1000.0)
    return service.respmod(respmod_head(url, status, headers))


def test_first_ranged_miss_queues_once(rules: CompiledRules) -> None:
    state = FakeState()
    reply = decide(
        rules,
        state,
        WU_URL,
        "HTTP/1.1 206 Partial Content",
        [f"Content-Range: bytes 0-1048575/{64 * MiB}", "Content-Length: 1048576", 'ETag: "abc"'],
    )
    assert reply == NoModification()
    assert len(state.first) == 1
    key, url, cls, total, etag, _lm = state.first[0]
    assert key == f"http://windows-update.patchcache.squid.internal/sha1/{D40}"
    assert (url, cls, total, etag) == (WU_URL, "windows-update", 64 * MiB, '"abc"')
    # The job is due after the prefetch delay: clients' own expanded ranges fill first.
    assert state.due == [1000.0 + rules.settings.prefetch_delay]


def test_over_class_limit_is_marked_and_remembered(rules: CompiledRules) -> None:
    state = FakeState()
    reply = decide(
        rules,
        state,
        WU_URL,
        "HTTP/1.1 206 Partial Content",
        [f"Content-Range: bytes 0-99/{512 * MiB}"],
    )
    assert isinstance(reply, AddResponseHeaders)
    assert reply.headers[0][0] == MARK_HEADER and reply.headers[0][1].startswith("no")
    assert not state.first and len(state.too_big) == 1


def test_whole_object_within_limit_is_stored(rules: CompiledRules) -> None:
    state = FakeState()
    reply = decide(rules, state, WU_URL, "HTTP/1.1 200 OK", [f"Content-Length: {64 * MiB}"])
    assert reply == NoModification()
    assert not state.first  # a 200 is the fill itself, not a first sight


def test_small_class_limit(rules: CompiledRules) -> None:
    over = decide(
        rules, None, "http://small.example/a.bin", "HTTP/1.1 200 OK", [f"Content-Length: {2 * MiB}"]
    )
    under = decide(
        rules, None, "http://small.example/a.bin", "HTTP/1.1 200 OK", ["Content-Length: 1000"]
    )
    assert isinstance(over, AddResponseHeaders)
    assert under == NoModification()


def test_chunked_without_length(rules: CompiledRules) -> None:
    # Below Squid's global limit the class limit cannot be checked: refuse to store.
    small = decide(
        rules, None, "http://small.example/a.bin", "HTTP/1.1 200 OK", ["Transfer-Encoding: chunked"]
    )
    assert isinstance(small, AddResponseHeaders)
    # The largest class is bounded by Squid's own maximum_object_size: store.
    assert squid_global_limit(rules) == 256 * MiB
    big = decide(rules, None, WU_URL, "HTTP/1.1 200 OK", ["Transfer-Encoding: chunked"])
    assert big == NoModification()


def test_chunked_without_length_expanded_by_the_helper_is_stored(rules: CompiledRules) -> None:
    """The helper expands only an object whose recorded size is within its class limit; Squid
    passes its note on as X-PC-Expand. Refusing it cost one whole copy per expanded range."""
    service = PatchcacheService(rules, None, clock=lambda: 1000.0)
    chunked = ["Transfer-Encoding: chunked"]
    url = "http://small.example/a.bin"
    expanded = respmod_head(url, "HTTP/1.1 200 OK", chunked, "X-PC-Expand: 1\r\n")
    assert service.respmod(expanded) == NoModification()
    # Squid sends "-" when the note is absent: still refused, as without the header.
    for meta in ("X-PC-Expand: -\r\n", "X-PC-Expand: 0\r\n", ""):
        plain = respmod_head(url, "HTTP/1.1 200 OK", chunked, meta)
        assert isinstance(service.respmod(plain), AddResponseHeaders), meta


def test_class_without_caching_and_ordinary_traffic(rules: CompiledRules) -> None:
    assert isinstance(
        decide(rules, None, "http://nocache.example/x", "HTTP/1.1 200 OK", ["Content-Length: 5"]),
        AddResponseHeaders,
    )
    assert (
        decide(rules, None, OTHER_URL, "HTTP/1.1 200 OK", [f"Content-Length: {900 * MiB}"])
        == NoModification()
    )


def test_errors_and_redirects_pass(rules: CompiledRules) -> None:
    state = FakeState()
    assert decide(rules, state, WU_URL, "HTTP/1.1 302 Found", ["Location: http://x/"]) == (
        NoModification()
    )
    assert not state.first and not state.too_big


def test_state_failure_does_not_break_the_answer(rules: CompiledRules) -> None:
    class Broken(FakeState):
        def record_first_sight(self, *args: object, due_at: float | None = None) -> bool:
            raise OSError("disk full")

    reply = decide(
        rules, Broken(), WU_URL, "HTTP/1.1 206 Partial Content", [f"Content-Range: bytes 0-9/{MiB}"]
    )
    assert reply == NoModification()


@pytest.mark.parametrize(
    ("status", "headers", "total", "partial"),
    [
        (200, [("Content-Length", "123")], 123, False),
        (206, [("Content-Range", "bytes 0-9/500")], 500, True),
        (206, [("Content-Range", "bytes 0-9/*")], None, True),
        (206, [("Content-Range", "garbage")], None, True),
        (200, [("Transfer-Encoding", "chunked"), ("Content-Length", "5")], None, False),
        (200, [], None, False),
        (200, [("Content-Length", "-1")], None, False),
        (200, [("Content-Length", " 42 ")], 42, False),
        # A latin-1 digit that str.isdigit() accepts and int() refuses: unknown, not a crash.
        (200, [("Content-Length", "\u00b2")], None, False),
    ],
)
def test_object_size(
    status: int, headers: list[tuple[str, str]], total: int | None, partial: bool
) -> None:
    info = object_size(status, Headers(tuple(headers)))
    assert (info.total, info.partial) == (total, partial)


def test_istag_follows_rules(rules: CompiledRules) -> None:
    assert PatchcacheService(rules).istag == f"pc-{rules.fingerprint}"
    assert PatchcacheService(load_rules()).istag != PatchcacheService(rules).istag


RANGE_HEAD = [f"Content-Range: bytes 0-1048575/{64 * MiB}", "Content-Length: 1048576"]
# windows-update-path is not pinned (freshness "revalidate"): its names are reused.
REVALIDATED_URL = "http://download.windowsupdate.com/d/msdownload/update/software/ftpk/setup.exe"


@pytest.mark.parametrize(
    "extra",
    [
        ["Cache-Control: no-store"],
        ["Cache-Control: max-age=60, private"],
        ['Cache-Control: private="Set-Cookie, X-A"'],
        ["Cache-Control: public", "Cache-Control: No-Store"],
        ["Vary: Accept-Encoding, *"],
    ],
)
def test_uncacheable_first_sight_of_revalidated_class_is_not_recorded(
    rules: CompiledRules, extra: list[str]
) -> None:
    state = FakeState()
    reply = decide(
        rules, state, REVALIDATED_URL, "HTTP/1.1 206 Partial Content", RANGE_HEAD + extra
    )
    assert reply == NoModification()
    assert not state.first and not state.too_big
    # An object recorded while its answers were storable is parked: expanded, each range
    # would fetch it whole again.
    assert [reason for _key, reason in state.unstorable] != []


def test_uncacheable_whole_answer_of_a_recorded_object_parks_it(rules: CompiledRules) -> None:
    """The expanded fetch itself (a plain 200) answered no-store: the record is parked."""
    state = FakeState()
    decide(rules, state, REVALIDATED_URL, "HTTP/1.1 206 Partial Content", RANGE_HEAD)
    assert len(state.first) == 1 and not state.unstorable
    reply = decide(
        rules,
        state,
        REVALIDATED_URL,
        "HTTP/1.1 200 OK",
        [f"Content-Length: {64 * MiB}", "Cache-Control: no-store"],
    )
    assert reply == NoModification()
    ((key, reason),) = state.unstorable
    assert key == state.first[0][0] and reason == "Cache-Control: no-store"


def test_cacheable_first_sight_of_revalidated_class_is_recorded(rules: CompiledRules) -> None:
    state = FakeState()
    headers = [*RANGE_HEAD, 'Cache-Control: max-age=60, no-cache="x"', "Vary: Accept-Encoding"]
    decide(rules, state, REVALIDATED_URL, "HTTP/1.1 206 Partial Content", headers)
    assert len(state.first) == 1


def test_pinned_class_ignores_no_store_and_private_but_not_vary_star(
    rules: CompiledRules,
) -> None:
    # Pinned classes' refresh_pattern has ignore-no-store ignore-private: Squid stores them.
    state = FakeState()
    for extra in (["Cache-Control: no-store"], ["Cache-Control: private"]):
        decide(rules, state, WU_URL, "HTTP/1.1 206 Partial Content", RANGE_HEAD + extra)
    assert len(state.first) == 2
    assert not state.unstorable
    decide(rules, state, WU_URL, "HTTP/1.1 206 Partial Content", [*RANGE_HEAD, "Vary: *"])
    assert len(state.first) == 2
    assert [reason for _key, reason in state.unstorable] == ["Vary: *"]
