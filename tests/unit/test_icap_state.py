"""The transitions table of the ICAP connection (icap_service/_state.py) against the code.

tests/support/icap_transitions.py fails any test in which a connection makes a move the table
does not list (test_icap_protocol.py runs every flow under it). Here, the other direction: an
exhaustive exploration of the responses to a set of requests makes every move the table lists,
so the table holds no move the code cannot make.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from patchcache.errors import ProtocolError
from patchcache.icap_service._state import OURS, TRANSITIONS, Ours, Their, Transition
from patchcache.icap_service.protocol import (
    NEED_DATA,
    BodyKind,
    ConnectionClosed,
    IcapConnection,
    OptionsReply,
)

ISTAG = '"t1"'
REQ = b"GET http://wu.example/a.cab HTTP/1.1\r\nHost: wu.example\r\n\r\n"
RES = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def icap(method: str, fields: list[str], encapsulated: bytes = b"") -> bytes:
    head = f"{method} icap://127.0.0.1:1344/x ICAP/1.0\r\nHost: 127.0.0.1\r\n"
    return (head + "".join(f + "\r\n" for f in fields) + "\r\n").encode() + encapsulated


def respmod(fields: list[str], body: bytes | None) -> bytes:
    end = len(REQ) + len(RES)
    last = f"res-body={end}" if body is not None else f"null-body={end}"
    encapsulated = f"Encapsulated: req-hdr=0, res-hdr={len(REQ)}, {last}"
    return icap("RESPMOD", [*fields, encapsulated], REQ + RES + (body or b""))


ALLOW = "Allow: 204, 206"
BODY = b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
PREVIEW = b"0\r\n\r\n3\r\ncde\r\n0\r\n\r\n"  # Preview: 0, as Squid sends it
OPTIONS_PREVIEW = icap(
    "OPTIONS", ["Preview: 0", "Encapsulated: opt-body=0"], b"0\r\n\r\n1\r\nx\r\n0\r\n\r\n"
)
REQUESTS = {
    "null-body": respmod([ALLOW], None),
    "body": respmod([ALLOW], BODY),
    "preview": respmod([ALLOW, "Preview: 0"], PREVIEW),
    "preview ieof": respmod([ALLOW, "Preview: 5"], b"2\r\nab\r\n0; ieof\r\n\r\n"),
    "options": icap("OPTIONS", []),
    "options with a preview": OPTIONS_PREVIEW,
    "close": respmod([ALLOW, "Connection: close"], BODY),
    "bad head": b"RESPMOD icap://x/y ICAP/1.0\r\nno colon\r\n\r\n",
    "bad chunk": respmod([ALLOW], b"zz\r\n"),
    "bad chunk after a preview": respmod([ALLOW, "Preview: 2"], b"2\r\nab\r\n0\r\n\r\nzz\r\n"),
}

Action = Callable[[IcapConnection], object]
ACTIONS: dict[str, Action] = {
    "nothing": lambda conn: None,
    "continue": lambda conn: conn.send_continue(),
    "204": lambda conn: conn.send_no_content(ISTAG),
    "206": lambda conn: conn.send_partial_content(ISTAG, res_hdr=RES),
    "options": lambda conn: conn.send_options(OptionsReply(methods=("RESPMOD",), istag=ISTAG)),
    "200": lambda conn: conn.send_response(ISTAG, res_hdr=RES),
    "200 with a body": lambda conn: conn.send_response(ISTAG, res_hdr=RES, body=BodyKind.RES_BODY),
    "body and end": lambda conn: (conn.send_body(b"x"), conn.send_end()),
    "500": lambda conn: conn.send_error(500),
    "close after": lambda conn: conn.close_after_response(),
}


def run(data: bytes, script: list[str]) -> bool:
    """Feed ``data`` twice then EOF, taking the actions of ``script`` in turn at each point where
    a response may be sent; True if the script ran out before the connection finished."""
    conn = IcapConnection()
    conn.receive_data(data + data)
    conn.receive_data(b"")
    step = 0
    for _ in range(100):  # bounded: a run has a few dozen events at most
        try:
            event = conn.next_event()
        except ProtocolError:
            conn.send_error(400)
            conn.send_error(400)  # a second one changes nothing: the connection is closing
            with pytest.raises(ProtocolError):
                conn.next_event()
            return False
        if event is NEED_DATA or isinstance(event, ConnectionClosed) or conn.must_close:
            return False
        if not conn.awaiting_response:
            continue
        if step == len(script):
            return True
        action = script[step]
        step += 1
        # An action not allowed now raises RuntimeError before it changes anything.
        with contextlib.suppress(RuntimeError):
            ACTIONS[action](conn)
        if conn.must_close:
            return False
    raise AssertionError("the run did not end")


def test_every_move_of_the_table_is_made(checked_transitions: set[Transition]) -> None:
    # Depth-first over every sequence of up to 3 actions per request: small enough to run in
    # about a second, deep enough for every move (continue, 200 with a body, end, error).
    for data in REQUESTS.values():
        pending: list[list[str]] = [[]]
        while pending:
            script = pending.pop()
            if run(data, script) and len(script) < 3:
                pending.extend([*script, action] for action in ACTIONS)
    assert TRANSITIONS - checked_transitions == set()


def test_a_move_outside_the_table_fails(checked_transitions: set[Transition]) -> None:
    conn = IcapConnection()
    with pytest.raises(AssertionError, match="not in"):
        conn._ours = Ours.SENDING_BODY  # from IDLE, and outside any public call
    assert Transition(OURS, Ours.IDLE, Ours.WAIT, "next_event") in TRANSITIONS


def test_every_state_is_in_the_table() -> None:
    states = {(t.side, t.source) for t in TRANSITIONS} | {(t.side, t.target) for t in TRANSITIONS}
    for side, cls in (("their", Their), ("ours", Ours)):
        names = {value for name, value in vars(cls).items() if name.isupper()}
        assert {state for s, state in states if s == side} == names
