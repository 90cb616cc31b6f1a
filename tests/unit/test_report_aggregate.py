"""The report's counters on generated logs whose totals are known by construction."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path
from typing import Any

import pytest

from patchcache.report.aggregate import Aggregator
from patchcache.report.run import make_report
from patchcache.report.sources import LineReader
from patchcache.report.synthetic import START, Expected, generate, write_file
from patchcache.rules import CompiledRules, load_rules

RULES = load_rules(None)


def _check(report: dict[str, Any], expected: Expected, *, exact_upstream: bool) -> None:
    for name, totals in expected.groups.items():
        group = report["other"] if name == "other" else report["classes"][name]
        got = {k: group[k] for k in ("requests", "hit_requests", "bytes_to_clients", "hit_bytes")}
        want = {
            "requests": totals.requests,
            "hit_requests": totals.hit_requests,
            "bytes_to_clients": totals.bytes_to_clients,
            "hit_bytes": totals.hit_bytes,
        }
        assert got == want, name
        assert group["upstream_bytes"] == totals.upstream_bytes, name
        assert group["upstream_bytes_exact"] is exact_upstream, name
        assert group["distinct_objects"] == len(totals.keys), name
        assert group["distinct_objects_exact"] is True
    assert report["total"]["requests"] == sum(t.requests for t in expected.groups.values())
    assert report["lines"]["bad"] == expected.bad
    assert report["lines"]["read"] == expected.lines


@pytest.mark.slow
def test_one_million_lines_exact(tmp_path: Path) -> None:
    """The issue's acceptance: a generated 1M-line log (plus junk lines), exact per class."""
    path = tmp_path / "access.log"
    expected = write_file(path, 1_000_000, junk_every=9973)
    report = make_report([path], RULES)
    _check(report, expected, exact_upstream=False)
    assert report["lines"]["formats"] == {"squid": 1_000_000}
    # Series add up to the totals.
    for series in ("hourly", "daily"):
        points = report["total"][series]
        assert sum(p["requests"] for p in points) == 1_000_000
        assert sum(p["bytes_to_clients"] for p in points) == report["total"]["bytes_to_clients"]
    assert len(report["total"]["daily"]) == 4  # three days from 00:53, so four dates


def test_patchcache_format_rotated_and_compressed_logs_exact(tmp_path: Path) -> None:
    """Three files of one Squid (plain, rotated .1, .2.gz) read together: exact upstream."""
    expected_parts = []
    paths = []
    for index, name in enumerate(("patchcache.log", "patchcache.log.1", "patchcache.log.2.gz")):
        text = io.StringIO()
        expected_parts.append(generate(text, 20_000, seed=index, fmt="patchcache", junk_every=1000))
        path = tmp_path / name
        if name.endswith(".gz"):
            with gzip.open(path, "wt", encoding="latin-1") as out:
                out.write(text.getvalue())
        else:
            path.write_text(text.getvalue(), encoding="latin-1")
        paths.append(path)
    merged = Expected({name: type(t)() for name, t in expected_parts[0].groups.items()})
    for part in expected_parts:
        merged.bad += part.bad
        merged.lines += part.lines
        for name, totals in part.groups.items():
            into = merged.groups[name]
            into.requests += totals.requests
            into.hit_requests += totals.hit_requests
            into.bytes_to_clients += totals.bytes_to_clients
            into.hit_bytes += totals.hit_bytes
            into.upstream_bytes += totals.upstream_bytes
            into.keys |= totals.keys
    report = make_report(paths, RULES)
    _check(report, merged, exact_upstream=True)
    assert report["estimates"] == []
    assert [s["lines"] for s in report["sources"]] == [p.lines for p in expected_parts]


