"""ICAP protocol core: bytes in, events and reply bytes out; fed whole and one byte at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchcache.errors import ProtocolError
from patchcache.icap_service import _native, protocol
from patchcache.icap_service._encapsulated import NO_ENCAPSULATION, parse_encapsulated_python
from patchcache.icap_service.protocol import (
    NEED_DATA,
    PAUSED,
    BodyChunk,
    BodyKind,
    ConnectionClosed,
    Encapsulated,
    EndOfMessage,
    Event,
    Headers,
    IcapConnection,
    OptionsReply,
    PreviewEnd,
    RequestHead,
    edit_http_head,
    format_istag,
    parse_encapsulated,
    serialize_chunk,
    serialize_error,
    serialize_no_content,
    serialize_options,
    serialize_partial_content,
    serialize_response_head,
)

ISTAG = '"t1"'
# Every state change of every connection in these tests must be a move listed in
# icap_service/_state.py's TRANSITIONS (tests/support/icap_transitions.py).
pytestmark = pytest.mark.usefixtures("checked_transitions")


@pytest.fixture(autouse=True, params=["native", "python"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the native head scanner (_scan.c) and with the pure-Python
    reference: both must give the same events, replies and errors."""
    if request.param == "python":
        for name in _native.SCANNER_FUNCTIONS:
            monkeypatch.setattr(_native, name, None)
    elif _native.scanner is None:
        pytest.skip("native scanner not built")
    return str(request.param)


REQ = b"GET http://wu.example/a.cab HTTP/1.1\r\nHost: wu.example\r\nRange: bytes=0-99\r\n\r\n"
RES = (
    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/1000\r\nContent-Length: 100\r\n\r\n"
)


