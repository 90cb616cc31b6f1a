"""Store-ID and URL-rewrite answers (pure: compiled rules in, reply objects out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchcache.helpers.protocol import Err, HelperRequest, Ok, PreparedReply
from patchcache.helpers.store_id import StoreIdAnswerer
from patchcache.helpers.url_rewrite import UrlRewriteAnswerer, client_address
from patchcache.rules import CompiledRules, load_rules

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU = f"http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/x_{D40}.msu"
KEY = f"http://windows-update.patchcache.squid.internal/sha1/{D40}"
TRUST = "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab"


def req(url: str, *extras: str) -> HelperRequest:
    return HelperRequest("0", url, tuple(extras))


class Oracle:
    """A scripted stand-in for the state store's `expandable`."""

    def __init__(self, answers: dict[str, bool]) -> None:
        self.answers = answers
        self.calls = 0

    def expandable(self, key: str) -> bool:
        self.calls += 1
        return self.answers.get(key, False)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules()


def test_key_without_state(rules: CompiledRules) -> None:
    answer = StoreIdAnswerer(rules)
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY),)))
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY),)))  # from the memo
    assert answer(req("http://example.org/x")) == PreparedReply.of(Err())
    assert answer(req(TRUST)) == PreparedReply.of(Err())  # a class that never caches


def test_expand_only_when_state_says_so(rules: CompiledRules) -> None:
    oracle = Oracle({})
    clock = Clock()
    answer = StoreIdAnswerer(rules, oracle, clock=clock)
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY),)))
    # The object becomes known: the very next request must carry the note (no stale "no").
    oracle.answers[KEY] = True
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY), ("expand", "1"))))
    # A "yes" is remembered briefly...
    calls = oracle.calls
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY), ("expand", "1"))))
    assert oracle.calls == calls
    # ...and asked again once it is older than the TTL.
    oracle.answers[KEY] = False
    clock.now += 5
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY),)))


def test_class_without_expansion_never_asks_state(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[classes.windows-update]\nexpand_ranges = false\n")
    oracle = Oracle({KEY: True})
    answer = StoreIdAnswerer(load_rules(path), oracle)
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY),)))
    assert oracle.calls == 0


def test_state_failure_at_run_time_gives_the_plain_key(rules: CompiledRules) -> None:
    """As when the state cannot be opened at start: the key without expansion (an exception
    became BH: Squid retried twice and every update request lost its shared key), and one
    warning per interval, however many requests fail."""

    class Flaky:
        def __init__(self) -> None:
            self.broken = True

        def expandable(self, key: str) -> bool:
            if self.broken:
                raise OSError("database is locked")
            return True

    state = Flaky()
    clock = Clock()
    warnings: list[str] = []
    answer = StoreIdAnswerer(rules, state, clock=clock, warn=warnings.append, warn_interval=60)
    plain = PreparedReply.of(Ok((("store-id", KEY),)))
    for _ in range(50):
        assert answer(req(WU)) == plain
        assert answer.for_url(WU) == plain.text
        clock.now += 0.5
    assert len(warnings) == 1
    assert "database is locked" in warnings[0] and "without expansion" in warnings[0]
    clock.now += 60
    assert answer(req(WU)) == plain
    assert len(warnings) == 2 and "100 time(s)" in warnings[1]
    # Once the state reads again, expansion comes back on the very next request.
    state.broken = False
    assert answer(req(WU)) == PreparedReply.of(Ok((("store-id", KEY), ("expand", "1"))))


