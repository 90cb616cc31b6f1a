"""Never an open relay: what the prefetcher (and `channel add`) may fetch; retry delays."""

from __future__ import annotations

import pytest

from patchcache.prefetch.policy import RelayRefused, admit_job, admit_url, backoff_delay
from patchcache.rules import CompiledRules, load_rules

SHA1 = "a" * 40
WU = f"http://download.windowsupdate.com/d/msdownload/update/software/kb_{SHA1}.cab"
WU_KEY = f"http://windows-update.patchcache.squid.internal/sha1/{SHA1}"


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules()  # the built-in packs


def test_a_class_url_is_admitted_with_its_key(rules: CompiledRules) -> None:
    match = admit_job(rules, WU, WU_KEY)
    assert match.cls.name == "windows-update"
    assert match.digest == SHA1
    # the same content from another WU host maps to the same key
    other = WU.replace("download.windowsupdate.com", "au.download.windowsupdate.com")
    assert admit_job(rules, other, WU_KEY).key == WU_KEY


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://evil.example.net/payload.exe", "matches no class"),
        ("http://127.0.0.1:8080/admin", "matches no class"),
        ("http://download.windowsupdate.com@evil.example.net/x.cab", "matches no class"),
        (
            "http://download.windowsupdate.com.evil.example.net/d/msdownload/update/a_"
            + SHA1
            + ".cab",
            "matches no class",
        ),
        (
            "http://download.windowsupdate.com/d/msdownload/update/../../etc/passwd",
            "matches no class",
        ),
        ("ftp://download.windowsupdate.com/x.cab", "matches no class"),
        ("gopher://x", "matches no class"),
        ("", "matches no class"),
        # a class that is cached but must never be prefetched
        (
            "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab",
            "windows-trust-lists does not allow prefetching",
        ),
    ],
)
def test_urls_outside_every_prefetch_class_are_refused(
    url: str, why: str, rules: CompiledRules
) -> None:
    with pytest.raises(RelayRefused, match=why) as info:
        admit_url(rules, url)
    assert info.value.status_hint == 403


def test_a_class_that_forbids_prefetch_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "r.toml"
    path.write_text(
        'packs = []\n[classes.nope]\nhosts = ["a.example.com"]\nprefetch = false\n'
        '[classes.nocache]\nhosts = ["b.example.com"]\ncache = false\n'
    )
    custom = load_rules(path)
    with pytest.raises(RelayRefused, match="does not allow prefetching"):
        admit_url(custom, "http://a.example.com/x")
    with pytest.raises(RelayRefused, match="not cached"):
        admit_url(custom, "http://b.example.com/x")


def test_a_job_whose_key_is_not_the_rules_key_is_refused(rules: CompiledRules) -> None:
    # A job row that pairs an allowed URL with someone else's key would fill the wrong
    # object, or let a writer of the queue point a key at arbitrary content.
    with pytest.raises(RelayRefused, match="not the job's"):
        admit_job(rules, WU, WU_KEY.replace("a" * 40, "b" * 40))


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 60.0), (1, 60.0), (2, 120.0), (3, 240.0), (8, 3600.0), (10_000, 3600.0)],
)
def test_backoff_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 60.0, 3600.0) == expected


def test_zero_backoff() -> None:
    assert backoff_delay(5, 0.0, 10.0) == 0.0
