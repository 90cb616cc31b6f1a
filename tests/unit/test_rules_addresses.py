"""IP-literal hosts and Connected Cache URLs: mapped only inside a class's `trusted_networks`.

An address says nothing about who answers there, so a key shared with the named hosts is given
to an IP-literal URL only when the admin vouches for the address; everything else keeps its own
URL as key (what Squid does anyway). See `patchcache.rules.addresses`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchcache.rules import CompiledRules, RulesError, load_rules

GUID = "0a6f1c2e-1111-2222-3333-444455556666"
DO_PATH = f"/filestreamingservice/files/{GUID}"
DO_QUERY = "P1=1800000001&P2=404&P3=2&P4=c2ln"
NAMED = f"http://dl.delivery.mp.microsoft.com{DO_PATH}"
ORIGIN = "cacheHostOrigin=dl.delivery.mp.microsoft.com"
D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU_PATH = f"/d/msdownload/update/software/secu/2019/06/windows6.1-kb4503292-x64_{D40}.msu"

TRUSTED = """
[classes.delivery-optimization]
trusted_networks = ["10.1.0.0/16", "2001:db8::/32"]
"""


def rules_from(tmp_path: Path, text: str) -> CompiledRules:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


@pytest.fixture
def trusted(tmp_path: Path) -> CompiledRules:
    return rules_from(tmp_path, TRUSTED)


def named_key(rules: CompiledRules, path_query: str) -> str:
    found = rules.key_for(f"http://dl.delivery.mp.microsoft.com{path_query}")
    assert found is not None and found[0].name == "delivery-optimization"
    return found[1]


# -- plain IP literals --------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "10.1.2.3",
        "10.1.0.0",
        "10.1.255.255",
        "10.1.2.3:8080",
        "[2001:db8::5]",
        "[2001:DB8:0::5]:80",
    ],
)
@pytest.mark.parametrize("query", ["", f"?{DO_QUERY}", f"?{DO_QUERY}&keep=me"])
def test_trusted_address_gets_the_named_hosts_key(
    trusted: CompiledRules, host: str, query: str
) -> None:
    found = trusted.key_for(f"http://{host}{DO_PATH}{query}")
    assert found is not None
    assert found[1] == named_key(trusted, DO_PATH + query)
    match = trusted.match(f"http://{host}{DO_PATH}{query}")
    assert match is not None and match.key == found[1]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("10.2.0.1", "not in trusted_networks"),
        ("10.0.255.255", "not in trusted_networks"),
        ("[2001:db9::1]", "not in trusted_networks"),
        # The same address written as IPv6: never trusted, whatever the networks.
        ("[::ffff:10.1.2.3]", "IPv4-mapped"),
        # Integer, octal and hex forms: resolvers read them as 10.1.2.3 or as other addresses.
        ("167837955", "dotted-quad"),
        ("010.1.2.3", "dotted-quad"),
        ("10.1.515", "dotted-quad"),
        ("0xa.1.2.3", "dotted-quad"),
        ("10.1.2.0x3", "dotted-quad"),
    ],
)
def test_other_addresses_get_no_key(trusted: CompiledRules, host: str, reason: str) -> None:
    url = f"http://{host}{DO_PATH}?{DO_QUERY}"
    assert trusted.key_for(url) is None
    assert trusted.match(url) is None
    explained = trusted.explain(url)
    assert explained.match is None
    assert any(reason in line for line in explained.reasons), explained.reasons


def test_addresses_are_unmapped_by_default() -> None:
    rules = load_rules()
    for host in ("10.1.2.3", "127.0.0.1", "[2001:db8::5]"):
        url = f"http://{host}{DO_PATH}?{DO_QUERY}"
        assert rules.key_for(url) is None
        assert "no class has trusted_networks" in rules.explain(url).reasons[0]
        assert rules.key_for(f"{url}&{ORIGIN}") is None


def test_trusted_address_still_needs_the_class_path(trusted: CompiledRules) -> None:
    """A trusted cache vouches for the class's content only: other paths stay unmapped, and
    a Windows Update path from the DO class's network is not a Windows Update key."""
    assert trusted.key_for("http://10.1.2.3/filestreamingservice/other") is None
    assert trusted.key_for(f"http://10.1.2.3{WU_PATH}") is None


