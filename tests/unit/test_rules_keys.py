"""Keys from the built-in packs: tables of URL -> (class, key)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchcache.rules import CompiledRules, load_rules
from patchcache.rules.compiled import _stable_query

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
GUID = "0a6f1c2e-1111-2222-3333-444455556666"
WU = "http://windows-update.patchcache.squid.internal"
DO = "http://delivery-optimization.patchcache.squid.internal"


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules()


KEYS = [
    # Windows Update: the SHA-1 in the name is the key; host, c/ d/, case do not matter.
    (
        f"http://download.windowsupdate.com/d/msdownload/update/software/secu/2019/06/"
        f"windows6.1-kb4503292-x64_{D40}.msu",
        "windows-update",
        f"{WU}/sha1/{D40}",
    ),
    (
        f"http://au.download.windowsupdate.com/c/msdownload/update/software/secu/2019/06/"
        f"windows6.1-kb4503292-x64_{D40.upper()}.msu",
        "windows-update",
        f"{WU}/sha1/{D40}",
    ),
    (
        f"http://7.au.b1.download.windowsupdate.com/d/msdownload/update/software/updt/2024/01/"
        f"x_{D40}.cab",
        "windows-update",
        f"{WU}/sha1/{D40}",
    ),
    (
        f"http://DOWNLOAD.WindowsUpdate.com./d/msdownload/update/software/secu/2019/06/x_{D40}.exe",
        "windows-update",
        f"{WU}/sha1/{D40}",
    ),
    (
        f"http://download.windowsupdate.com:80/msdownload/update/software/secu/2019/06/x_{D40}.psf",
        "windows-update-express",
        f"http://windows-update-express.patchcache.squid.internal/sha1/{D40}",
    ),
    # Without a digest: a host- and c/d-independent path key.
    (
        "http://download.windowsupdate.com/c/msdownload/update/others/2020/kb1.cab",
        "windows-update-path",
        "http://windows-update-path.patchcache.squid.internal/path/msdownload/update/others/2020/kb1.cab",
    ),
    (
        "http://au.download.windowsupdate.com/d/msdownload/update/others/2020/kb1.cab",
        "windows-update-path",
        "http://windows-update-path.patchcache.squid.internal/path/msdownload/update/others/2020/kb1.cab",
    ),
    # Express payloads without a digest: the path key of their own demand-aware class.
    (
        "http://au.download.windowsupdate.com/d/msdownload/update/others/2020/kb1_express.PSF",
        "windows-update-path-express",
        "http://windows-update-path-express.patchcache.squid.internal/path/msdownload/update/"
        "others/2020/kb1_express.PSF",
    ),
    # Trust lists are a class that never caches (the helper answers ERR).
    (
        "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab",
        "windows-trust-lists",
        None,
    ),
    # Delivery Optimization: the GUID; P1..P4 leave the key only.
    (
        f"http://7.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/files/{GUID}"
        "?P1=1700000000&P2=404&P3=2&P4=abc%3d%3d",
        "delivery-optimization",
        f"{DO}/files/{GUID}",
    ),
    (
        f"http://dl.delivery.mp.microsoft.com/filestreamingservice/files/{GUID.upper()}"
        "?P1=1700000999&P2=404&P3=2&P4=zzz",
        "delivery-optimization",
        f"{DO}/files/{GUID}",
    ),
    (
        f"http://2.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/files/{GUID}/pieceshash",
        "delivery-optimization",
        f"{DO}/files/{GUID}/pieceshash",
    ),
    (
        f"http://2.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/files/{GUID}"
        "?P1=1&keep=yes&P2=2",
        "delivery-optimization",
        f"{DO}/files/{GUID}?keep=yes",
    ),
    (
        f"http://msedge.b.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/files/{GUID}?P1=1",
        "edge",
        f"http://edge.patchcache.squid.internal/files/{GUID}",
    ),
    (
        "http://officecdn.microsoft.com/pr/492350f6-3a01-4f97-b9c0-c7c6ddf67d60/Office/Data/"
        "16.0.1/stream.x64.x-none.dat",
        "office-c2r",
        "http://office-c2r.patchcache.squid.internal/pr/492350f6-3a01-4f97-b9c0-c7c6ddf67d60/"
        "Office/Data/16.0.1/stream.x64.x-none.dat",
    ),
    (
        "http://officecdn.microsoft.com.edgesuite.net/sr/pr/492350f6-3a01-4f97-b9c0-c7c6ddf67d60/"
        "Office/Data/16.0.1/stream.x64.x-none.dat",
        "office-c2r",
        "http://office-c2r.patchcache.squid.internal/pr/492350f6-3a01-4f97-b9c0-c7c6ddf67d60/"
        "Office/Data/16.0.1/stream.x64.x-none.dat",
    ),
    (
        "http://swcdn.apple.com/content/downloads/12/34/042-1/tok/InstallAssistant.pkg",
        "apple",
        "http://apple.patchcache.squid.internal/content/downloads/12/34/042-1/tok/InstallAssistant.pkg",
    ),
    (
        "http://ardownload2.adobe.com/pub/adobe/reader/win/AcrobatDC/2300620360/"
        "AcroRdrDCUpd2300620360.msp",
        "adobe",
        "http://adobe.patchcache.squid.internal/pub/adobe/reader/win/AcrobatDC/2300620360/"
        "AcroRdrDCUpd2300620360.msp",
    ),
    (
        "http://r2---sn-abc.gvt1.com/edgedl/release2/chrome/tok_120.0/120.0_chrome_installer.exe"
        "?cms_redirect=yes&mh=Xx&mip=1.2.3.4",
        "chrome",
        "http://chrome.patchcache.squid.internal/release2/chrome/tok_120.0/120.0_chrome_installer.exe",
    ),
    (
        "http://dl.google.com/release2/chrome/tok_120.0/120.0_chrome_installer.exe",
        "chrome",
        "http://chrome.patchcache.squid.internal/release2/chrome/tok_120.0/120.0_chrome_installer.exe",
    ),
    (
        "http://dnl-01.geo.kaspersky.com/bases/av/kdb/i386/base001.kdc",
        "av-kaspersky",
        "http://av-kaspersky.patchcache.squid.internal/bases/av/kdb/i386/base001.kdc",
    ),
    (
        "http://http-download.intuit.com/http.intuit/Downloads/2024/Latest/QBProSetup.exe",
        "intuit",
        "http://intuit.patchcache.squid.internal/http.intuit/Downloads/2024/Latest/QBProSetup.exe",
    ),
]


@pytest.mark.parametrize(("url", "cls", "key"), KEYS)
def test_keys(rules: CompiledRules, url: str, cls: str, key: str | None) -> None:
    found = rules.match(url)
    assert found is not None, rules.explain(url).reasons
    assert found.cls.name == cls
    if key is None:
        assert not found.cls.rule.cache
    else:
        assert found.key == key


def test_digest_is_exposed_for_verification(rules: CompiledRules) -> None:
    found = rules.match(
        f"http://download.windowsupdate.com/d/msdownload/update/x_{D40.upper()}.msu"
    )
    assert found is not None
    assert found.digest == D40
    assert found.cls.rule.digest == "sha1"


# Express payloads (.psf) are read in small scattered ranges: whatever their name, the pack
# expands them only on demand; whole-file payloads expand at first sight.
EXPANSION = [
    (f"http://download.windowsupdate.com/d/msdownload/update/x_{D40}.psf", False),
    ("http://download.windowsupdate.com/d/msdownload/update/others/kb1.psf", False),
    (f"http://download.windowsupdate.com/d/msdownload/update/x_{D40}.cab", True),
    ("http://download.windowsupdate.com/d/msdownload/update/others/kb1.cab", True),
    ("http://download.windowsupdate.com/d/msdownload/update/others/kb1.esd", True),
]


@pytest.mark.parametrize(("url", "at_first_sight"), EXPANSION)
def test_express_payloads_expand_on_demand(
    rules: CompiledRules, url: str, at_first_sight: bool
) -> None:
    found = rules.match(url)
    assert found is not None, rules.explain(url).reasons
    assert found.cls.expands_at_first_sight == at_first_sight


NOT_MAPPED = [
    "http://example.com/d/msdownload/update/software/secu/2019/06/x_" + D40 + ".msu",
    "http://download.windowsupdate.com/some/page.html",
    "http://windowsupdate.com/d/msdownload/update/x_" + D40 + ".msu",  # apex not in *.
    "ftp://download.windowsupdate.com/d/msdownload/update/x_" + D40 + ".msu",
    "download.windowsupdate.com:443",  # CONNECT-style authority
    "not a url",
    "",
]


@pytest.mark.parametrize("url", NOT_MAPPED)
def test_not_mapped(rules: CompiledRules, url: str) -> None:
    assert rules.match(url) is None


@pytest.mark.parametrize(("url", "cls", "key"), KEYS)
def test_fast_path_agrees_with_match(
    rules: CompiledRules, url: str, cls: str, key: str | None
) -> None:
    found = rules.match(url)
    assert found is not None
    assert rules.key_for(url) == (found.cls, found.key)


@pytest.mark.parametrize("url", NOT_MAPPED)
def test_fast_path_refuses_too(rules: CompiledRules, url: str) -> None:
    assert rules.key_for(url) is None


QUERY_PARTS = st.sampled_from(["P1", "P2", "P4", "sauth", "P", "P11", "x", "", "="]).flatmap(
    lambda name: st.sampled_from([name, f"{name}=", f"{name}=1", f"{name}=a=b"])
)


@given(parts=st.lists(QUERY_PARTS, max_size=6))
def test_volatile_parameters_leave_the_key(rules: CompiledRules, parts: list[str]) -> None:
    # The one-regex shortcut for all-volatile queries must agree with filtering each parameter.
    cls = rules.by_name("delivery-optimization")
    assert cls is not None
    query = "&".join(parts)
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] not in cls.volatile]
    expected = "?" + "&".join(kept) if query and kept else ""
    assert _stable_query(query, cls) == expected


@pytest.mark.parametrize(
    ("query", "stable"),
    [
        ("P1=1&&P2=2", ""),
        ("&P1=1", ""),
        ("P1=1&", ""),
        ("&", ""),
        ("a=1&&b=2", "?a=1&b=2"),
        ("a=1&P1=2&&b", "?a=1&b"),
    ],
)
def test_empty_query_parts_leave_the_key(rules: CompiledRules, query: str, stable: str) -> None:
    """One object, one key: `P1=1&&P2=2` used to give a key ending in a bare "?"."""
    guid = "0a6f1c2e-1111-2222-3333-444455556666"
    found = rules.key_for(
        f"http://dl.delivery.mp.microsoft.com/filestreamingservice/files/{guid}?{query}"
    )
    assert found is not None
    assert (
        found[1] == f"http://delivery-optimization.patchcache.squid.internal/files/{guid}{stable}"
    )
    # A class without volatile parameters drops empty parts too.
    plain = rules.by_name("intuit")
    assert plain is not None
    assert _stable_query("a=1&&b=2&", plain) == "?a=1&b=2"
    assert _stable_query("&&", plain) == ""
