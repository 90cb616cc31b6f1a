"""The key-scheme guard, run by every service at start: rules in, retirements out.

`patchcache.rules.keyscheme` says what a class's key scheme is; `StateStore.apply_key_schemes`
retires the records of classes whose scheme changed (`patchcache.state.keyschemes`). This module
joins the two so that the rules and the state stay independent of each other.
"""

from __future__ import annotations

from collections.abc import Callable

from patchcache.rules import CompiledRules
from patchcache.rules.keyscheme import fingerprint, scheme_fields
from patchcache.state import ClassScheme, StateStore
from patchcache.state.keyschemes import describe


def class_schemes(rules: CompiledRules) -> dict[str, ClassScheme]:
    """The key scheme and size limit of every enabled class of `rules`, by class name."""
    out: dict[str, ClassScheme] = {}
    for cls in rules.classes:
        fields = scheme_fields(cls.rule)
        out[cls.name] = ClassScheme(fingerprint(fields), fields, cls.rule.max_object_size)
    return out


def guard_key_schemes(
    store: StateStore,
    rules: CompiledRules,
    warn: Callable[[str], None],
    *,
    now: float | None = None,
) -> None:
    """Apply the guard; `warn` gets one line for retired classes and one for re-judged limits,
    nothing when nothing changed. Raises `StateError` if the state cannot be updated: the caller
    must then not expand or prefetch from this state."""
    events = store.apply_key_schemes(class_schemes(rules), now=now)
    for line in describe(events, store.location):
        warn(line)