def icap(
    method: str, headers: list[str], encapsulated: bytes = b"", path: str = "respmod"
) -> bytes:
    head = f"{method} icap://127.0.0.1:1344/{path} ICAP/1.0\r\nHost: 127.0.0.1\r\n"
    return (head + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + encapsulated


def respmod(extra: list[str], body: bytes | None, req: bytes = REQ, res: bytes = RES) -> bytes:
    last = (
        f"res-body={len(req) + len(res)}"
        if body is not None
        else f"null-body={len(req) + len(res)}"
    )
    enc = f"Encapsulated: req-hdr=0, res-hdr={len(req)}, {last}"
    return icap("RESPMOD", [*extra, enc], req + res + (body or b""))


def reqmod(extra: list[str], body: bytes | None, req: bytes = REQ, path: str = "reqmod") -> bytes:
    last = f"req-body={len(req)}" if body is not None else f"null-body={len(req)}"
    return icap("REQMOD", [*extra, f"Encapsulated: req-hdr=0, {last}"], req + (body or b""), path)


OPTIONS = icap("OPTIONS", [])
SQUID_PREVIEW0 = respmod(["Allow: 204, 206", "Preview: 0"], b"0\r\n\r\n")

# ------------------------------------------------------------------------------------------------
# Driving a connection: a responder policy reacts to events; output is what we would write.
# ------------------------------------------------------------------------------------------------

Responder = Callable[[IcapConnection, Event], bytes]


def answer_204(conn: IcapConnection, event: Event) -> bytes:
    """Options for OPTIONS; 204 as soon as it is allowed (preview end or request end)."""
    head = conn.request
    if head is None or not conn.awaiting_response:
        return b""
    if isinstance(event, RequestHead) and head.method == "OPTIONS":
        return conn.send_options(OptionsReply(methods=("RESPMOD",), istag=ISTAG))
    if isinstance(event, PreviewEnd | EndOfMessage) and conn.can_send_no_content:
        return conn.send_no_content(ISTAG)
    return b""


def answer_at_head(status: int) -> Responder:
    def respond(conn: IcapConnection, event: Event) -> bytes:
        if isinstance(event, RequestHead):
            if status == 204:
                return conn.send_no_content(ISTAG)
            return conn.send_error(status)
        return b""

    return respond


def answer_continue(conn: IcapConnection, event: Event) -> bytes:
    """100 Continue after a preview, then 204 at the end (Allow: 204 in the tests using it)."""
    if isinstance(event, PreviewEnd) and not event.ieof:
        return conn.send_continue()
    return answer_204(conn, event)


def merge_chunks(events: list[Event]) -> list[Event]:
    """Byte-at-a-time feeding splits chunk data: merge adjacent BodyChunks for comparison."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, BodyChunk) and isinstance(last, BodyChunk) and not event.extensions:
            merged[-1] = BodyChunk(last.data + event.data, last.extensions)
        else:
            merged.append(event)
    return merged


def drive(
    data: bytes, responder: Responder, *, bytewise: bool, eof: bool = False, **limits: int
) -> tuple[list[Event], bytes, IcapConnection]:
    conn = IcapConnection(**limits)
    events: list[Event] = []
    out = bytearray()
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    if eof:
        pieces.append(b"")
    for piece in pieces:
        conn.receive_data(piece)
        for _ in range(10_000):  # bounded: far more events than any case produces
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            events.append(event)
            out += responder(conn, event)
            if isinstance(event, ConnectionClosed):
                break
    return merge_chunks(events), bytes(out), conn


FEEDS = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    name: str
    data: bytes
    responder: Responder
    events: list[str]
    replies: list[bytes]  # status lines expected in the output, in order


NO_CONTENT = b"ICAP/1.0 204 No Content"
FLOWS = [
    # Answering at the head consumes the rest of that request silently (no EndOfMessage).
    Flow("options", OPTIONS, answer_204, ["RequestHead"], [b"ICAP/1.0 200 OK"]),
    Flow(
        "options null-body",
        icap("OPTIONS", ["Encapsulated: null-body=0"]),
        answer_204,
        ["RequestHead"],
        [b"ICAP/1.0 200 OK"],
    ),
    Flow(
        "squid preview 0, twice on one connection",
        SQUID_PREVIEW0 + SQUID_PREVIEW0,
        answer_204,
        ["RequestHead", "PreviewEnd", "RequestHead", "PreviewEnd"],
        [NO_CONTENT, NO_CONTENT],
    ),
    Flow(
        "preview with ieof",
        respmod(["Preview: 10"], b"5\r\nhello\r\n0; ieof\r\n\r\n") + OPTIONS,
        answer_204,
        ["RequestHead", "BodyChunk", "PreviewEnd", "RequestHead"],
        [NO_CONTENT, b"ICAP/1.0 200 OK"],
    ),
    Flow(
        "preview, 100 continue, rest of body",
        respmod(["Preview: 2", "Allow: 204"], b"2\r\nhe\r\n0\r\n\r\n")
        + b"3\r\nllo\r\n0\r\n\r\n"
        + OPTIONS,
        answer_continue,
        ["RequestHead", "BodyChunk", "PreviewEnd", "BodyChunk", "EndOfMessage", "RequestHead"],
        [b"ICAP/1.0 100 Continue", NO_CONTENT, b"ICAP/1.0 200 OK"],
    ),
    Flow(
        "reqmod null-body",
        reqmod(["Allow: 204"], None) + OPTIONS,
        answer_204,
        ["RequestHead", "EndOfMessage", "RequestHead"],
        [NO_CONTENT, b"ICAP/1.0 200 OK"],
    ),
    Flow(
        "reqmod body without preview, chunk extensions and trailers",
        reqmod(["Allow: 204"], b'3; name="v"; flag\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n'),
        answer_204,
        # BodyChunks are merged for comparison unless a chunk carries extensions.
        ["RequestHead", "BodyChunk", "EndOfMessage"],
        [NO_CONTENT],
    ),
    Flow(
        "early 204 skips the body, next request still parsed",
        respmod(["Allow: 204"], b"a\r\n0123456789\r\n0\r\n\r\n") + SQUID_PREVIEW0,
        answer_at_head(204),
        ["RequestHead", "RequestHead"],
        [NO_CONTENT, NO_CONTENT],
    ),
    Flow(
        "404 during a preview skips to the next request",
        respmod(["Preview: 4"], b"4\r\nabcd\r\n0\r\n\r\n") + SQUID_PREVIEW0,
        answer_at_head(404),
        ["RequestHead", "RequestHead"],
        [b"ICAP/1.0 404 ICAP Service Not Found", b"ICAP/1.0 404"],
    ),
    Flow(
        "stray CRLF between requests",
        b"\r\n" + OPTIONS + b"\r\n" + OPTIONS,
        answer_204,
        ["RequestHead", "RequestHead"],
        [b"ICAP/1.0 200 OK", b"ICAP/1.0 200 OK"],
    ),
]


@FEEDS
@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_flows(flow: Flow, bytewise: bool) -> None:
    events, out, conn = drive(flow.data, flow.responder, bytewise=bytewise)
    assert kinds(events) == flow.events
    replies = [line for line in out.split(b"\r\n") if line.startswith(b"ICAP/1.0 ")]
    assert len(replies) == len(flow.replies)
    for reply, expected in zip(replies, flow.replies, strict=True):
        assert reply.startswith(expected)
    assert conn.idle
    assert not conn.must_close


@FEEDS
def test_squid_respmod_head_is_parsed(bytewise: bool) -> None:
    events, _, _ = drive(SQUID_PREVIEW0, answer_204, bytewise=bytewise)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.service, head.query, head.version) == (
        "RESPMOD",
        "/respmod",
        "",
        "ICAP/1.0",
    )
    assert head.preview == 0 and head.allow_204 and head.allow_206 and head.keep_alive
    assert head.encapsulated == Encapsulated(0, len(REQ), BodyKind.RES_BODY, len(REQ) + len(RES))
    assert head.http_request is not None and head.http_response is not None
    assert head.http_request.raw == REQ
    assert (head.http_request.method, head.http_request.target) == (
        "GET",
        "http://wu.example/a.cab",
    )
    assert head.http_request.headers.get("range") == "bytes=0-99"
    assert head.http_response.status == 206 and head.http_response.reason == "Partial Content"
    assert head.http_response.headers.get("CONTENT-RANGE") == "bytes 0-99/1000"
    assert head.headers.get("host") == "127.0.0.1"
    assert events[1] == PreviewEnd(ieof=False)


@FEEDS
def test_chunk_data_and_extensions(bytewise: bool) -> None:
    data = reqmod(["Allow: 204"], b'3; name="v"; flag\r\nabc\r\n0\r\n\r\n')
    events, _, _ = drive(data, answer_204, bytewise=bytewise)
    assert events[1] == BodyChunk(b"abc", (("name", "v"), ("flag", None)))


def test_query_and_bare_path() -> None:
    events, _, _ = drive(
        b"OPTIONS icap://h/svc?mode=x ICAP/1.0\r\n\r\nOPTIONS /other ICAP/1.0\r\n\r\n",
        answer_204,
        bytewise=False,
    )
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [(h.service, h.query) for h in heads] == [("/svc", "mode=x"), ("/other", "")]


@FEEDS
def test_connection_close_is_honoured(bytewise: bool) -> None:
    data = respmod(["Preview: 0", "Connection: close"], b"0\r\n\r\n") + OPTIONS
    events, out, conn = drive(data, answer_204, bytewise=bytewise)
    assert kinds(events) == ["RequestHead", "PreviewEnd"]  # the second request is never read
    assert b"Connection: close\r\n" in out
    assert conn.must_close


def test_eof_between_requests_is_connection_closed() -> None:
    events, _, _ = drive(OPTIONS, answer_204, bytewise=False, eof=True)
    assert kinds(events) == ["RequestHead", "ConnectionClosed"]


def test_paused_until_we_answer() -> None:
    conn = IcapConnection()
    conn.receive_data(SQUID_PREVIEW0 + OPTIONS)
    assert isinstance(conn.next_event(), RequestHead)
    assert conn.next_event() == PreviewEnd(ieof=False)
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    conn.send_no_content(ISTAG)
    head = conn.next_event()
    assert isinstance(head, RequestHead) and head.method == "OPTIONS"


def test_echo_response_streams_while_body_arrives() -> None:
    conn = IcapConnection()
    conn.receive_data(respmod(["Preview: 0"], b"0\r\n\r\n"))
    head = conn.next_event()
    assert isinstance(head, RequestHead)
    assert conn.next_event() == PreviewEnd(ieof=False)
    out = conn.send_continue()
    out += conn.send_response(ISTAG, res_hdr=RES, body=BodyKind.RES_BODY)
    assert conn.response_started
    conn.receive_data(b"4\r\nabcd\r\n0\r\n\r\n")
    chunk = conn.next_event()
    assert chunk == BodyChunk(b"abcd")
    out += conn.send_body(b"abcd")
    assert conn.next_event() == EndOfMessage()
    out += conn.send_end()
    assert out.endswith(b"\r\n\r\n" + RES + b"4\r\nabcd\r\n0\r\n\r\n")
    assert conn.idle


def test_large_chunk_arrives_in_pieces() -> None:
    conn = IcapConnection()
    conn.receive_data(reqmod(["Allow: 204"], b"100000\r\n"))
    assert isinstance(conn.next_event(), RequestHead)
    got = 0
    for _ in range(64):
        conn.receive_data(b"x" * 16384)
        event = conn.next_event()
        assert isinstance(event, BodyChunk)
        got += len(event.data)
        assert conn.next_event() is NEED_DATA
    assert got == 0x100000
    conn.receive_data(b"\r\n0\r\n\r\n")
    assert conn.next_event() == EndOfMessage()


# ------------------------------------------------------------------------------------------------
# Malformed input -> ProtocolError with the status to answer with
# ------------------------------------------------------------------------------------------------

BAD = [
    ("garbage line", b"HELLO\r\n\r\n", 400),
    ("two spaces", b"OPTIONS  icap://h/x ICAP/1.0\r\n\r\n", 400),
    ("wrong version", b"OPTIONS icap://h/x ICAP/2.0\r\n\r\n", 505),
    ("http version", b"OPTIONS icap://h/x HTTP/1.1\r\n\r\n", 400),
    ("unknown method", b"LOG icap://h/x ICAP/1.0\r\n\r\n", 501),
    ("bad uri", b"OPTIONS http://h/x ICAP/1.0\r\n\r\n", 400),
    ("uri without host", b"OPTIONS icap:///x ICAP/1.0\r\n\r\n", 400),
    ("header without colon", b"OPTIONS icap://h/x ICAP/1.0\r\nHost h\r\n\r\n", 400),
    ("obs-fold", b"OPTIONS icap://h/x ICAP/1.0\r\nA: b\r\n c\r\n\r\n", 400),
    ("space in name", b"OPTIONS icap://h/x ICAP/1.0\r\nA b: c\r\n\r\n", 400),
    ("respmod without encapsulated", icap("RESPMOD", ["Allow: 204"]), 400),
    ("encapsulated not a number", icap("RESPMOD", ["Encapsulated: res-hdr=x, null-body=1"]), 400),
    ("encapsulated no body", icap("RESPMOD", ["Encapsulated: res-hdr=0"]), 400),
    (
        "encapsulated body not last",
        icap("RESPMOD", ["Encapsulated: null-body=0, res-hdr=5"]),
        400,
    ),
    (
        "encapsulated decreasing",
        icap("RESPMOD", ["Encapsulated: req-hdr=0, res-hdr=10, res-body=5"]),
        400,
    ),
    ("encapsulated not at 0", icap("RESPMOD", ["Encapsulated: res-hdr=3, null-body=9"]), 400),
    ("encapsulated lone body not at 0", icap("RESPMOD", ["Encapsulated: null-body=4"]), 400),
    (
        "res-hdr before req-hdr",
        icap("RESPMOD", ["Encapsulated: res-hdr=0, req-hdr=10, null-body=20"]),
        400,
    ),
    ("res-body in reqmod", icap("REQMOD", ["Encapsulated: req-hdr=0, res-body=10"]), 400),
    ("unknown entry", icap("RESPMOD", ["Encapsulated: foo-hdr=0, null-body=3"]), 400),
    (
        "two encapsulated headers",
        icap("OPTIONS", ["Encapsulated: null-body=0", "Encapsulated: null-body=0"]),
        400,
    ),
    ("bad preview", respmod(["Preview: -1"], b"0\r\n\r\n"), 400),
    ("preview too big", respmod(["Preview: 99999999"], b"0\r\n\r\n"), 400),
    ("more bytes than preview", respmod(["Preview: 2"], b"3\r\nabc\r\n0\r\n\r\n"), 400),
    ("bad chunk size", reqmod([], b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("empty chunk size", reqmod([], b"\r\nabc\r\n0\r\n\r\n"), 400),
    ("huge chunk size", reqmod([], b"1000000000000000\r\n"), 400),
    ("chunk without crlf", reqmod([], b"3\r\nabcX\r\n0\r\n\r\n"), 400),
    ("bad chunk extension", reqmod([], b"3; =x\r\nabc\r\n0\r\n\r\n"), 400),
    (
        "req-hdr without empty line",
        icap("REQMOD", ["Encapsulated: req-hdr=0, null-body=10"], b"GET / HTTP"),
        400,
    ),
    ("bad request line in req-hdr", reqmod([], None, req=b"GET /\r\n\r\n"), 400),
    ("bad http version in req-hdr", reqmod([], None, req=b"GET / FTP/1\r\n\r\n"), 400),
    ("bad status line", respmod([], None, res=b"HTTP/1.1 2x0 OK\r\n\r\n"), 400),
    ("bad header in res-hdr", respmod([], None, res=b"HTTP/1.1 200 OK\r\nNope\r\n\r\n"), 400),
]


@FEEDS
@pytest.mark.parametrize(
    ("data", "status"), [(d, s) for _, d, s in BAD], ids=[n for n, _, _ in BAD]
)
def test_malformed_input_raises_protocol_error(data: bytes, status: int, bytewise: bool) -> None:
    with pytest.raises(ProtocolError) as info:
        drive(data, answer_204, bytewise=bytewise, eof=True, max_preview=65536)
    assert info.value.status_hint == status


@pytest.mark.parametrize(
    "data",
    [b"OPTIONS icap://h/x ICAP/1.0\r\nHo", reqmod([], b"5\r\nab"), SQUID_PREVIEW0[:-3]],
    ids=["in head", "in body", "in last chunk"],
)
def test_eof_mid_message_is_an_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        drive(data, answer_204, bytewise=False, eof=True)


def test_head_size_limit() -> None:
    big = icap("OPTIONS", [f"X-Pad: {'a' * 2000}"])
    with pytest.raises(ProtocolError):
        drive(big, answer_204, bytewise=False, max_head_size=1024)
    # Without a terminating empty line the limit trips as soon as it is exceeded.
    conn = IcapConnection(max_head_size=1024)
    conn.receive_data(b"OPTIONS icap://h/x ICAP/1.0\r\nX: " + b"a" * 2000)
    with pytest.raises(ProtocolError):
        conn.next_event()
    huge_encapsulated = icap("RESPMOD", ["Encapsulated: res-hdr=0, null-body=5000"])
    with pytest.raises(ProtocolError):
        drive(huge_encapsulated, answer_204, bytewise=False, max_head_size=1024)


def test_connection_stays_failed_after_error() -> None:
    conn = IcapConnection()
    conn.receive_data(b"BAD\r\n\r\n")
    with pytest.raises(ProtocolError):
        conn.next_event()
    with pytest.raises(ProtocolError):
        conn.next_event()
    reply = conn.send_error(400)
    assert reply.startswith(b"ICAP/1.0 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in reply
    assert conn.must_close


# ------------------------------------------------------------------------------------------------
# Sending: state checks and exact bytes
# ------------------------------------------------------------------------------------------------


def test_misuse_is_refused() -> None:
    conn = IcapConnection()
    with pytest.raises(RuntimeError):
        conn.send_no_content(ISTAG)
    conn.receive_data(respmod([], b"0\r\n\r\n"))  # no preview, no Allow: 204
    assert isinstance(conn.next_event(), RequestHead)
    assert not conn.can_send_no_content
    with pytest.raises(RuntimeError):
        conn.send_no_content(ISTAG)
    with pytest.raises(RuntimeError):
        conn.send_continue()
    with pytest.raises(RuntimeError):
        conn.send_partial_content(ISTAG, res_hdr=RES)
    with pytest.raises(RuntimeError):
        conn.send_body(b"x")
    with pytest.raises(RuntimeError):
        conn.send_options(OptionsReply(methods=("RESPMOD",), istag=ISTAG))


def test_no_continue_after_ieof() -> None:
    conn = IcapConnection()
    conn.receive_data(respmod(["Preview: 4"], b"0; ieof\r\n\r\n"))
    assert isinstance(conn.next_event(), RequestHead)
    assert conn.next_event() == PreviewEnd(ieof=True)
    with pytest.raises(RuntimeError):
        conn.send_continue()


def test_206_after_preview() -> None:
    conn = IcapConnection()
    conn.receive_data(SQUID_PREVIEW0)
    conn.next_event()
    conn.next_event()
    new = edit_http_head(RES, [("X-Pc", "1")])
    out = conn.send_partial_content(ISTAG, res_hdr=new)
    assert out == (
        b'ICAP/1.0 206 Partial Content\r\nISTag: "t1"\r\n'
        + f"Encapsulated: res-hdr=0, res-body={len(new)}\r\n\r\n".encode()
        + new
        + b"0; use-original-body=0\r\n\r\n"
    )
    assert conn.idle


def test_reading_head_only_while_part_of_a_next_head_waits() -> None:
    conn = IcapConnection()
    assert not conn.reading_head  # nothing yet
    conn.receive_data(SQUID_PREVIEW0[:20])
    assert conn.next_event() is NEED_DATA
    assert conn.reading_head
    conn.receive_data(SQUID_PREVIEW0[20:] + OPTIONS[:10])
    assert isinstance(conn.next_event(), RequestHead)
    assert not conn.reading_head  # inside a request: not a head's business
    conn.next_event()
    assert not conn.reading_head  # our answer is due: the next head waits, but for us
    conn.send_no_content(ISTAG)
    assert conn.next_event() is NEED_DATA
    assert conn.reading_head  # ten bytes of the next head


def test_serializers_exact_bytes() -> None:
    assert serialize_no_content(ISTAG) == (
        b'ICAP/1.0 204 No Content\r\nISTag: "t1"\r\nEncapsulated: null-body=0\r\n\r\n'
    )
    assert serialize_no_content(ISTAG, close=True).endswith(b"Connection: close\r\n\r\n")
    assert serialize_error(404, close=False) == (
        b"ICAP/1.0 404 ICAP Service Not Found\r\nEncapsulated: null-body=0\r\n\r\n"
    )
    assert serialize_error(505, istag=ISTAG) == (
        b"ICAP/1.0 505 ICAP Version Not Supported By Server\r\n"
        b'ISTag: "t1"\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n'
    )
    head = serialize_response_head(200, ISTAG, req_hdr=REQ, res_hdr=RES, body=BodyKind.RES_BODY)
    assert head == (
        b'ICAP/1.0 200 OK\r\nISTag: "t1"\r\n'
        + f"Encapsulated: req-hdr=0, res-hdr={len(REQ)}, res-body={len(REQ) + len(RES)}".encode()
        + b"\r\n\r\n"
        + REQ
        + RES
    )
    assert serialize_response_head(200, ISTAG, req_hdr=REQ).endswith(
        f"Encapsulated: req-hdr=0, null-body={len(REQ)}\r\n\r\n".encode() + REQ
    )
    assert serialize_partial_content(ISTAG, req_hdr=REQ).endswith(
        f"req-body={len(REQ)}\r\n\r\n".encode() + REQ + b"0; use-original-body=0\r\n\r\n"
    )
    assert serialize_chunk(b"hello") == b"5\r\nhello\r\n"
    assert serialize_chunk(b"") == b""


def test_options_reply() -> None:
    reply = OptionsReply(
        methods=("RESPMOD",),
        istag=ISTAG,
        service_id="respmod",
        max_connections=100,
        date="Mon, 01 Jan 2024 00:00:00 GMT",
    )
    text = serialize_options(reply).decode()
    assert text.startswith("ICAP/1.0 200 OK\r\n")
    assert text.endswith("\r\n\r\n")
    lines = dict(line.split(": ", 1) for line in text.split("\r\n")[1:] if line)
    assert lines == {
        "Methods": "RESPMOD",
        "Service": "patchcache",
        "ISTag": '"t1"',
        "Date": "Mon, 01 Jan 2024 00:00:00 GMT",
        "Options-TTL": "3600",
        "Max-Connections": "100",
        "Service-ID": "respmod",
        "Allow": "204, 206",
        "Preview": "0",
        "Transfer-Preview": "*",
        "Encapsulated": "null-body=0",
    }


def test_format_istag() -> None:
    assert format_istag("abc") == '"abc"'
    assert format_istag('"abc"') == '"abc"'
    for bad in ("", '""', "a" * 33, 'a"b', "a\r\nb"):
        with pytest.raises(ValueError):
            format_istag(bad)


def test_edit_http_head() -> None:
    out = edit_http_head(
        RES, add=[("X-New", "1"), ("Content-Length", "5")], remove=["content-length"]
    )
    assert out == (
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/1000\r\n"
        b"X-New: 1\r\nContent-Length: 5\r\n\r\n"
    )
    for name, value in (("Bad Name", "x"), ("X", "a\r\nInjected: 1"), ("X", "\u20ac")):
        with pytest.raises(ValueError):
            edit_http_head(RES, add=[(name, value)])


def test_headers_from_a_block_equal_headers_from_items() -> None:
    block = "Host: a\r\nX-A:  1 \r\nx-a: 2\r\nEmpty:\r\n"
    items = (("Host", "a"), ("X-A", "1"), ("x-a", "2"), ("Empty", ""))
    lazy = Headers._lazy(block)
    assert lazy.get("x-a") == "1" and lazy.get("EMPTY") == "" and lazy.get("nope") is None
    assert lazy == Headers(items) and lazy.items == items
    assert Headers._lazy(block).items == items  # items first, then get
    assert Headers._lazy(block).get_all("X-A") == ("1", "2")


MADE = [
    (Encapsulated, (0, 12, BodyKind.RES_BODY, 30)),
    (protocol.HttpRequestHead, (REQ, "GET", "http://wu.example/a.cab", "HTTP/1.1", Headers())),
    (protocol.HttpResponseHead, (RES, "HTTP/1.1", 206, "Partial Content", Headers())),
    (
        RequestHead,
        (
            *("RESPMOD", "icap://x/respmod", "/respmod", "", "ICAP/1.0", Headers()),
            *(NO_ENCAPSULATION, None, None, 0, True, False, True),
        ),
    ),
]


@pytest.mark.parametrize(("cls", "values"), MADE, ids=[cls.__name__ for cls, _ in MADE])
def test_makers_build_what_the_constructors_build(cls: type, values: tuple[object, ...]) -> None:
    names = tuple(field.name for field in dataclasses.fields(cls))
    made = _native.maker(cls, names)(*values)
    assert type(made) is cls and made == cls(*values) and hash(made) == hash(cls(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(names[0], None)


def test_native_build_refuses_what_is_not_a_slot() -> None:
    native = _native.scanner
    if native is None:
        pytest.skip("pure-Python run")
    slots = (Encapsulated.__dict__["req_hdr"],)
    with pytest.raises(TypeError):
        native.build(Encapsulated, slots)  # one slot, no value
    with pytest.raises(TypeError):
        native.build(Encapsulated, (Encapsulated.has_body,), 1)  # a property
    with pytest.raises(TypeError):
        native.build(RequestHead, slots, 1)  # a slot of another class
    with pytest.raises(TypeError):
        native.build(Encapsulated, [Encapsulated.__dict__["req_hdr"]], 1)  # not a tuple
    with pytest.raises(TypeError):
        native.build(slice, (slice.__dict__["start"],), 1)  # a C type (a read-only member)

    class OwnNew:
        __slots__ = ("a",)

        def __new__(cls) -> OwnNew:
            return object.__new__(cls)

    with pytest.raises(TypeError):
        native.build(OwnNew, (OwnNew.__dict__["a"],), 1)  # its own __new__ would be skipped


def test_headers_lookup() -> None:
    headers = Headers((("Allow", "204"), ("X-A", "1"), ("x-a", "2")))
    assert headers.get("ALLOW") == "204"
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert headers.get_all("X-A") == ("1", "2")
    assert "allow" in headers and 3 not in headers
    assert len(headers) == 3 and next(iter(headers)) == ("Allow", "204")


@pytest.mark.parametrize("value", ["null-body=\u00b2", "req-hdr=0, res-body=\u00b9\u00b2"])
def test_encapsulated_offsets_are_ascii_digits(value: str) -> None:
    # str.isdigit() accepts superscript digits, int() does not: a 400, not a crash.
    with pytest.raises(ProtocolError):
        parse_encapsulated(value, "RESPMOD")


def test_parse_encapsulated_options_opt_body() -> None:
    assert parse_encapsulated("opt-body=0", "OPTIONS").body is BodyKind.OPT_BODY
    assert not parse_encapsulated("null-body=0", "OPTIONS").has_body


# ------------------------------------------------------------------------------------------------
# Fuzzing: whatever arrives, only ProtocolError escapes
# ------------------------------------------------------------------------------------------------

VALID = [
    OPTIONS,
    SQUID_PREVIEW0,
    respmod(["Preview: 4", "Allow: 204"], b"4\r\nabcd\r\n0; ieof\r\n\r\n"),
    respmod(["Preview: 2", "Allow: 204, 206"], b"2\r\nab\r\n0\r\n\r\n3\r\ncde\r\n0\r\n\r\n"),
    reqmod(["Allow: 204"], b"3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n"),
    reqmod([], None),
]


def respond_anything(conn: IcapConnection, event: Event, choice: int) -> bytes:
    """Any legal reply, picked by ``choice``, so fuzzing covers the sending paths too."""
    head = conn.request
    if head is None or not conn.awaiting_response or conn.response_started:
        return b""
    if head.method == "OPTIONS":
        return conn.send_options(OptionsReply(methods=("RESPMOD",), istag=ISTAG))
    if isinstance(event, PreviewEnd) and not event.ieof and choice % 3 == 0:
        return conn.send_continue()
    if choice % 5 == 1 and head.allow_206 and head.has_body:
        return conn.send_partial_content(ISTAG, res_hdr=RES)
    if conn.can_send_no_content and choice % 2 == 0:
        return conn.send_no_content(ISTAG)
    if isinstance(event, RequestHead) and choice % 7 == 3:
        return conn.send_error(404)
    if isinstance(event, EndOfMessage | PreviewEnd):
        return conn.send_error(500)
    return b""


def fuzz_drive(data: bytes, cuts: list[int], choice: int) -> None:
    conn = IcapConnection(max_head_size=4096, max_preview=4096)
    pieces = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        pieces.append(data[last:cut])
        last = cut
    pieces += [data[last:], b""]
    try:
        for piece in pieces:
            if piece or piece == pieces[-1]:
                conn.receive_data(piece)
            for _ in range(1000):
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
                    break
                respond_anything(conn, event, choice)
                choice = choice * 31 + 7
            if conn.must_close:
                return
    except ProtocolError as exc:
        assert exc.status_hint in (400, 501, 505)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    # The only function-scoped fixture is `scanner`, which is the same for every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 1000), max_size=6), st.integers(0, 99))
def test_fuzz_random_bytes(data: bytes, cuts: list[int], choice: int) -> None:
    fuzz_drive(data, cuts, choice)


ENTRY_NAMES = ["req-hdr", "res-hdr", "req-body", "res-body", "null-body", "opt-body", "x-hdr"]


@FUZZ
@example([("req-hdr", 0), ("res-hdr", 10), ("res-body", 20)], "RESPMOD", ", ")
@example([("req-hdr", 0), ("res-hdr", 10), ("null-body", 20)], "RESPMOD", ",")
@example([("res-hdr", 0), ("res-body", 20)], "RESPMOD", " , ")
@example([("req-hdr", 0), ("req-body", 20)], "REQMOD", ", ")
@example([("null-body", 0)], "OPTIONS", ", ")
@example([("req-hdr", 0), ("res-hdr", 0), ("res-body", 20)], "RESPMOD", ", ")
@given(
    st.lists(st.tuples(st.sampled_from(ENTRY_NAMES), st.integers(0, 300)), min_size=1, max_size=4),
    st.sampled_from(["REQMOD", "RESPMOD", "OPTIONS"]),
    st.sampled_from([", ", ",", " , "]),
)
def test_parse_encapsulated_agrees_with_its_python_twin(
    entries: list[tuple[str, int]], method: str, separator: str
) -> None:
    value = separator.join(f"{name}={offset}" for name, offset in entries)
    outcomes = []
    for parse in (parse_encapsulated, parse_encapsulated_python):
        try:
            outcomes.append(parse(value, method))
        except ProtocolError:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or not data:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(mutated_messages(), st.lists(st.integers(0, 2000), max_size=6), st.integers(0, 99))
def test_fuzz_mutated_valid_messages(data: bytes, cuts: list[int], choice: int) -> None:
    fuzz_drive(data, cuts, choice)
