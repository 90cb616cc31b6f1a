"""The states of an ICAP connection, and the table of the transitions between them.

Two sides, as in h11: `Their` is the client's request, `Ours` our response to it. `Chunk` is
where the chunked-body reader is inside a body. `IcapConnection` (_connection.py) moves between
these states with plain assignments on its hot path; `TRANSITIONS` lists every move it may make
and what triggers it, and a test drives every flow of the protocol tests through a connection
that checks each move against the table.
"""

from __future__ import annotations

from typing import Final

# The states below are plain string constants, not enum.Enum members: reading an Enum member
# costs about 120 ns on Python 3.11 (a class attribute about 20 ns), and the state machine reads
# them dozens of times per request.


class Their:
    """States of the client's side of the current request."""

    IDLE: Final = "idle"  # waiting for a request head
    HEAD_DONE: Final = "head-done"  # RequestHead emitted, null body: EndOfMessage next
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
