"""Cache poisoning corpus: no URL from an untrusted host may get a class key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchcache.rules import CompiledRules, load_rules

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU_PATH = f"/d/msdownload/update/software/secu/2019/06/windows6.1-kb4503292-x64_{D40}.msu"
DO_PATH = "/filestreamingservice/files/0a6f1c2e-1111-2222-3333-444455556666?P1=1&P2=2"

HOSTILE = [
    # look-alike hosts
    f"http://download.windowsupdate.com.example.net{WU_PATH}",
    f"http://download-windowsupdate.com{WU_PATH}",
    f"http://downloadwindowsupdate.com{WU_PATH}",
    f"http://windowsupdate.com.evil{WU_PATH}",
    f"http://evilwindowsupdate.com{WU_PATH}",
    f"http://xdownload.windowsupdate.com.evil.org{WU_PATH}",
    f"http://tlu.dl.delivery.mp.microsoft.com.attacker.io{DO_PATH}",
    f"http://dl.delivery.mp.microsoft.co{DO_PATH}",
    # user-info tricks
    f"http://download.windowsupdate.com@evil.example{WU_PATH}",
    f"http://download.windowsupdate.com:80@evil.example{WU_PATH}",
    f"http://user:pw@download.windowsupdate.com{WU_PATH}",
    f"http://evil.example\\@download.windowsupdate.com{WU_PATH}",
    f"http://evil.example\\.download.windowsupdate.com{WU_PATH}",
    # percent-encoding tricks in the host
    f"http://download.windowsupdate.com%2eevil.example{WU_PATH}",
    f"http://download%2ewindowsupdate%2ecom{WU_PATH}",
    f"http://evil.example%2f.download.windowsupdate.com{WU_PATH}",
    f"http://evil.example%40download.windowsupdate.com{WU_PATH}",
    # IP literals (not opted in), in several spellings
    f"http://127.0.0.1{WU_PATH}",
    f"http://203.0.113.7{DO_PATH}",
    f"http://[::1]{DO_PATH}",
    f"http://2130706433{WU_PATH}",
    f"http://0x7f.0.0.1{WU_PATH}",
    # non-ASCII / IDN homographs
    f"http://download.windowsupd\u0430te.com{WU_PATH}",  # Cyrillic a
    f"http://xn--download-windowsupdate-abc.com{WU_PATH}",
    # path tricks on a trusted host
    f"http://download.windowsupdate.com/d/msdownload/update/../../evil/x_{D40}.msu",
    f"http://download.windowsupdate.com/d/msdownload/update/%2e%2e/x_{D40}.msu",
    f"http://download.windowsupdate.com/d/msdownload/update/a%2fb_{D40}.msu",
    # the trusted name only in the path or query
    f"http://evil.example/download.windowsupdate.com{WU_PATH}",
    f"http://evil.example{WU_PATH}?host=download.windowsupdate.com",
    f"http://evil.example#@download.windowsupdate.com{WU_PATH}",
]


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules()


@pytest.mark.parametrize("url", HOSTILE)
def test_hostile_urls_get_no_key(rules: CompiledRules, url: str) -> None:
    assert rules.match(url) is None, url
    assert rules.key_for(url) is None, url


def test_ip_literal_only_when_admin_opts_in(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        """
[classes.delivery-optimization]
hosts = ["dl.delivery.mp.microsoft.com", "203.0.113.7"]
allow_ip_literals = true
"""
    )
    rules = load_rules(rules_file)
    found = rules.match(f"http://203.0.113.7{DO_PATH}")
    assert found is not None and found.cls.name == "delivery-optimization"
    # Another IP is still refused, and so is the old pack host the admin dropped.
    assert rules.match(f"http://203.0.113.8{DO_PATH}") is None
    assert rules.match(f"http://7.tlu.dl.delivery.mp.microsoft.com{DO_PATH}") is None


URLISH = st.text(alphabet="hts:/?#.@%\\[]aw0-=&P1", max_size=40)


@given(st.one_of(URLISH, st.builds(lambda tail: "http://" + tail, URLISH)))
def test_fast_splitter_agrees_with_the_url_grammar(url: str) -> None:
    """split_parts uses str methods for speed; it must split exactly like the URL regex."""
    from patchcache.rules.urls import _URL_RE, _authority, split_parts

    got = split_parts(url)
    found = _URL_RE.match(url)
    if found is None:
        assert isinstance(got, str)
        return
    if isinstance(got, str):
        return  # refused for a reason the grammar does not know (host, path, scheme)
    _scheme, authority, path, query = found.groups()
    expected_host = _authority(authority)
    assert not isinstance(expected_host, str)
    assert (got[1], got[3], got[4]) == (expected_host[0], path or "/", query)
