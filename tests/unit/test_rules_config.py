"""Rules validation: every problem is reported with file, class and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchcache.rules import RulesError, load_pack, load_rules, pack_names
from patchcache.rules.model import parse_rate, parse_size


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", pack_names())
def test_every_pack_validates(name: str) -> None:
    pack = load_pack(name)
    assert pack.classes


def test_no_file_means_all_packs() -> None:
    rules = load_rules()
    assert {c.name for c in rules.classes} >= {"windows-update", "delivery-optimization", "apple"}
    assert rules.sources[0] == "pack:windows-update"


def test_override_is_field_by_field(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, '[classes.windows-update]\nmax_object_size = "16 GiB"\n'))
    cls = rules.by_name("windows-update")
    assert cls is not None
    assert cls.max_object_size == 16 * 1024**3
    assert cls.rule.digest == "sha1"  # the rest comes from the pack


def test_admin_classes_come_first(tmp_path: Path) -> None:
    rules = load_rules(
        write(
            tmp_path,
            """
packs = ["windows-update"]
[classes.local-mirror]
hosts = ["updates.corp.example"]
path = '^/wsus/(?P<rest>.+)$'
key = "/{rest}"
""",
        )
    )
    assert rules.classes[0].name == "local-mirror"
    found = rules.match("http://updates.corp.example/wsus/a/b.cab?x=1")
    assert found is not None
    assert found.key == "http://local-mirror.patchcache.squid.internal/a/b.cab"
    assert rules.by_name("apple") is None  # only the listed pack


def test_fingerprint_changes_with_rules(tmp_path: Path) -> None:
    base = load_rules().fingerprint
    assert load_rules().fingerprint == base
    changed = load_rules(write(tmp_path, '[classes.apple]\nmax_object_size = "1 GiB"\n'))
    assert changed.fingerprint != base


BAD = [
    ("packs = ['windows-update', 'nope']\n", "packs", "unknown pack 'nope'"),
    ("[classes.windows-update]\nmax_objekt_size = 1\n", "max_objekt_size", "unknown field"),
    ("[classes.x]\nhosts = ['a.example']\npath = '(['\n", "path", "does not compile"),
    ("[classes.x]\nhosts = ['*']\n", "hosts", "host pattern"),
    ("[classes.x]\nhosts = ['a.*.example']\n", "hosts", "leading '*.'"),
    ("[classes.x]\nhosts = ['a.example']\nmax_object_size = 'lots'\n", "max_object_size", "size"),
    ("[classes.x]\nhosts = ['a.example']\nkey = '/{nope}'\n", None, "no group"),
    ("[classes.x]\nhosts = ['a.example']\ndigest = 'sha1'\n", None, "(?P<digest>"),
    ("[classes.x]\npath = '/x'\n", None, "at least one trusted host"),
    ("[classes.x]\nhosts = ['a.example']\nfreshness = 'forever'\n", "freshness", "pin"),
    (
        "[classes.x]\nhosts = ['a.example']\nprefetch_windows = ['25:00-01:00']\n",
        "prefetch_windows",
        "22:00-06:00",
    ),
    ("[classes.Bad_Name]\nhosts = ['a.example']\n", "classes", "class name"),
    ("[settings]\ndefault_max_object_size = -1\n", "settings", "negative"),
    (
        "[[presence]]\nsubnets = ['10.1.0.0/33']\ncache_url = 'http://c.example'\n",
        "presence",
        "not a network",
    ),
    (
        "[[presence]]\nsubnets = ['10.1.0.0/16']\ncache_url = 'http://c.example'\n"
        "classes = ['nope']\n",
        "presence.classes",
        "unknown class",
    ),
    ("bogus = 1\n", "bogus", "unknown key"),
    # Patterns RE2 (linear time) cannot run: refused with the reason, never run on `re`.
    ("[classes.x]\nhosts = ['a.example']\npath = '^/(?<!x)y$'\n", "path", "no look-around"),
    ("[classes.x]\nhosts = ['a.example']\npath = '^/(a)\\1$'\n", "path", "RE2"),
    ("[classes.x]\nhosts = ['a.example']\npath = '^/a\\Z'\n", "path", "\\z"),
    ("[classes.x]\nhosts = ['a.example']\npath = '^/a*+$'\n", "path", "possessive"),
    ("[classes.x]\nhosts = ['a.example']\npath = '^/\\C$'\n", "path", "single byte"),
    # A public suffix trusts every name anyone registers under it.
    ("[classes.x]\nhosts = ['*.co.uk']\n", "hosts", "public suffix"),
    ("[classes.x]\nhosts = ['*.cloudfront.net']\n", "hosts", "public suffix"),
    ("[classes.x]\nhosts = ['a.example', '*.CO.JP.']\n", "hosts", "public suffix"),
    ("[classes.apple]\nhosts = ['*.edgesuite.net']\n", "hosts", "public suffix"),
    ("this is not toml", None, "not valid TOML"),
]


@pytest.mark.parametrize(("text", "field", "message"), BAD)
def test_bad_rules_name_file_field(
    tmp_path: Path, text: str, field: str | None, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    rendered = str(info.value)
    assert str(path) in rendered
    assert message in rendered
    if field is not None:
        assert any(field in (p.field or "") for p in info.value.problems), info.value.problems


def test_catastrophic_patterns_load_and_match_in_linear_time(tmp_path: Path) -> None:
    """`^/(a+)+$` used to stall Python's backtracking engine for seconds on a 29-byte path
    and forever on a longer one; on RE2 it is an ordinary pattern."""
    rules = load_rules(
        write(
            tmp_path,
            """
