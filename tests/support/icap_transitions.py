"""Every state change of `IcapConnection` checked against the transitions table of
icap_service/_state.py, while a test runs.

The fixture ``checked_transitions`` replaces, on the class for the duration of one test, the
three state attributes (``_their``, ``_ours``, ``_chunk``) by properties that record each
assignment, together with the public method in progress, and fail the test on any move the
table does not list. The connection's own code is unchanged: its hot path keeps plain
attribute assignments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from patchcache.icap_service._connection import IcapConnection
from patchcache.icap_service._state import CHUNK, OURS, THEIR, TRANSITIONS, Transition

_SIDES = {"_their": THEIR, "_ours": OURS, "_chunk": CHUNK}
# The public methods of IcapConnection that may move a state; the one in progress is a move's
# trigger. (Properties only read states.)
PUBLIC_METHODS = (
    "receive_data",
    "next_event",
    "close_after_response",
    "send_options",
    "send_continue",
    "send_no_content",
    "send_partial_content",
    "send_response",
    "send_body",
    "send_end",
    "send_error",
)
_TRIGGER = "_test_trigger"


def _recording_state(attribute: str, side: str, seen: set[Transition]) -> property:
    def get(conn: IcapConnection) -> str:
        value: str = vars(conn)[attribute]
        return value

    def set_(conn: IcapConnection, target: str) -> None:
        state = vars(conn)
        source = state.get(attribute)
        state[attribute] = target
        if source is None:  # the first assignment, in __init__
            return
        move = Transition(side, source, target, state.get(_TRIGGER, "(no public call)"))
        assert move in TRANSITIONS, f"{move} is not in icap_service._state.TRANSITIONS"
        seen.add(move)

    return property(get, set_)


def _tracking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(conn: IcapConnection, *args: Any, **kwargs: Any) -> Any:
        state = vars(conn)
        outer = state.get(_TRIGGER)
        state[_TRIGGER] = name if outer is None else outer
        try:
            return method(conn, *args, **kwargs)
        finally:
            if outer is None:
                del state[_TRIGGER]

    return call


@pytest.fixture
def checked_transitions(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[Transition]]:
    """Check every move of every IcapConnection in the test against TRANSITIONS; yields the
    set of moves made so far."""
    seen: set[Transition] = set()
    for attribute, side in _SIDES.items():
        monkeypatch.setattr(
            IcapConnection, attribute, _recording_state(attribute, side, seen), raising=False
        )
    for name in PUBLIC_METHODS:
        monkeypatch.setattr(IcapConnection, name, _tracking(name, getattr(IcapConnection, name)))
    yield seen
