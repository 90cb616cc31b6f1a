"""What the prefetcher may fetch, and when to try again. Pure decisions, no I/O.

Never an open relay: the queue lives in a directory several programs write to, so a job's URL is
not trusted. Before every fill the URL is matched against the rules again, and the fill goes
ahead only if a class matches it, that class allows prefetching, and the key the rules compute
is the job's key. A job that fails this is parked with the reason, never fetched.
"""

from __future__ import annotations

from patchcache.errors import PatchcacheError
from patchcache.rules import CompiledRules, Match


class RelayRefused(PatchcacheError):
    """The URL is not one the prefetcher may fetch (the message says why)."""

    status_hint = 403


def admit_url(rules: CompiledRules, url: str) -> Match:
    """The match for `url` if some class allows prefetching it, else RelayRefused."""
    match = rules.match(url)
    if match is None:
        raise RelayRefused(f"{url!r} matches no class")
    if not match.cls.rule.prefetch:
        raise RelayRefused(f"class {match.cls.name} does not allow prefetching")
    if not match.cls.rule.cache:
        raise RelayRefused(f"class {match.cls.name} is not cached")
    return match


def admit_job(rules: CompiledRules, url: str, key: str) -> Match:
    """`admit_url`, and the rules' key for `url` must be the job's `key`."""
    match = admit_url(rules, url)
    if match.key != key:
        raise RelayRefused(f"the rules map {url!r} to key {match.key!r}, not the job's {key!r}")
    return match


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number `attempt` (1 after the first failure): base * 2^(attempt-1),
    at most `cap`."""
    if attempt < 1:
        attempt = 1
    if base <= 0:
        return 0.0
    # Bound the exponent so a large attempt count cannot overflow the float.
    return float(min(cap, base * 2 ** min(attempt - 1, 60)))
