"""Load the built-in packs and the admin's rules file into one `CompiledRules`.

Merge order: an admin class with the same name as a pack class overrides it field by field (so
`[classes.windows-update] max_object_size = "16 GiB"` changes only the limit); admin classes that
are new come first in matching order, then the enabled packs' classes in pack order.

Every problem is collected, with file, class and field, before one `RulesError` is raised:
`patchcache check-config` prints them all at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from patchcache.errors import ConfigError
from patchcache.rules.compiled import CompiledRules, compile_rules
from patchcache.rules.model import (
    ClassRule,
    PackDocument,
    PresenceSite,
    RulesDocument,
    Settings,
)
from patchcache.rules.public_suffix import is_public_suffix

# Default matching order of the built-in packs: specific before general.
PACK_ORDER = (
    "windows-update",
    "edge",
    "delivery-optimization",
    "office",
    "apple",
    "adobe",
    "chrome",
    "antivirus",
    "intuit",
)
_TOP_LEVEL_KEYS = {"packs", "settings", "classes", "presence"}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a rules file."""

    file: str
    rule: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.rule:
            where.append(f"class {self.rule}")
        if self.field:
            where.append(f"field {self.field}")
        return f"{': '.join(where)}: {self.message}"


class RulesError(ConfigError):
    """One or more problems in the rules; `problems` lists them all."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        first = problems[0]
        super().__init__(
            "; ".join(str(p) for p in problems),
            file=first.file,
            field=".".join(x for x in (first.rule, first.field) if x) or None,
        )
        # ConfigError already prefixes file and field; keep the full list as the message.
        self.args = ("\n".join(str(p) for p in problems),)


def pack_names() -> tuple[str, ...]:
    return PACK_ORDER


def _read_pack_raw(name: str) -> dict[str, Any]:
    text = resources.files("patchcache.rules").joinpath("packs", f"{name}.toml").read_text()
    return tomllib.loads(text)


def load_pack(name: str) -> PackDocument:
    """A built-in pack, validated (used by tests and `patchcache packs`)."""
    return PackDocument.model_validate(_read_pack_raw(name))


def load_rules(path: Path | str | None = None) -> CompiledRules:
    """Built-in packs plus the admin's file (if any), validated and compiled.

    Raises `RulesError` listing every problem.
    """
    problems: list[Problem] = []
    admin: dict[str, Any] = {}
    label = str(path) if path is not None else "<built-in packs>"
    if path is not None:
        try:
            admin = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RulesError([Problem(label, None, None, "file not found")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError([Problem(label, None, None, f"cannot read: {exc}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise RulesError([Problem(label, None, None, f"not valid TOML: {exc}")]) from None

    for key in admin:
        if key not in _TOP_LEVEL_KEYS:
            allowed = ", ".join(sorted(_TOP_LEVEL_KEYS))
            problems.append(Problem(label, None, key, f"unknown key (allowed: {allowed})"))

    pack_list = admin.get("packs", list(PACK_ORDER))
    if not isinstance(pack_list, list) or not all(isinstance(p, str) for p in pack_list):
        problems.append(Problem(label, None, "packs", "must be a list of pack names"))
        pack_list = []
    for name in pack_list:
        if name not in PACK_ORDER:
            known = ", ".join(PACK_ORDER)
            problems.append(
                Problem(label, None, "packs", f"unknown pack {name!r} (known: {known})")
            )

    settings = Settings()
    try:
        settings = Settings.model_validate(admin.get("settings", {}))
    except ValidationError as exc:
        problems.extend(_problems(label, None, "settings", exc))

    presence: tuple[PresenceSite, ...] = ()
    raw_presence = admin.get("presence", [])
    if not isinstance(raw_presence, list):
        problems.append(Problem(label, None, "presence", "must be an array of [[presence]] tables"))
        raw_presence = []
    sites = []
    for number, raw in enumerate(raw_presence):
        try:
            sites.append(PresenceSite.model_validate(raw))
        except ValidationError as exc:
            problems.extend(_problems(label, None, f"presence[{number}]", exc))
    presence = tuple(sites)

    admin_classes = admin.get("classes", {})
    if not isinstance(admin_classes, dict):
        problems.append(Problem(label, None, "classes", "must be a table of [classes.NAME]"))
        admin_classes = {}

    pack_raw: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in (p for p in pack_list if p in PACK_ORDER):
        raw = _read_pack_raw(name)
        for cls_name, cls_raw in raw.get("classes", {}).items():
            pack_raw[cls_name] = (f"<pack {name}>", cls_raw)

    merged: dict[str, ClassRule] = {}
    ordered = [n for n in admin_classes if n not in pack_raw] + list(pack_raw)
    for cls_name in ordered:
        source, base = pack_raw.get(cls_name, (label, {}))
        override = admin_classes.get(cls_name, {})
        if not isinstance(override, dict):
            problems.append(Problem(label, cls_name, None, "must be a table"))
            continue
        where = label if cls_name in admin_classes else source
        try:
            merged[cls_name] = ClassRule.model_validate({**base, **override})
        except ValidationError as exc:
            problems.extend(_problems(where, cls_name, None, exc))

    try:
        # Class names are checked by the document model (one place for the naming rule).
        RulesDocument.model_validate({"classes": merged})
    except ValidationError as exc:
        problems.extend(_problems(label, None, "classes", exc))

    problems.extend(_public_suffix_problems(label, admin_classes, merged))

    for site in presence:
        for cls_name in site.classes:
            if cls_name not in merged:
                problems.append(
                    Problem(label, None, "presence.classes", f"unknown class {cls_name!r}")
                )

    if problems:
        raise RulesError(problems)
    sources = tuple(f"pack:{p}" for p in pack_list) + ((label,) if path is not None else ())
    return compile_rules(merged, settings, presence, sources)


def _public_suffix_problems(
    label: str, admin_classes: dict[str, Any], merged: dict[str, ClassRule]
) -> list[Problem]:
    """`*.co.uk` would trust every domain anyone can register there. Checked for the hosts the
    admin wrote (the packs' are checked by the test suite), so the Public Suffix List is read
    only when such a pattern exists."""
    out: list[Problem] = []
    for cls_name, override in admin_classes.items():
        rule = merged.get(cls_name)
        if rule is None or not isinstance(override, dict) or "hosts" not in override:
            continue
        for pattern in rule.hosts:
            if pattern.startswith("*.") and is_public_suffix(pattern[2:]):
                out.append(
                    Problem(
                        label,
                        cls_name,
                        "hosts",
                        f"{pattern!r}: {pattern[2:]!r} is a public suffix (anyone can register "
                        "names under it); list the organisation's own domain instead",
                    )
                )
    return out


def _problems(
    file: str, rule: str | None, prefix: str | None, exc: ValidationError
) -> list[Problem]:
    out = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        field = ".".join(x for x in (prefix, loc) if x) or None
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (typo?)"
        out.append(Problem(file, rule, field, message))
    return out