packs = []
[classes.evil]
hosts = ["a.example"]
path = '^/(a+)+$'
[classes.evil2]
hosts = ["b.example"]
path = '^/(?P<x>(a|aa)*)*b$'
key = "/{x}"
""",
        )
    )
    # Bounded loop: each of these would need 2^n steps of backtracking.
    for length in (29, 40, 1000, 100_000):
        assert rules.key_for("http://a.example/" + "a" * length + "!") is None
        assert rules.key_for("http://b.example/" + "a" * length + "c") is None
    found = rules.match("http://a.example/aaaa")
    assert found is not None and found.cls.name == "evil"
    found = rules.match("http://b.example/aaab")
    assert found is not None and found.cls.name == "evil2"


def test_every_pack_pattern_runs_on_re2() -> None:
    """Every built-in path loads on RE2, with the named groups its key uses."""
    from patchcache.rules.regex import PathRegex

    for name in pack_names():
        for cls_name, rule in load_pack(name).classes.items():
            regex = PathRegex(rule.path)
            for group in ("digest", "guid", "rest"):
                if "{" + group + "}" in rule.key:
                    assert group in regex.group_names, (cls_name, group)


def test_no_pack_trusts_a_public_suffix() -> None:
    from patchcache.rules.public_suffix import is_public_suffix

    for name in pack_names():
        for cls_name, rule in load_pack(name).classes.items():
            for pattern in rule.hosts:
                if pattern.startswith("*."):
                    assert not is_public_suffix(pattern[2:]), (cls_name, pattern)
    assert is_public_suffix("co.uk") and not is_public_suffix("example.co.uk")


def test_organisation_domains_under_a_public_suffix_are_fine(tmp_path: Path) -> None:
    rules = load_rules(
        write(tmp_path, "[classes.x]\nhosts = ['*.example.co.uk', '*.apple.com.edgesuite.net']\n")
    )
    assert rules.key_for("http://dl.example.co.uk/a") is not None
    assert rules.key_for("http://evil.co.uk/a") is None


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[classes.a]\nhosts = ['a.example']\npath = '(['\n"
        "[classes.b]\nhosts = ['b.example']\nmax_object_size = 'x'\n",
    )
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert {p.rule for p in info.value.problems} == {"a", "b"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="file not found"):
        load_rules(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4 GiB", 4 * 1024**3),
        ("200 MB", 200_000_000),
        ("512k", 512 * 1024),
        (1024, 1024),
        ("1.5 MiB", 1572864),
    ],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"), [("10 MiB/s", 10 * 1024**2), ("8 Mbit/s", 1_000_000), (4096, 4096)]
)
def test_parse_rate(text: str | int, value: int) -> None:
    assert parse_rate(text) == value


def test_core_and_public_re2_layers_agree() -> None:
    """rules.regex calls the bindings' core when it can; its public layer must agree."""
    from patchcache.rules.regex import PathRegex

    paths = [
        "/d/msdownload/update/software/x_" + "ab" * 20 + ".MSU",
        "/filestreamingservice/files/0a6f1c2e-1111-2222-3333-444455556666/pieceshash",
        "/filestreamingservice/files/0a6f1c2e-1111-2222-3333-444455556666",
        "/pr/0a6f1c2e-1111-2222-3333-444455556666/Office/Data/v64.cab",
        "/edgedl/release2/chrome/x.exe",
        "/caf\u00e9/\u212a/x.pkg",
        "/nothing",
    ]
    for name in pack_names():
        for rule in load_pack(name).classes.values():
            core, public = PathRegex(rule.path), PathRegex(rule.path, use_core=False)
            assert core.group_names == public.group_names
            for path in paths:
                a, b = core.fullmatch(path), public.fullmatch(path)
                assert (a is None) == (b is None), (rule.path, path)
                if a is not None and b is not None:
                    for group in core.group_names:
                        assert a.group(group) == b.group(group), (rule.path, path, group)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[classes.x]\nhosts = ['*.co.uk']\n", "'co.uk' is a public suffix"),
        ("[classes.x]\nhosts = ['a.example']\npath = '^/(?=x)'\n", "no look-around"),
    ],
)
def test_check_config_refuses_with_file_class_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    from click.testing import CliRunner

    from patchcache.cli import main

    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["check-config", "--rules", str(path)])
    assert result.exit_code == 1
    assert f"error: {path}: class x: field " in result.output
    assert message in result.output


def test_check_config_accepts_catastrophic_looking_patterns_that_run_linear(
    tmp_path: Path,
) -> None:
    # `^/(a+)+$` is fine on RE2; what used to make it dangerous was the engine.
    from click.testing import CliRunner

    from patchcache.cli import main

    path = write(tmp_path, "[classes.x]\nhosts = ['a.example']\npath = '^/(a+)+$'\n")
    result = CliRunner().invoke(main, ["check-config", "--rules", str(path)])
    assert result.exit_code == 0, result.output
