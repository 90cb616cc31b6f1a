"""Starting a helper process so that nothing at start can make it exit while Squid holds its stdin.

Squid 5.7 counts helpers that exit soon after they start and, past a few, stops itself with
"helpers are crashing too rapidly". So every problem at start (bad arguments, rules that are
missing, unreadable, a directory or invalid, a state directory that is a file or cannot be
opened, a library that fails to load) is logged in one line on stderr, which Squid writes to
cache.log, and the helper then serves anyway:

- rules not loaded: ``ERR`` to everything (Squid keeps each URL as its own key);
- rules loaded, state not opened: the plain key without ``expand=1``, always a safe answer.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from patchcache.helpers.protocol import Err, HelperRequest
from patchcache.helpers.runtime import Answer, run_helper

if TYPE_CHECKING:
    # Imported only where used: a rules library that fails to load is a start-up problem
    # like any other, answered with ERR, and must not stop this module from importing.
    from patchcache.helpers.store_id import ExpansionOracle
    from patchcache.rules import CompiledRules

__all__ = ["load_helper_rules", "open_helper_state", "run_store_id", "run_url_rewrite"]


def log_line(what: str, message: str) -> None:
    """One line on stderr (cache.log), whatever the message holds."""
    text = " ".join(message.split())
    # No stderr (closed, or None): nothing to log to, and no reason to stop answering.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(f"patchcache {what}: {text}", file=sys.stderr, flush=True)


def _refuse(_request: HelperRequest) -> Err:
    return Err()


def serve_refusals(what: str, reason: str) -> NoReturn:
    """Log why, then answer ERR to every request until Squid closes stdin."""
    log_line(what, f"{reason}; answering ERR to all")
    raise SystemExit(run_helper(_refuse))


def load_helper_rules(rules_path: str | None, what: str) -> CompiledRules | None:
    """The rules, or None after logging why they cannot be used. Never raises."""
    try:
        from patchcache.rules import load_rules

        return load_rules(Path(rules_path) if rules_path is not None else None)
    except Exception as exc:  # any failure must leave a working helper behind
        log_line(what, f"rules not loaded, answering ERR to all: {exc}")
        return None


def open_helper_state(
    state_dir: str,
    what: str,
    rules: CompiledRules | None = None,
    *,
    password_file: str | None = None,
) -> ExpansionOracle | None:
    """The state store (`state_dir` is a directory or a Redis URL), or None (no expansion,
    which is always safe) after logging why.

    With `rules`, the key-scheme guard runs first: records of classes whose key scheme changed
    since the state was built are retired, so no `expand=1` rests on stale records."""
    store = None
    try:
        from patchcache.state.open import is_directory_state, open_state

        path = Path(state_dir)
        if is_directory_state(state_dir) and path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{state_dir} is not a directory")
        store = open_state(
            state_dir, password_file=Path(password_file) if password_file is not None else None
        )
        if rules is not None:
            from patchcache.state_guard import guard_key_schemes

            guard_key_schemes(store, rules, lambda line: log_line(what, f"warning: {line}"))
        return store
    except Exception as exc:  # any failure must leave a working helper behind
        if store is not None:
            store.close()
        log_line(what, f"state dir {state_dir} unusable, no expansion: {exc}")
        return None


def _serve(what: str, build: Callable[[], Answer], after_start: Callable[[], None]) -> int:
    try:
        answer = build()
    except Exception as exc:
        log_line(what, f"cannot start ({type(exc).__name__}: {exc}); answering ERR to all")
        return run_helper(_refuse)
    after_start()
    return run_helper(answer)


def run_store_id(
    rules_path: str | None,
    state_dir: str | None,
    *,
    after_start: Callable[[], None],
    password_file: str | None = None,
    head_via: str | None = None,
    head_timeout: float = 2.0,
) -> int:
    """The store-ID helper's whole life; its exit status. `head_via`: the proxy through which
    to look up the size of objects first seen without one (see helpers/head_probe.py)."""
    rules = load_helper_rules(rules_path, "store-id")
    if rules is None:
        return run_helper(_refuse)

    def build() -> Answer:
        import functools

        from patchcache.helpers.head_probe import head_facts, proxy_address
        from patchcache.helpers.store_id import HeadLookup, StoreIdAnswerer

        state = (
            open_helper_state(state_dir, "store-id", rules, password_file=password_file)
            if state_dir is not None
            else None
        )
        lookup = None
        if head_via is not None and state is not None:
            try:
                via = proxy_address(head_via)
            except ValueError as exc:
                log_line("store-id", f"no size look-ups: {exc}")
            else:
                timeout = head_timeout if 0 < head_timeout <= 60 else 2.0
                lookup = HeadLookup(functools.partial(head_facts, via, timeout=timeout))
        return StoreIdAnswerer(rules, state, lookup=lookup)

    return _serve("store-id", build, after_start)


def run_url_rewrite(rules_path: str | None, *, after_start: Callable[[], None]) -> int:
    """The URL-rewrite helper's whole life; its exit status."""
    rules = load_helper_rules(rules_path, "url-rewrite")
    if rules is None:
        return run_helper(_refuse)

    def build() -> Answer:
        from patchcache.helpers.url_rewrite import UrlRewriteAnswerer

        return UrlRewriteAnswerer(rules)

    return _serve("url-rewrite", build, after_start)
