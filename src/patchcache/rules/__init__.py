"""Rules: classes of update content, validated once and compiled into an immutable matcher."""

from patchcache.rules.compiled import CompiledClass, CompiledRules, Explanation, Match
from patchcache.rules.loader import Problem, RulesError, load_pack, load_rules, pack_names

__all__ = [
    "CompiledClass",
    "CompiledRules",
    "Explanation",
    "Match",
    "Problem",
    "RulesError",
    "load_pack",
    "load_rules",
    "pack_names",
]