def test_older_allow_ip_literals_keeps_listing_addresses_exactly(tmp_path: Path) -> None:
    rules = rules_from(
        tmp_path,
        """
[classes.delivery-optimization]
hosts = ["dl.delivery.mp.microsoft.com", "203.0.113.7"]
allow_ip_literals = true
""",
    )
    assert rules.key_for(f"http://203.0.113.7{DO_PATH}") is not None
    assert rules.key_for(f"http://203.0.113.8{DO_PATH}") is None
    assert "not listed in hosts" in rules.explain(f"http://203.0.113.8{DO_PATH}").reasons[0]


# -- Connected Cache ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"{DO_QUERY}&{ORIGIN}",
        f"{ORIGIN}&{DO_QUERY}",
        ORIGIN,
        f"{DO_QUERY}&keep=me&cacheHostOrigin=7.tlu.dl.delivery.mp.microsoft.com",
        f"{DO_QUERY}&cacheHostOrigin=DL.Delivery.MP.Microsoft.COM.",
    ],
)
@pytest.mark.parametrize("cache", ["10.1.9.9", "[2001:db8::c]"])
def test_connected_cache_gets_the_named_hosts_key(
    trusted: CompiledRules, cache: str, query: str
) -> None:
    """cacheHostOrigin names where the cache fetches from, not the content: it leaves the key."""
    found = trusted.key_for(f"http://{cache}{DO_PATH}?{query}")
    assert found is not None
    without_origin = "&".join(p for p in query.split("&") if not p.startswith("cacheHostOrigin"))
    assert found[1] == named_key(
        trusted, f"{DO_PATH}?{without_origin}" if without_origin else DO_PATH
    )
    assert "cacheHostOrigin" not in found[1]
    match = trusted.match(f"http://{cache}{DO_PATH}?{query}")
    assert match is not None and match.key == found[1]
    explained = trusted.explain(f"http://{cache}{DO_PATH}?{query}")
    assert explained.match is not None and explained.match.key == found[1]
    assert "Connected Cache at" in explained.reasons[-1]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (f"{DO_QUERY}&{ORIGIN}&{ORIGIN}", "2 cacheHostOrigin parameters"),
        (f"{ORIGIN}&cacheHostOrigin=x.dl.delivery.mp.microsoft.com", "2 cacheHostOrigin"),
        (f"{DO_QUERY}&cacheHostOrigin=", "empty cacheHostOrigin"),
        (f"{DO_QUERY}&cacheHostOrigin", "empty cacheHostOrigin"),
        (f"{DO_QUERY}&cachehostorigin=dl.delivery.mp.microsoft.com", "is not spelled"),
        (f"{DO_QUERY}&{ORIGIN}&CACHEHOSTORIGIN=evil.example", "is not spelled"),
        # Look-alike origins: checked as ASCII before case folding, like a URL's host.
        (f"{DO_QUERY}&cacheHostOrigin=dl.delivery.mp.microsoft.com.evil.example", "trusted by no"),
        (f"{DO_QUERY}&cacheHostOrigin=evil-dl.delivery.mp.microsoft.com.example", "trusted by no"),
        (f"{DO_QUERY}&cacheHostOrigin=dl.delivery.mp.micro\u0455oft.com", "outside a-z"),
        (f"{DO_QUERY}&cacheHostOrigin=dl%2Edelivery.mp.microsoft.com", "percent-encoding"),
        (f"{DO_QUERY}&cacheHostOrigin=user@dl.delivery.mp.microsoft.com", "user-info"),
        (f"{DO_QUERY}&cacheHostOrigin=dl.delivery.mp.microsoft.com:80", "port"),
        (f"{DO_QUERY}&cacheHostOrigin=dl.delivery.mp.microsoft.com/x", "outside a-z"),
        (f"{DO_QUERY}&cacheHostOrigin=10.1.2.3", "an address"),
        # A host trusted by another class, whose content the DO path is not.
        (f"{DO_QUERY}&cacheHostOrigin=download.windowsupdate.com", "connected_cache is off"),
    ],
)
def test_connected_cache_refusals(trusted: CompiledRules, query: str, reason: str) -> None:
    url = f"http://10.1.2.3{DO_PATH}?{query}"
    assert trusted.key_for(url) is None
    assert trusted.match(url) is None
    explained = trusted.explain(url)
    assert explained.match is None
    assert any(reason in line for line in explained.reasons), explained.reasons