def test_since_until_select_a_period(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    write_file(path, 30_000, seconds=3 * 86400)
    day = 86400
    whole = make_report([path], RULES)
    first = make_report([path], RULES, until=START + day)
    rest = make_report([path], RULES, since=START + day)
    assert first["total"]["requests"] + rest["total"]["requests"] == 30_000
    assert first["lines"]["outside_range"] == rest["total"]["requests"]
    assert (
        first["total"]["bytes_to_clients"] + rest["total"]["bytes_to_clients"]
        == whole["total"]["bytes_to_clients"]
    )


def test_bounded_objects_switch_to_estimates() -> None:
    """Past the cap, distinct objects come from HyperLogLog (within 3 %) and top objects are
    flagged approximate; the biggest objects survive pruning."""
    agg = Aggregator(RULES, {}, object_cap=1000)
    lines = [
        f"1796000000.000 1 ::1 TCP_MISS/200 {10 if i else 10**9} GET http://www.example.org/{i} -"
        for i in range(20_000)
    ]
    agg.feed(lines)
    distinct, exact = agg.other.distinct()
    assert not exact and abs(distinct - 20_000) < 600
    assert len(agg.other.objects) <= 1000
    assert not agg.other.top_exact
    assert agg.other.objects["http://www.example.org/0"] == [10**9, 1]


def test_junk_files_are_never_fatal(tmp_path: Path) -> None:
    junk = tmp_path / "junk.log"
    with junk.open("wb") as out:
        out.write(bytes(range(256)) * 4000)  # 1 MB without a single whole line
        out.write(b"\n1796000000.000 1 ::1 TCP_HIT/200 5 GET http://www.example.org/ -\n")
        out.write(b"\x1f\x8b not really gzip\n")
    cut_gz = tmp_path / "cut.log.gz"
    good = tmp_path / "good.log"
    write_file(good, 5000)
    with good.open("rb") as src, gzip.open(cut_gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    cut_gz.write_bytes(cut_gz.read_bytes()[: cut_gz.stat().st_size // 2])
    report = make_report([junk, cut_gz], RULES)
    assert report["total"]["requests"] >= 1
    assert report["lines"]["bad"] >= 2


def test_line_reader_bounds_lines_and_keeps_a_last_partial_line() -> None:
    data = b"a\n" + b"x" * 300 + b"\nb\nc"
    reader = LineReader(io.BytesIO(data), block=16, max_line=100)  # type: ignore[arg-type]
    lines = [line for block in reader for line in block]
    assert lines == ["a", "b", "c"]
    assert reader.overlong == 1


def _assert_attributed_like_the_helper(
    rules: CompiledRules, urls: list[str], repeat: int
) -> dict[str, dict[str, list[int]]]:
    """Feed each URL `repeat` times; every one must land under the class and key the helper's
    `key_for` gives it ("other" under the URL itself), counted `repeat` times. The expected
    groups: {class: {key: [requests, objects]}}."""
    agg = Aggregator(rules, {})
    for _ in range(repeat):
        for url in urls:
            agg.feed([f"1796000000.000 1 ::1 TCP_MISS/200 1 GET {url} -"])
    expected: dict[str, dict[str, list[int]]] = {}
    for url in urls:
        found = rules.key_for(url)
        name, key = ("other", url) if found is None else (found[0].name, found[1])
        expected.setdefault(name, {}).setdefault(key, [0, 0])
        expected[name][key][0] += repeat
        expected[name][key][1] += repeat
    got = {
        name: group.objects
        for name, group in [*agg.groups.items(), ("other", agg.other)]
        if group.objects
    }
    assert got == expected
    return expected


@pytest.mark.parametrize("repeat", [1, 3])
def test_memoised_attribution_gives_the_helpers_keys(repeat: int) -> None:
    """Whatever memo answers (whole URL, URL without its query plus the stable query), the
    class and key are those of `CompiledRules.key_for`, the store-ID helper's own path."""
    guid = "0a1b2c3d-0000-4000-8000-00000000000a"
    do = f"http://7.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/files/{guid}"
    urls = [
        f"{do}?P1=1&P2=2",
        f"{do}?P1=9&P2=8&P3=7&P4=6",
        f"{do}?P1=9&keep=me&P4=6",  # a parameter that is not volatile stays in the key
        f"{do}?keep=other",
        f"{do}?",
        f"{do}/pieceshash?P1=5",
        "http://dl.google.com/release2/chrome/tok_1.0/1.0_chrome_installer.exe?x=1&y=2",
        "http://dl.google.com/release2/chrome/tok_1.0/1.0_chrome_installer.exe",
        "http://swcdn.apple.com/content/downloads/12/34/042-1/tok/InstallAssistant.pkg?a=b",
        "http://www.example.org/page?x=1",
        "http://download.windowsupdate.com.evil.example/d/msdownload/update/x_" + "0" * 40 + ".msu",
    ]
    _assert_attributed_like_the_helper(RULES, urls, repeat)


@pytest.mark.parametrize("repeat", [1, 3])
def test_address_urls_are_attributed_like_the_helper_does(tmp_path: Path, repeat: int) -> None:
    """IP-literal URLs (plain and Connected Cache) are never answered from the path memo: a
    Connected Cache URL's query decides its class, and its cacheHostOrigin leaves the key."""
    path = tmp_path / "rules.toml"
    path.write_text('[classes.delivery-optimization]\ntrusted_networks = ["10.1.0.0/16"]\n')
    rules = load_rules(path)
    do = "/filestreamingservice/files/0a1b2c3d-0000-4000-8000-00000000000a"
    origin = "cacheHostOrigin=dl.delivery.mp.microsoft.com"
    urls = [
        f"http://10.1.2.3{do}?P1=1&P2=2",
        f"http://10.1.2.3{do}?P1=3&{origin}",
        f"http://10.1.2.3{do}?P1=4&cacheHostOrigin=evil.example",
        f"http://10.1.2.3{do}?P1=5&{origin}&{origin}",
        f"http://10.1.2.3{do}?keep=me&{origin}",
        f"http://10.9.2.3{do}?P1=6&{origin}",
        f"http://10.9.2.3{do}?P1=6",
    ]
    expected = _assert_attributed_like_the_helper(rules, urls, repeat)
    assert len(expected["delivery-optimization"]) == 2  # the GUID, and the GUID with keep=me
