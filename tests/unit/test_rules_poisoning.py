"""Cache poisoning corpus: no URL from an untrusted host may get a class key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchcache.rules import CompiledRules, load_rules

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU_PATH = f"/d/msdownload/update/software/secu/2019/06/windows6.1-kb4503292-x64_{D40}.msu"
DO_PATH = "/filestreamingservice/files/0a6f1c2e-1111-2222-3333-444455556666?P1=1&P2=2"
KL_PATH = "/bases/av/kdb/i386/kdb-i386-0607g.kdc"
KELVIN = "\u212a"  # KELVIN SIGN: str.lower() gives ASCII "k"

# Unicode look-alikes of trusted hosts. Each must be refused before any case folding: Squid
# forwards the raw bytes, so the object behind such a host is not the trusted one. Some fold to
# the trusted ASCII name under str.lower() (KELVIN SIGN), others under IDNA/NFKC mapping that
# browsers apply and Squid does not (full-width letters, ideographic full stops).
CONFUSABLES = [
    f"http://dnl-01.geo.{KELVIN}aspersky.com{KL_PATH}",
    f"http://{KELVIN}aspersky.com.geo.kaspersky.com.{KELVIN}{KL_PATH}",
    f"http://dnl-01.geo.KASPERS{KELVIN}Y.COM{KL_PATH}",
    f"http://dnl-01.geo.kaspersky.com:8{KELVIN}{KL_PATH}",
    f"http://dnl-01.geo.\uff4baspersky.com{KL_PATH}",  # FULLWIDTH LATIN SMALL LETTER K
    f"http://dnl-01.geo.kaspersky\u3002com{KL_PATH}",  # IDEOGRAPHIC FULL STOP
    f"http://dnl-01.geo.kaspersky\uff0ecom{KL_PATH}",  # FULLWIDTH FULL STOP
    f"http://dnl-01.geo.kaspersky.com\u200b{KL_PATH}",  # ZERO WIDTH SPACE
    f"http://dnl-01.geo.ka\u00adspersky.com{KL_PATH}",  # SOFT HYPHEN (IDNA deletes it)
    f"http://dnl-01.geo.\U0001d5c4aspersky.com{KL_PATH}",  # MATHEMATICAL SANS-SERIF SMALL K
    f"http://download.w\u0130ndowsupdate.com{WU_PATH}",  # LATIN CAPITAL I WITH DOT ABOVE
    f"http://download.windowsupdate.com\u0307{WU_PATH}",  # COMBINING DOT ABOVE
    f"http://download.windowsupdate.\u0441om{WU_PATH}",  # CYRILLIC SMALL ES
    f"http://download.windowsupdate.c\u03bfm{WU_PATH}",  # GREEK SMALL OMICRON
    f"http://download.\u1d21indowsupdate.com{WU_PATH}",  # LATIN LETTER SMALL CAPITAL W
    f"http://download.windowsupdate.com:\uff18\uff10{WU_PATH}",  # FULLWIDTH DIGITS as port
    f"http://download.windowsupdate.com:\u0668\u0660{WU_PATH}",  # ARABIC-INDIC DIGITS as port
    f"http://\u0661\u0662\u0667.0.0.1{WU_PATH}",  # ARABIC-INDIC DIGITS in an IPv4 literal
    f"http://[::\uff11]{DO_PATH}",  # FULLWIDTH DIGIT ONE in an IPv6 literal
    f"http://dl.delivery.mp.micros\u03bfft.com{DO_PATH}",
    f"HTTP{KELVIN}://dl.delivery.mp.microsoft.com{DO_PATH}",
    f"\uff48ttp://dl.delivery.mp.microsoft.com{DO_PATH}",  # FULLWIDTH h in the scheme
]

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


_RULES: list[CompiledRules] = []


def load_rules_once() -> CompiledRules:
    if not _RULES:
        _RULES.append(load_rules())
    return _RULES[0]


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules_once()


@pytest.mark.parametrize("url", HOSTILE + CONFUSABLES)
def test_hostile_urls_get_no_key(rules: CompiledRules, url: str) -> None:
    assert rules.match(url) is None, url
    assert rules.key_for(url) is None, url
    assert rules.explain(url).match is None, url


def test_the_ascii_originals_of_the_confusables_do_match(rules: CompiledRules) -> None:
    # The corpus above is only meaningful if the genuine names get their class.
    for url, cls in (
        (f"http://dnl-01.geo.kaspersky.com{KL_PATH}", "av-kaspersky"),
        (f"http://dnl-01.geo.KASPERSKY.COM.{KL_PATH}", "av-kaspersky"),
        (f"http://download.windowsupdate.com:80{WU_PATH}", "windows-update"),
        (f"http://dl.delivery.mp.microsoft.com{DO_PATH}", "delivery-optimization"),
    ):
        found = rules.match(url)
        assert found is not None and found.cls.name == cls, url


# Look-alikes per ASCII character: some fold to it under str.lower() (KELVIN SIGN), some under
# IDNA/NFKC (full-width forms, ideographic full stop), the rest are homoglyphs.
LOOK_ALIKE = {
    "k": (KELVIN, "\uff4b", "\u03ba"),
    "K": (KELVIN, "\uff2b", "\u039a"),
    ".": ("\u3002", "\uff0e", "\uff61"),
    "o": ("\u03bf", "\u043e", "\uff4f"),
    "a": ("\u0430", "\uff41"),
    "c": ("\u0441", "\u217d"),
    "e": ("\u0435",),
    "p": ("\u0440",),
    "s": ("\u0455", "\u017f"),
    "y": ("\u0443",),
    "i": ("\u0456", "\u0131"),
}
GENUINE_HOSTS = ("dnl-01.geo.kaspersky.com", "DNL-01.GEO.KASPERSKY.COM", "a.kaspersky-labs.com")


@st.composite
def confusable_hosts(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(GENUINE_HOSTS))
    # Few swaps at a time: one KELVIN SIGN among ASCII is the dangerous case.
    swaps = draw(st.sets(st.integers(0, len(host) - 1), max_size=3))
    out = []
    for number, char in enumerate(host):
        options = LOOK_ALIKE.get(char, ())
        out.append(draw(st.sampled_from(options)) if number in swaps and options else char)
    return "".join(out)


@given(host=confusable_hosts())
def test_look_alike_hosts_never_get_a_key(host: str) -> None:
    """Any mix of look-alikes in a trusted name is refused; the genuine name (no swap) is not."""
    found = load_rules_once().key_for(f"http://{host}{KL_PATH}")
    if host.isascii():
        assert found is not None and found[0].name == "av-kaspersky", host
    else:
        assert found is None, host


def test_hosts_longer_than_a_dns_name_are_refused(rules: CompiledRules) -> None:
    long_host = "a." * 130 + "kaspersky.com"
    assert rules.key_for(f"http://{long_host}{KL_PATH}") is None
    assert rules.key_for(f"http://x.{'b' * 240}.kaspersky.com{KL_PATH}") is None


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
