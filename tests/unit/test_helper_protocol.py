"""Squid helper line protocol core: bytes in -> events out, replies -> bytes.

Every decoder table is fed whole and one byte at a time (same events). Replies are checked
against a model of Squid 5.7's own reply parser (Helper::Reply::parseResponseKeys and
strwordtok), so quoting is tested the way Squid reads it, not the way we wrote it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchcache.helpers.protocol import (
    EMPTY_LINE,
    MISSING_URL,
    NOT_UTF8,
    BrokenHelper,
    Err,
    HelperEvent,
    HelperRequest,
    LineDecoder,
    MalformedLine,
    Ok,
    PreparedReply,
    Reply,
    format_reply,
    malformed_reply,
    ok_text,
    replies_by_url,
    reply_text,
)

DEFAULT_EXTRAS = ("127.0.0.1/127.0.0.1", "-", "GET", "myip=127.0.0.1", "myport=3128")
WU = "http://download.windowsupdate.com/d/msdownload/update/software/secu/kb5026361-x64.cab"
TOO_LONG_16 = "request line longer than 16 bytes"


def req(channel: str | None, url: str, *extras: str) -> HelperRequest:
    return HelperRequest(channel, url, extras)


def decode_whole(data: bytes, max_line: int = 65536) -> list[HelperEvent]:
    decoder = LineDecoder(max_line)
    return decoder.feed(data) + decoder.close()


def decode_bytewise(data: bytes, max_line: int = 65536) -> list[HelperEvent]:
    decoder = LineDecoder(max_line)
    events: list[HelperEvent] = []
    for i in range(len(data)):
        events += decoder.feed(data[i : i + 1])
    return events + decoder.close()


def decode_chunked(data: bytes, cuts: list[int], max_line: int) -> list[HelperEvent]:
    decoder = LineDecoder(max_line)
    events: list[HelperEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events += decoder.feed(data[start:cut])
        start = max(start, cut)
    return events + decoder.close()


DECODE_TABLE: list[tuple[str, bytes, list[HelperEvent]]] = [
    ("url only", b"http://a/b\n", [req(None, "http://a/b")]),
    (
        "default extras",
        f"{WU} 127.0.0.1/127.0.0.1 - GET myip=127.0.0.1 myport=3128\n".encode(),
        [req(None, WU, *DEFAULT_EXTRAS)],
    ),
    ("channel", b"0 http://a/b -\n", [req("0", "http://a/b", "-")]),
    ("big channel kept verbatim", b"0042 http://a/\n", [req("0042", "http://a/")]),
    ("crlf", b"12 http://a/b x\r\n", [req("12", "http://a/b", "x")]),
    ("only one cr dropped", b"http://a/b\r\r\n", [req(None, "http://a/b")]),
    ("cr inside is whitespace", b"http://a\rb\n", [req(None, "http://a", "b")]),
    ("tabs and runs of spaces", b"3\thttp://a/  x\t\ty \n", [req("3", "http://a/", "x", "y")]),
    ("vertical tab and form feed split", b"a\x0bb\x0cc\n", [req(None, "a", "b", "c")]),
    ("leading whitespace", b"  5 http://a/\n", [req("5", "http://a/")]),
    ("\\x1c is not whitespace to Squid", b"3 http://a/\x1cb\n", [req("3", "http://a/\x1cb")]),
    ("digits later are extras", b"http://a/ 5\n", [req(None, "http://a/", "5")]),
    ("digit URL after a channel", b"5 6\n", [req("5", "6")]),
    ("utf-8 url", "http://é.example/ü\n".encode(), [req(None, "http://é.example/ü")]),
    ("NBSP is not a separator", "http://a/\xa0b\n".encode(), [req(None, "http://a/\xa0b")]),
    (
        "several lines in one chunk",
        b"1 http://a/\n2 http://b/ x\nhttp://c/\n",
        [req("1", "http://a/"), req("2", "http://b/", "x"), req(None, "http://c/")],
    ),
    ("empty line", b"\n", [MalformedLine(None, EMPTY_LINE)]),
    ("whitespace line", b" \t \r\n", [MalformedLine(None, EMPTY_LINE)]),
    ("channel without url", b"7\n", [MalformedLine("7", MISSING_URL)]),
    ("channel and spaces only", b"7   \r\n", [MalformedLine("7", MISSING_URL)]),
    ("not utf-8", b"http://a/\xff\n", [MalformedLine(None, NOT_UTF8)]),
    ("not utf-8 keeps channel", b"9 http://a/ \xc3(\n", [MalformedLine("9", NOT_UTF8)]),
    ("nul byte is data", b"http://a/\x00b\n", [req(None, "http://a/\x00b")]),
    (
        "bad line does not disturb the next",
        b"\xff\n\n4 http://ok/\n",
        [MalformedLine(None, NOT_UTF8), MalformedLine(None, EMPTY_LINE), req("4", "http://ok/")],
    ),
    (
        "partial line at eof still answered",
        b"1 http://a/\n2 http://b/",
        [req("1", "http://a/"), req("2", "http://b/")],
    ),
    ("cr at eof", b"http://a/\r", [req(None, "http://a/")]),
    (
        "whitespace at eof",
        b"http://a/\n  ",
        [req(None, "http://a/"), MalformedLine(None, EMPTY_LINE)],
    ),
    ("nothing", b"", []),
]

# With max_line=16: lines of more than 16 bytes (without "\n" and one "\r") are refused.
LONG_TABLE: list[tuple[str, bytes, list[HelperEvent]]] = [
    ("exactly max_line", b"http://a/bcdefgh\n", [req(None, "http://a/bcdefgh")]),
    ("exactly max_line with crlf", b"http://a/bcdefgh\r\n", [req(None, "http://a/bcdefgh")]),
    ("one byte over", b"http://a/bcdefghi\n", [MalformedLine(None, TOO_LONG_16)]),
    ("only one cr is a terminator", b"http://a/bcdefgh\r\r\n", [MalformedLine(None, TOO_LONG_16)]),
    ("utf-8 at the limit", "http://é/bcdefg\r\n".encode(), [req(None, "http://é/bcdefg")]),
    ("utf-8 one cr too many", "http://é/bcdefg\r\r\n".encode(), [MalformedLine(None, TOO_LONG_16)]),
    ("utf-8 over", "http://é/bcdefgh\n".encode(), [MalformedLine(None, TOO_LONG_16)]),
    ("long keeps channel", b"1 http://a/" + b"x" * 50 + b"\n", [MalformedLine("1", TOO_LONG_16)]),
    (
        "long channel cut off",
        b"1234567890123456789 http://a/\n",
        [MalformedLine(None, TOO_LONG_16)],
    ),
    (
        "channel up to the limit",
        b"123456789012345 " + b"x" * 9 + b"\n",
        [MalformedLine("123456789012345", TOO_LONG_16)],
    ),
    ("digits only", b"9" * 40 + b"\n", [MalformedLine(None, TOO_LONG_16)]),
    (
        "long line then good lines",
        b"3 " + b"y" * 100 + b"\n4 http://ok/\nhttp://ok2/\n",
        [MalformedLine("3", TOO_LONG_16), req("4", "http://ok/"), req(None, "http://ok2/")],
    ),
    ("long and not utf-8", b"2 \xff" + b"\xfe" * 30 + b"\n", [MalformedLine("2", TOO_LONG_16)]),
    ("long at eof", b"5 " + b"z" * 40, [MalformedLine("5", TOO_LONG_16)]),
    ("long crlf at eof", b"5 " + b"z" * 40 + b"\r", [MalformedLine("5", TOO_LONG_16)]),
    (
        "two long lines",
        b"x" * 20 + b"\n" + b"8 " + b"x" * 20 + b"\n",
        [MalformedLine(None, TOO_LONG_16), MalformedLine("8", TOO_LONG_16)],
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [row[1:] for row in DECODE_TABLE], ids=[row[0] for row in DECODE_TABLE]
)
def test_decode_table(data: bytes, expected: list[HelperEvent]) -> None:
    assert decode_whole(data) == expected
    assert decode_bytewise(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"), [row[1:] for row in LONG_TABLE], ids=[row[0] for row in LONG_TABLE]
)
def test_decode_over_long_lines(data: bytes, expected: list[HelperEvent]) -> None:
    assert decode_whole(data, 16) == expected
    assert decode_bytewise(data, 16) == expected


def test_over_long_line_is_not_buffered() -> None:
    decoder = LineDecoder(1024)
    assert decoder.feed(b"1 " + b"x" * 10_000) == []
    for _ in range(100):
        assert decoder.feed(b"x" * 100_000) == []
    assert len(decoder._pending) == 0  # discarded, not kept
    assert decoder.feed(b"x\n2 http://a/\n") == [
        MalformedLine("1", "request line longer than 1024 bytes"),
        req("2", "http://a/"),
    ]


def test_close_resets_and_is_idempotent() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b"1 http://a/\n2 http") == [req("1", "http://a/")]
    assert decoder.close() == [req("2", "http")]
    assert decoder.close() == []
    assert decoder.feed(b"http://b/\n") == [req(None, "http://b/")]


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineDecoder(0)


def test_events_are_frozen() -> None:
    event = req("1", "http://a/")
    with pytest.raises(AttributeError):
        event.url = "http://b/"  # type: ignore[misc]


# Bytes that make the parser take each of its paths: separators Squid knows and some it
# does not, digits (channels), "\r", non-ASCII, invalid UTF-8.
LINE_BYTES = st.lists(
    st.sampled_from(
        [
            b" ",
            b"\t",
            b"\r",
            b"\x0b",
            b"\x1c",
            b"\x1f",
            b"1",
            b"42",
            b"h",
            b"http://a/",
            b"%",
            b"\xc3\xa9",
            b"\xc3",
            b"\xff",
            b"\xa0",
            b"\x00",
        ]
    ),
    max_size=12,
).map(b"".join)
INPUT = st.one_of(
    st.binary(max_size=300),
    st.lists(LINE_BYTES, max_size=12).map(lambda lines: b"\n".join(lines)),
    st.lists(LINE_BYTES, max_size=12).map(lambda lines: b"\n".join(lines) + b"\n"),
)


@settings(max_examples=400)
@given(data=INPUT, cuts=st.lists(st.integers(0, 300), max_size=12), max_line=st.integers(1, 24))
def test_any_bytes_any_chunking_one_event_per_line(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    decoder = LineDecoder(max_line)
    during: list[HelperEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        during += decoder.feed(data[start:cut])
        start = max(start, cut)
    at_close = decoder.close()
    assert len(during) == data.count(b"\n")
    assert len(at_close) == (1 if data.rpartition(b"\n")[2] else 0)
    # Chunking never changes the result; whole vs. bytewise also compares the decoder's
    # whole-block fast path with its line-by-line path.
    assert during + at_close == decode_whole(data, max_line)
    assert during + at_close == decode_bytewise(data, max_line)
    for event in during + at_close:
        assert isinstance(event, HelperRequest | MalformedLine)
        if event.channel is not None:
            assert event.channel.isascii() and event.channel.isdigit()
        if isinstance(event, HelperRequest):
            assert event.url and not any(c in event.url for c in " \t\n\r\x0b\x0c")
            assert not (event.channel is None and event.url.isdigit())


def fake_reply(url: str) -> str:
    """A URL-only answer whose text shows which URL it was given."""
    return ok_text(("store-id", url.replace("\x00", "NUL")), ("n", str(len(url))))


@settings(max_examples=400)
@given(data=INPUT, cuts=st.lists(st.integers(0, 300), max_size=12), max_line=st.integers(1, 24))
def test_answering_by_url_equals_answering_events(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    # The store-ID fast path (clean lines left as str, answered in one loop) must give the same
    # bytes as decoding every line into an event and formatting its reply.
    by_url = LineDecoder(max_line)
    by_event = LineDecoder(max_line)
    fast: list[str] = []
    slow: list[str] = []
    start = 0
    for cut in [*sorted(cuts), len(data), None]:
        if cut is None:
            items, events = list[str | HelperEvent](by_url.close()), by_event.close()
        else:
            chunk = data[start:cut]
            start = max(start, cut)
            items, events = by_url.feed_lines(chunk), by_event.feed(chunk)
        assert len(items) == len(events)
        fast.append(replies_by_url(items, fake_reply))
        for event in events:
            reply: Reply = (
                PreparedReply(fake_reply(event.url))
                if isinstance(event, HelperRequest)
                else malformed_reply(event)
            )
            slow.append(reply_text(event.channel, reply))
    assert "".join(fast) == "".join(slow)


def test_prepared_reply_formats_like_the_reply() -> None:
    reply = Ok((("store-id", "http://k/a b"), ("expand", "1")))
    expected = 'OK store-id="http://k/a b" expand=1'
    assert PreparedReply.of(reply).text == ok_text(*reply.pairs) == expected
    assert format_reply("7", PreparedReply.of(reply)) == format_reply("7", reply)
    with pytest.raises(ValueError):
        ok_text(("bad key", "v"))


@given(
    lines=st.lists(
        st.tuples(
            st.none() | st.integers(0, 10**6).map(str),
            st.text(
                alphabet=st.characters(exclude_characters=" \t\n\r\x0b\x0c"), min_size=1
            ).filter(lambda url: not url.isdigit()),
            st.lists(
                st.text(
                    alphabet=st.characters(exclude_characters=" \t\n\r\x0b\x0c\ud800"), min_size=1
                ),
                max_size=4,
            ),
        ),
        max_size=20,
    ),
    crlf=st.booleans(),
)
def test_squid_lines_round_trip(lines: list[tuple[str | None, str, list[str]]], crlf: bool) -> None:
    """What Squid sends (channel? URL extras...) comes out as it went in."""
    lines = [(ch, url, extras) for ch, url, extras in lines if _encodable(url, *extras)]
    ending = "\r\n" if crlf else "\n"
    data = "".join(
        " ".join(([ch] if ch is not None else []) + [url, *extras]) + ending
        for ch, url, extras in lines
    ).encode()
    expected = [HelperRequest(ch, url, tuple(extras)) for ch, url, extras in lines]
    assert decode_whole(data) == expected
    assert decode_chunked(data, [len(data) // 3, len(data) // 2], 65536) == expected


def _encodable(*texts: str) -> bool:
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- replies ---------------------------------------------------------------------------------

FORMAT_TABLE: list[tuple[str, str | None, Reply, bytes]] = [
    ("bare ok", None, Ok(), b"OK\n"),
    ("store-id", None, Ok((("store-id", "http://a/b"),)), b"OK store-id=http://a/b\n"),
    ("channel", "3", Ok((("store-id", "k"),)), b"3 OK store-id=k\n"),
    ("note pair", "0", Ok((("store-id", "k"), ("expand", "1"))), b"0 OK store-id=k expand=1\n"),
    (
        "rewrite with space",
        None,
        Ok((("rewrite-url", "http://a/b c"),)),
        b'OK rewrite-url="http://a/b c"\n',
    ),
    (
        "redirect",
        "1",
        Ok((("status", "302"), ("url", "http://m/x"))),
        b"1 OK status=302 url=http://m/x\n",
    ),
    (
        "percent is quoted",
        None,
        Ok((("store-id", "http://a/b%20c"),)),
        b'OK store-id="http://a/b%20c"\n',
    ),
    ("quote escaped", None, Ok((("k", 'say "hi"'),)), b'OK k="say \\"hi\\""\n'),
    ("backslash escaped", None, Ok((("k", "a\\b"),)), b'OK k="a\\\\b"\n'),
    ("backslash n stays two chars", None, Ok((("k", "a\\nb"),)), b'OK k="a\\\\nb"\n'),
    ("newline and cr escaped", None, Ok((("k", "a\nb\rc"),)), b'OK k="a\\nb\\rc"\n'),
    ("tab quoted", None, Ok((("k", "a\tb"),)), b'OK k="a\tb"\n'),
    ("empty value", None, Ok((("k", ""), ("j", "1"))), b'OK k="" j=1\n'),
    ("utf-8 bare", None, Ok((("store-id", "http://é/"),)), "OK store-id=http://é/\n".encode()),
    ("err", None, Err(), b"ERR\n"),
    ("err channel", "0", Err(), b"0 ERR\n"),
    ("err pairs", "2", Err((("reason", "no rule"),)), b'2 ERR reason="no rule"\n'),
    ("bh word", None, BrokenHelper("oops"), b"BH message=oops\n"),
    ("bh sentence", "5", BrokenHelper("bad line"), b'5 BH message="bad line"\n'),
    ("bh empty", None, BrokenHelper(""), b"BH\n"),
]


@pytest.mark.parametrize(
    ("channel", "reply", "expected"),
    [row[1:] for row in FORMAT_TABLE],
    ids=[row[0] for row in FORMAT_TABLE],
)
def test_format_reply_table(channel: str | None, reply: Reply, expected: bytes) -> None:
    assert format_reply(channel, reply) == expected


@pytest.mark.parametrize(
    ("channel", "reply", "error"),
    [
        (None, Ok((("a b", "v"),)), ValueError),
        (None, Ok((("", "v"),)), ValueError),
        (None, Ok((("k=", "v"),)), ValueError),
        (None, Ok((("ké", "v"),)), ValueError),
        (None, Err((("k", "a\x00b"),)), ValueError),
        (None, BrokenHelper("a\x00"), ValueError),
        (None, Ok((("k", "\ud800"),)), ValueError),  # lone surrogate: UnicodeEncodeError
        ("a1", Ok(), ValueError),
        (" 1", Ok(), ValueError),
        ("", Ok(), ValueError),
        ("\u0661", Ok(), ValueError),  # Arabic-Indic digit one: isdigit() but not ASCII
        (None, "OK", TypeError),
    ],
)
def test_format_reply_refuses(channel: str | None, reply: Reply, error: type[Exception]) -> None:
    with pytest.raises(error):
        format_reply(channel, reply)


def squid_parse_reply(
    line: bytes, *, concurrency: bool
) -> tuple[int | None, str, list[tuple[str, str]]]:
    """Model of Squid 5.7 reading one helper reply (src/helper.cc, src/helper/Reply.cc).

    Returns (channel, result, notes). Works on bytes as Squid does; notes are decoded at the end.
    """
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    text = line[:-1]
    if text.endswith(b"\r"):
        text = text[:-1]
    space = b" \t\n\x0b\x0c\r"
    channel = None
    if concurrency:
        match = re.match(rb"\d+", text)
        assert match, line
        channel = int(match.group())
        rest = text[match.end() :]
        assert rest[:1] in (b"",) or rest[:1] in [bytes([c]) for c in space]
        text = rest.lstrip(space)
    for result in (b"OK", b"ERR", b"BH"):
        if text.startswith(result) and text[len(result) : len(result) + 1] in (b"", b" "):
            text = text[len(result) :].lstrip(space)
            break
    else:
        raise AssertionError(f"no result code in {line!r}")
    notes: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        key = re.match(rb"[A-Za-z0-9_-]*", text[pos:]).group()  # type: ignore[union-attr]
        after = pos + len(key)
        if text[after : after + 1] != b"=" or text[after + 1 : after + 2] in [
            bytes([c]) for c in space
        ]:
            raise AssertionError(f"Squid would stop at {text[pos:]!r}")
        start = after + 1
        value, pos = _strwordtok(text, start)
        if text[start : start + 1] != b'"' and pos - start > 2:
            value = _rfc1738_unescape(value)
        notes.append((key.decode(), value.decode("utf-8")))
        while pos < len(text) and text[pos] in space:
            pos += 1
    return channel, result.decode(), notes


def _strwordtok(text: bytes, pos: int) -> tuple[bytes, int]:
    """strwordtok() of Squid 5.7 src/String.cc: one word, "..." quoting, escapes inside quotes."""
    space = b" \t\n\x0b\x0c\r"
    while pos < len(text) and text[pos] in space:
        pos += 1
    word = bytearray()
    quoted = False
    while pos < len(text):
        ch = text[pos]
        if ch == ord("\\"):
            if quoted:
                pos += 1
            nxt = text[pos] if pos < len(text) else 0
            word.append({ord("n"): 10, ord("r"): 13}.get(nxt, nxt))
            if nxt:
                pos += 1
            if not nxt:
                word.pop()
        elif ch == ord('"'):
            quoted = not quoted
            pos += 1
        elif not quoted and ch in space:
            pos += 1
            break
        else:
            word.append(ch)
            pos += 1
    return bytes(word), pos


def _rfc1738_unescape(value: bytes) -> bytes:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), value)


KEYS = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=8)
VALUES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30
) | st.sampled_from(["", " ", '"', "\\", "%41", "a\\nb", '\\"', "\r\n", "x y", "http://a/b%20c"])


@given(
    channel=st.none() | st.integers(0, 10**9).map(str),
    kind=st.sampled_from([Ok, Err]),
    pairs=st.lists(st.tuples(KEYS, VALUES), max_size=5),
)
def test_squid_reads_back_every_pair(
    channel: str | None, kind: type[Ok] | type[Err], pairs: list[tuple[str, str]]
) -> None:
    line = format_reply(channel, kind(tuple(pairs)))
    parsed_channel, result, notes = squid_parse_reply(line, concurrency=channel is not None)
    assert parsed_channel == (int(channel) if channel is not None else None)
    assert result == ("OK" if kind is Ok else "ERR")
    assert notes == pairs


@given(message=VALUES)
def test_squid_reads_back_bh_message(message: str) -> None:
    _, result, notes = squid_parse_reply(format_reply("1", BrokenHelper(message)), concurrency=True)
    assert result == "BH"
    assert notes == ([("message", message)] if message else [])


def test_model_sees_percent_decoding_of_bare_values() -> None:
    # Why "%" forces quotes: Squid percent-decodes a bare value.
    assert squid_parse_reply(b"OK store-id=a%20b\n", concurrency=False)[2] == [("store-id", "a b")]
    assert squid_parse_reply(b'OK store-id="a%20b"\n', concurrency=False)[2] == [
        ("store-id", "a%20b")
    ]


def test_unreadable_urls_get_err_and_protocol_errors_get_bh() -> None:
    # A non-UTF-8 or over-long URL is a URL no rule maps (ERR); BH would make Squid retry the
    # same line twice more and log each failure.
    decoder = LineDecoder(16)
    events = decoder.feed(b"7 http://a/\xff\n" + b"http://" + b"x" * 40 + b"\n\n3\n")
    assert [malformed_reply(e) for e in events if isinstance(e, MalformedLine)] == [
        Err(),
        Err(),
        BrokenHelper(EMPTY_LINE),
        BrokenHelper(MISSING_URL),
    ]
    assert replies_by_url(list(events), fake_reply) == (
        "7 ERR\nERR\n"
        + reply_text(None, BrokenHelper(EMPTY_LINE))
        + reply_text("3", BrokenHelper(MISSING_URL))
    )