def test_connected_cache_from_an_untrusted_cache(trusted: CompiledRules) -> None:
    url = f"http://10.2.0.1{DO_PATH}?{DO_QUERY}&{ORIGIN}"
    assert trusted.key_for(url) is None
    assert "cache address 10.2.0.1 is not in" in trusted.explain(url).reasons[0]


def test_connected_cache_is_a_per_class_opt_in(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, TRUSTED + "connected_cache = false\n")
    plain = f"http://10.1.2.3{DO_PATH}?{DO_QUERY}"
    assert rules.key_for(plain) is not None
    assert rules.key_for(f"{plain}&{ORIGIN}") is None
    assert "connected_cache is off" in rules.explain(f"{plain}&{ORIGIN}").reasons[0]


def test_connected_cache_for_another_class_needs_its_own_networks(tmp_path: Path) -> None:
    """Microsoft's own check of a node uses a Windows Update origin: the class trusting that
    host decides, with its networks, not the DO class's."""
    cache_url = f"http://10.1.2.3{WU_PATH}?cacheHostOrigin=au.download.windowsupdate.com"
    rules = rules_from(tmp_path, TRUSTED)
    assert rules.key_for(cache_url) is None
    rules = rules_from(
        tmp_path,
        TRUSTED + "[classes.windows-update]\ntrusted_networks = ['10.1.2.0/24']\n"
        "connected_cache = true\n",
    )
    found = rules.key_for(cache_url)
    assert found is not None and found[0].name == "windows-update"
    assert found[1] == f"http://windows-update.patchcache.squid.internal/sha1/{D40}"


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("networks", "message"),
    [
        ('["0.0.0.0/0"]', "wider than /8"),
        ('["::/0"]', "wider than /16"),
        ('["10.0.0.0/7"]', "wider than /8"),
        ('["2000::/15"]', "wider than /16"),
        ('["10.1.2.3/16"]', "has host bits set"),
        ('["10.1.0.0/255.255.0.0"]', "prefix length"),
        ('["10.1.0.0/33"]', "not a network"),
        ('["010.1.0.0/16"]', "not a network"),
        ('["corp.example"]', "not a network"),
        ('["::ffff:0:0/96"]', "IPv4-mapped"),
        ("[16]", "valid string"),
    ],
)
def test_bad_trusted_networks_name_file_class_and_field(
    tmp_path: Path, networks: str, message: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f"[classes.delivery-optimization]\ntrusted_networks = {networks}\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    rendered = str(info.value)
    assert message in rendered
    assert f"{path}: class delivery-optimization: field trusted_networks" in rendered


def test_networks_are_normalised_and_loopback_8_is_allowed(tmp_path: Path) -> None:
    rules = rules_from(
        tmp_path,
        "[classes.delivery-optimization]\n"
        'trusted_networks = ["127.0.0.0/8", "2001:DB8::/32", "192.0.2.7"]\n',
    )
    cls = rules.by_name("delivery-optimization")
    assert cls is not None
    assert cls.rule.trusted_networks == ("127.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")


def test_allow_ip_literals_and_trusted_networks_are_not_combined(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        "[classes.delivery-optimization]\nallow_ip_literals = true\n"
        'trusted_networks = ["10.1.0.0/16"]\n'
    )
    with pytest.raises(RulesError, match=r"field trusted_networks: .*not both"):
        load_rules(path)


@pytest.mark.parametrize("pattern", ["010.1.2.3", "167772161", "*.0.1", "a.0x7f"])
def test_host_patterns_never_end_in_a_number(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f"[classes.x]\nhosts = ['{pattern}']\n")
    with pytest.raises(RulesError, match="numeric label"):
        load_rules(path)