def test_memo_is_bounded_in_bytes(rules: CompiledRules) -> None:
    """8 KB URLs (Squid passes them) took 241 MB per helper with a count-only bound."""
    from patchcache.helpers.store_id import BoundedMemo, memo_cost

    memo = BoundedMemo(8192, lambda text: text.upper(), max_bytes=1024 * 1024)
    for number in range(5000):
        text = f"http://h/{number}/" + "x" * 3000
        assert memo.get(text) == text.upper()
        assert memo.bytes <= 1024 * 1024
    assert 0 < len(memo) <= 1024 * 1024 // memo_cost("x" * 3010)
    # Huge URLs are answered but never kept.
    huge = "http://h/" + "y" * 60000
    assert memo.get(huge) == huge.upper()
    assert huge not in memo._memo
    # The answerer's memo uses the rules' budget: thousands of 8 KB matching URLs stay in it.
    answer = StoreIdAnswerer(rules)
    for number in range(3000):
        long_url = WU.replace("/x_", f"/{number:05d}{'z' * 8000}_")
        assert answer.for_url(long_url).startswith("OK store-id=")
    assert answer._memo.bytes <= rules.settings.answer_cache_bytes
    assert len(answer._memo) == 0  # over MAX_MEMO_URL: not memoised at all
    for number in range(6000):
        medium = WU.replace("/x_", f"/{number:05d}{'z' * 3000}_")
        assert answer.for_url(medium).startswith("OK store-id=")
    assert 0 < answer._memo.bytes <= rules.settings.answer_cache_bytes
    assert len(answer._memo) < 6000


PRESENCE = """
packs = ["windows-update", "delivery-optimization"]
[classes.delivery-optimization]
preferred_mirror = "http://dl.delivery.mp.microsoft.com"
[[presence]]
subnets = ["10.20.0.0/16", "fd00:20::/32"]
cache_url = "http://cache20.corp.example:3128"
classes = ["windows-update"]
"""
DO = (
    "http://7.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/files/"
    "0a6f1c2e-1111-2222-3333-444455556666?P1=1&P2=2"
)


@pytest.fixture(scope="module")
def presence(tmp_path_factory: pytest.TempPathFactory) -> UrlRewriteAnswerer:
    path = tmp_path_factory.mktemp("p") / "rules.toml"
    path.write_text(PRESENCE)
    return UrlRewriteAnswerer(load_rules(path))


def test_branch_client_is_sent_to_its_cache(presence: UrlRewriteAnswerer) -> None:
    got = presence(req(WU, "10.20.3.4/-", "-", "GET"))
    assert got == Ok(
        (("status", "302"), ("url", "http://cache20.corp.example:3128" + WU.split(".com", 1)[1]))
    )
    assert presence(req(WU, "fd00:20::5/-")) != Err()
    assert presence(req(WU, "client=10.20.0.9")) != Err()


def test_other_clients_and_other_classes_are_left_alone(presence: UrlRewriteAnswerer) -> None:
    assert presence(req(WU, "192.168.1.2/-", "-", "GET")) == Err()
    assert presence(req(WU)) == Err()
    assert presence(req("http://example.org/a.msu", "10.20.3.4/-")) == Err()  # no open redirect


def test_no_loop_when_already_on_the_cache(presence: UrlRewriteAnswerer) -> None:
    url = f"http://cache20.corp.example:3128/d/msdownload/update/x_{D40}.msu"
    assert presence(req(url, "10.20.3.4/-")) == Err()


def test_preferred_mirror_rewrites_keeping_the_query(presence: UrlRewriteAnswerer) -> None:
    got = presence(req(DO, "192.168.1.2/-"))
    assert got == Ok(
        (("rewrite-url", "http://dl.delivery.mp.microsoft.com" + DO.split(".com", 1)[1]),)
    )
    on_mirror = DO.replace("7.tlu.dl.delivery", "dl.delivery")
    assert presence(req(on_mirror, "192.168.1.2/-")) == Err()


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        (("10.1.2.3/host.example", "-"), "10.1.2.3"),
        (("-", "client=fd00::1"), "fd00::1"),
        (("nonsense",), None),
        ((), None),
    ],
)
def test_client_address(extras: tuple[str, ...], expected: str | None) -> None:
    found = client_address(extras)
    assert (str(found) if found else None) == expected
