"""The states of an ICAP connection, and the table of the transitions between them.

Two sides, as in h11: `Their` is the client's request, `Ours` our response to it. `Chunk` is
where the chunked-body reader is inside a body. `IcapConnection` (_connection.py) moves between
these states with plain assignments on its hot path; `TRANSITIONS` lists every move it may make
and what triggers it, and a test drives every flow of the protocol tests through a connection
that checks each move against the table.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# The states below are plain string constants, not enum.Enum members: reading an Enum member
# costs about 120 ns on Python 3.11 (a class attribute about 20 ns), and the state machine reads
# them dozens of times per request.


class Their:
    """States of the client's side of the current request."""

    IDLE: Final = "idle"  # waiting for a request head
    HEAD_DONE: Final = "head-done"  # nothing left to read (null body, or ieof): EndOfMessage next
    BODY: Final = "body"  # reading chunks
    PREVIEW_WAIT: Final = "preview-wait"  # preview ended without ieof: waiting for 100 or final
    DONE: Final = "done"  # request complete, waiting for our response to finish
    ERROR: Final = "error"
    CLOSED: Final = "closed"


class Ours:
    """States of our side: the response to the current request."""

    IDLE: Final = "idle"
    WAIT: Final = "wait"  # request head seen, nothing sent
    CONTINUED: Final = "continued"  # 100 Continue sent
    SENDING_BODY: Final = "sending-body"  # 200 head with a body sent, chunks follow
    DONE: Final = "done"
    MUST_CLOSE: Final = "must-close"


class Chunk:
    """Where the chunked-body reader is."""

    SIZE: Final = "size"
    DATA: Final = "data"
    CRLF: Final = "crlf"
    TRAILER: Final = "trailer"


# --------------------------------------------------------------------------------------------
# The transitions
# --------------------------------------------------------------------------------------------

THEIR: Final = "their"
OURS: Final = "ours"
CHUNK: Final = "chunk"


class Transition(NamedTuple):
    """One move of one side: from ``source`` to ``target``, made during the `IcapConnection`
    method ``trigger`` (the public call in progress: the events it returns and the responses it
    sends are what move the states)."""

    side: str
    source: str
    target: str
    trigger: str


# The send_* methods that complete our response while it waits (WAIT or CONTINUED), and with
# send_end (which ends a 200's body) every method that may complete it.
_ENDS = ("send_options", "send_no_content", "send_partial_content", "send_response", "send_error")
_FINAL = (*_ENDS, "send_end")
_NEXT = "next_event"


def _moves(side: str, source: str, target: str, *triggers: str) -> set[Transition]:
    return {Transition(side, source, target, trigger) for trigger in triggers}


# Every move IcapConnection makes, and nothing else: tests/unit/test_icap_state.py makes each
# one, and the protocol tests check every move of every flow against this table. When both
# sides are done the connection starts the next cycle (both back to IDLE) or must close: that
# happens in whichever call completed the second side.
TRANSITIONS: Final[frozenset[Transition]] = frozenset(
    # The client's request.
    _moves(THEIR, Their.IDLE, Their.HEAD_DONE, _NEXT)  # RequestHead, null-body
    | _moves(THEIR, Their.IDLE, Their.BODY, _NEXT)  # RequestHead with a body
    | _moves(THEIR, Their.IDLE, Their.CLOSED, _NEXT)  # ConnectionClosed: EOF between requests
    | _moves(THEIR, Their.IDLE, Their.ERROR, _NEXT)  # ProtocolError in a head
    | _moves(THEIR, Their.BODY, Their.PREVIEW_WAIT, _NEXT)  # PreviewEnd without ieof
    | _moves(THEIR, Their.BODY, Their.HEAD_DONE, _NEXT)  # PreviewEnd with ieof
    # EndOfMessage, or the end of a body skipped after our early final response.
    | _moves(THEIR, Their.BODY, Their.DONE, _NEXT)
    | _moves(THEIR, Their.BODY, Their.ERROR, _NEXT)  # ProtocolError in a body
    | _moves(THEIR, Their.ERROR, Their.ERROR, _NEXT)  # next_event after a ProtocolError
    | _moves(THEIR, Their.PREVIEW_WAIT, Their.BODY, "send_continue")
    # A final response to a preview: the client sends no more of that body.
    | _moves(THEIR, Their.PREVIEW_WAIT, Their.DONE, *_FINAL)
    # EndOfMessage; or our final response, after which that marker is dropped.
    | _moves(THEIR, Their.HEAD_DONE, Their.DONE, _NEXT, *_FINAL)
    | _moves(THEIR, Their.DONE, Their.IDLE, _NEXT, *_FINAL)  # next cycle
    # Our response.
    | _moves(OURS, Ours.IDLE, Ours.WAIT, _NEXT)  # RequestHead
    | _moves(OURS, Ours.WAIT, Ours.CONTINUED, "send_continue")
    | _moves(OURS, Ours.WAIT, Ours.DONE, *_ENDS)
    | _moves(OURS, Ours.CONTINUED, Ours.DONE, *_ENDS)
    | _moves(OURS, Ours.WAIT, Ours.SENDING_BODY, "send_response")  # a 200 with a body
    | _moves(OURS, Ours.CONTINUED, Ours.SENDING_BODY, "send_response")
    | _moves(OURS, Ours.SENDING_BODY, Ours.DONE, "send_end")
    | _moves(OURS, Ours.DONE, Ours.IDLE, _NEXT, *_FINAL)  # next cycle
    # Both sides done without keep-alive (Connection: close, or close_after_response).
    | _moves(OURS, Ours.DONE, Ours.MUST_CLOSE, _NEXT, *_FINAL)
    # An error that no request can follow: after a ProtocolError, with no request in progress,
    # once a 200's body has started, or while the rest of a body is being skipped.
    | _moves(OURS, Ours.IDLE, Ours.MUST_CLOSE, "send_error")
    | _moves(OURS, Ours.WAIT, Ours.MUST_CLOSE, "send_error")
    | _moves(OURS, Ours.CONTINUED, Ours.MUST_CLOSE, "send_error")
    | _moves(OURS, Ours.SENDING_BODY, Ours.MUST_CLOSE, "send_error")
    | _moves(OURS, Ours.DONE, Ours.MUST_CLOSE, "send_error")
    | _moves(OURS, Ours.MUST_CLOSE, Ours.MUST_CLOSE, "send_error")
    # The chunked-body reader, inside Their.BODY.
    | _moves(CHUNK, Chunk.SIZE, Chunk.SIZE, _NEXT)  # every body starts at a size line
    | _moves(CHUNK, Chunk.SIZE, Chunk.DATA, _NEXT)  # a chunk size line, size > 0
    | _moves(CHUNK, Chunk.DATA, Chunk.CRLF, _NEXT)  # the chunk's last byte
    | _moves(CHUNK, Chunk.CRLF, Chunk.SIZE, _NEXT)
    | _moves(CHUNK, Chunk.SIZE, Chunk.TRAILER, _NEXT)  # last chunk with extensions or trailer
    | _moves(CHUNK, Chunk.TRAILER, Chunk.SIZE, _NEXT)  # the empty line after the trailer
)
