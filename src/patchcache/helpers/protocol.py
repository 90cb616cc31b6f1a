"""Squid's helper line protocol, as used by ``store_id_program`` and ``url_rewrite_program``.

Theory of operation
-------------------
Squid starts helper programs and talks to each over its stdin/stdout, one line per request
and one line per reply (squid.conf.documented, ``store_id_program`` and ``url_rewrite_program``;
https://wiki.squid-cache.org/Features/AddonHelpers)::

    request:  [channel-ID <SP>] URL [<SP> extras] <NL>
    reply:    [channel-ID <SP>] result [<SP> kv-pairs] <NL>

The channel-ID is present if and only if the ``*_children`` directive sets ``concurrency`` > 0.
Squid sends a decimal number and matches replies to requests by it, so replies may go out of
order; the helper must echo the ID unchanged. A URL never consists of digits only, so a first
token of ASCII digits followed by more tokens is a channel-ID: detection is automatic and the
same decoder serves both modes. The extras are whatever ``store_id_extras`` /
``url_rewrite_extras`` expand to, separated by whitespace; they are passed on untouched.

The result is ``OK``, ``ERR`` or ``BH`` followed by ``key=value`` pairs: ``store-id=KEY``,
``rewrite-url=URL``, ``status=302 url=URL``, ``message=TEXT`` for ``BH``; any other pair becomes
a transaction annotation (``note`` ACL). Squid parses the pairs in ``Helper::Reply::
parseResponseKeys`` (src/helper/Reply.cc, Squid 5.7): keys are ``[A-Za-z0-9_-]+``; a value
starting with ``"`` is a quoted string read by ``strwordtok`` (src/String.cc), where ``\\n``,
``\\r`` and ``\\X`` are escapes; any other value ends at whitespace and is then *percent-decoded*
(``rfc1738_unescape``). So a value is written bare only when that round trip is the identity:
values that are empty or contain whitespace (Squid's ``xisspace``: space, tab, LF, VT, FF, CR),
``"``, ``\\`` or ``%`` are quoted, with ``\\``, ``"``, LF and CR escaped. NUL cannot be
expressed at all and is refused.

This module does no I/O. :class:`LineDecoder` turns bytes into events, exactly one per input
line, and :func:`format_reply` turns a reply into the bytes of one line. For answers that depend
on the URL alone (store-ID), :meth:`LineDecoder.feed_lines` and :func:`replies_by_url` do the
same without building an event or a reply object per line, and :class:`PreparedReply` keeps a
reply formatted once for the many times it is given. Bad input never raises:
it becomes a :class:`MalformedLine`, which the runtime answers at once so that Squid's request is
not left hanging (a helper that stops answering or exits takes Squid down). A line whose URL
cannot be read (not UTF-8, longer than the line limit) is answered ``ERR``, "no mapping", which is
the truthful answer for it: ``BH`` would make Squid retry it twice more and log an error each
time. Only lines that break the protocol itself (empty, channel without URL) get ``BH``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BrokenHelper",
    "Err",
    "HelperEvent",
    "HelperRequest",
    "LineDecoder",
    "MalformedLine",
    "Ok",
    "PreparedReply",
    "Reply",
    "format_reply",
    "malformed_reply",
    "ok_text",
    "parse_text",
    "replies_by_url",
]

DEFAULT_MAX_LINE = 65536

# Reasons carried by MalformedLine; the runtime sends them to Squid as the BH message.
EMPTY_LINE = "empty request line"
NOT_UTF8 = "request line is not valid UTF-8"
MISSING_URL = "channel ID without URL"
TOO_LONG_PREFIX = "request line longer than "


@dataclass(frozen=True, slots=True)
class HelperRequest:
    """One request line: the channel to echo (None without concurrency), the URL, the extras."""

    channel: str | None
    url: str
    extras: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """One input line that is not a request. ``channel`` is kept when it could be read."""

    channel: str | None
    reason: str


HelperEvent = HelperRequest | MalformedLine


@dataclass(frozen=True, slots=True)
class Ok:
    """``OK`` with its key=value pairs, e.g. ``Ok((("store-id", key),))``."""

    pairs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Err:
    """``ERR``: no answer for this URL, Squid goes on with the request unchanged."""

    pairs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BrokenHelper:
    """``BH``: the helper failed. Squid logs the message, retries, then proceeds unchanged."""

    message: str


@dataclass(frozen=True, slots=True)
class PreparedReply:
    """A reply formatted once, for answers given many times (one URL, hundreds of ranges).

    ``text`` is the reply line without channel and newline, as :func:`reply_text` writes it;
    build it with :meth:`of` or :func:`ok_text`, which check the reply as formatting would."""

    text: str

    @classmethod
    def of(cls, reply: Ok | Err | BrokenHelper) -> PreparedReply:
        return cls(_body_text(reply))


def ok_text(*pairs: tuple[str, str]) -> str:
    """``PreparedReply.of(Ok(pairs)).text`` without building either: once per distinct URL."""
    return _result_text("OK", pairs)


Reply = Ok | Err | BrokenHelper | PreparedReply


def malformed_reply(line: MalformedLine) -> Err | BrokenHelper:
    """The answer to a line that is not a request: ``ERR`` when only its URL is unreadable (a
    URL the rules can never map), ``BH`` with the reason when the protocol itself is broken."""
    if line.reason == NOT_UTF8 or line.reason.startswith(TOO_LONG_PREFIX):
        return Err()
    return BrokenHelper(line.reason)


class LineDecoder:
    """Incremental decoder: bytes in any chunking -> one event per line, in input order.

    Lines end with ``\\n``; one ``\\r`` before it is dropped. Tokens are separated by ASCII
    whitespace, as Squid's own ``xisspace``. A line longer than ``max_line`` bytes (without its
    terminator) is not buffered: the rest up to its newline is discarded and one
    :class:`MalformedLine` is emitted when that newline arrives. Its channel is taken from the
    first ``max_line`` bytes, so the result does not depend on how the input was chunked.

    :meth:`feed_lines` is the same with well-formed lines left as ``str``, for helpers that
    answer by URL alone (:func:`replies_by_url`).
    """

    __slots__ = ("_discard_channel", "_discarding", "_max_line", "_pending", "_too_long")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._max_line = max_line
        self._too_long = f"{TOO_LONG_PREFIX}{max_line} bytes"
        self._pending = bytearray()  # start of a line whose newline has not arrived yet
        self._discarding = False  # inside an over-long line, dropping bytes up to its newline
        self._discard_channel: str | None = None

    def feed(self, data: bytes) -> list[HelperEvent]:
        """Decode one chunk of input; returns the events of all lines it completes."""
        return [
            parse_text(item) if isinstance(item, str) else item for item in self.feed_lines(data)
        ]

    def feed_lines(self, data: bytes) -> list[str | HelperEvent]:
        """Like :meth:`feed`, but a line that :func:`parse_text` can read is returned as it is.

        Such a line is ASCII, without terminator, at most ``max_line`` long and without the
        bytes \\x1c-\\x1f (whitespace to ``str.split`` but not to Squid). Every other line
        comes back as its event, so one line still gives exactly one item, in input order."""
        events: list[str | HelperEvent] = []
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return events
            events.append(MalformedLine(self._discard_channel, self._too_long))
            self._discarding = False
            self._discard_channel = None
            data = data[newline + 1 :]
        if self._pending:
            newline = data.find(b"\n")
            if newline < 0:
                self._pending += data
                self._check_overflow()
                return events
            self._pending += data[:newline]
            events.append(self._parse_line(bytes(self._pending)))
            self._pending.clear()
            data = data[newline + 1 :]
        # Common case: the chunk is whole lines plus maybe the start of the next one.
        end = data.rfind(b"\n") + 1
        if end:
            events += self._parse_block(data if end == len(data) else data[:end])
        if end < len(data):
            self._pending += data[end:]
            self._check_overflow()
        return events

    def close(self) -> list[HelperEvent]:
        """End of input: a last line without newline still gets its event. Resets the decoder."""
        events: list[HelperEvent] = []
        if self._discarding:
            events.append(MalformedLine(self._discard_channel, self._too_long))
        elif self._pending:
            events.append(self._parse_line(bytes(self._pending)))
        self._pending.clear()
        self._discarding = False
        self._discard_channel = None
        return events

    def _check_overflow(self) -> None:
        # max_line + 1 bytes may still be a full-length line whose "\r\n" is split between
        # chunks; beyond that the line is too long whatever follows.
        if len(self._pending) > self._max_line + 1:
            self._discard_channel = _leading_channel(bytes(self._pending[: self._max_line]))
            self._discarding = True
            self._pending.clear()

    def _parse_block(self, block: bytes) -> list[str | HelperEvent]:
        """Split whole lines (``block`` ends with a newline) into clean str lines and events."""
        if not block.isascii() or _has_str_only_whitespace(block):
            lines = block.split(b"\n")
            lines.pop()
            return [self._parse_line(line) for line in lines]
        if b"\r" in block:
            # Drops exactly one "\r" at the end of each line, as _parse_line does.
            block = block.replace(b"\r\n", b"\n")
        # Fast path, the one Squid's traffic takes: decode the whole block once and split str
        # lines. For ASCII without \x1c-\x1f, str.split() and bytes.split() agree and so does
        # str.isdigit(); parse_text's results equal _parse_line's (the tests check both agree).
        texts = block.decode("ascii").split("\n")
        texts.pop()
        max_line = self._max_line
        if len(block) > max_line:  # else no line can be too long: the runtime's usual case
            return [
                text if len(text) <= max_line else self._parse_content(text.encode("ascii"))
                for text in texts
            ]
        items: list[str | HelperEvent] = []
        items += texts
        return items

    def _parse_line(self, line: bytes) -> HelperEvent:
        """Parse one line of any content (without its ``\\n``)."""
        return self._parse_content(line[:-1] if line.endswith(b"\r") else line)

    def _parse_content(self, line: bytes) -> HelperEvent:
        """Parse one line without its terminator (``\\n`` and one ``\\r``)."""
        if len(line) > self._max_line:
            return MalformedLine(_leading_channel(line[: self._max_line]), self._too_long)
        tokens = line.split()
        if not tokens:
            return MalformedLine(None, EMPTY_LINE)
        channel = None
        if tokens[0].isdigit():  # bytes.isdigit() is ASCII-only
            channel = tokens.pop(0).decode("ascii")
            if not tokens:
                return MalformedLine(channel, MISSING_URL)
        try:
            texts = [token.decode("utf-8") for token in tokens]
        except UnicodeDecodeError:
            return MalformedLine(channel, NOT_UTF8)
        return HelperRequest(channel, texts[0], tuple(texts[1:]))


def parse_text(text: str) -> HelperEvent:
    """The event of one clean line, as :meth:`LineDecoder.feed_lines` returns them."""
    tokens = text.split()
    if not tokens:
        return MalformedLine(None, EMPTY_LINE)
    first = tokens[0]
    if not first.isdigit():
        return HelperRequest(None, first, tuple(tokens[1:]))
    if len(tokens) > 1:
        return HelperRequest(first, tokens[1], tuple(tokens[2:]))
    return MalformedLine(first, MISSING_URL)


DEFER = "\x00defer"
"""What a URL answer returns (this very object) when it cannot answer without waiting: the
runtime then asks its ``later`` coroutine (see :class:`Deferrals`) and replies out of order."""


class Deferrals(Protocol):
    """Where :func:`replies_by_url` puts the lines whose answer is :data:`DEFER`."""

    def add(self, channel: str, url: str, extras: str) -> None: ...

    def now(self, url: str) -> str:
        """The answer without waiting, for a line that has no channel to reply on later."""
        ...


def _deferred(
    deferrals: Deferrals | None, channel: str | None, url: str, extras: str
) -> str | None:
    if deferrals is None:
        raise RuntimeError("the answer deferred a line but the runtime takes no deferrals")
    if channel is None:
        return deferrals.now(url)
    deferrals.add(channel, url, extras)
    return None


def replies_by_url(
    items: list[str | HelperEvent],
    reply_for_url: Callable[[str], str],
    deferrals: Deferrals | None = None,
) -> str:
    """The reply lines for ``items`` (from :meth:`LineDecoder.feed_lines`) when the answer
    depends on the URL alone, as one string. ``reply_for_url`` gives a reply's text without
    channel and newline (``PreparedReply.text``), or :data:`DEFER`: that line is then handed to
    ``deferrals`` and left out of the string (a line without channel is answered at once).

    This is :func:`parse_text`, the answer and :func:`reply_text` in one loop, with no event
    built for a clean line: it is the store-ID helper's whole per-line cost besides the match.
    Malformed lines get :func:`malformed_reply`. Exceptions from ``reply_for_url`` propagate."""
    out: list[str] = []
    append = out.append
    for item in items:
        if item.__class__ is str:
            tokens = item.split(None, 2)
            if tokens:
                first = tokens[0]
                if not first.isdigit():
                    text = reply_for_url(first)
                    if text is DEFER:
                        text = _deferred(deferrals, None, first, "") or ""
                    append(text + "\n")
                    continue
                if len(tokens) > 1:
                    text = reply_for_url(tokens[1])
                    if text is DEFER:
                        extras = tokens[2] if len(tokens) > 2 else ""
                        found = _deferred(deferrals, first, tokens[1], extras)
                        if found is None:
                            continue
                        text = found
                    append(first + " " + text + "\n")
                    continue
            item = parse_text(item)
        if isinstance(item, HelperRequest):
            text = reply_for_url(item.url)
            if text is DEFER:
                found = _deferred(deferrals, item.channel, item.url, " ".join(item.extras))
                if found is None:
                    continue
                text = found
            append(reply_text(item.channel, PreparedReply(text)))
        else:
            assert isinstance(item, MalformedLine)
            append(reply_text(item.channel, malformed_reply(item)))
    return "".join(out)


def _has_str_only_whitespace(block: bytes) -> bool:
    """True if ``block`` holds bytes that str.split() treats as whitespace and Squid does not."""
    return b"\x1c" in block or b"\x1d" in block or b"\x1e" in block or b"\x1f" in block


def _leading_channel(prefix: bytes) -> str | None:
    """Channel of an over-long line: its first token if all digits and ended by whitespace."""
    head = prefix.lstrip()
    parts = head.split(None, 1)
    if not parts or not parts[0].isdigit() or len(parts[0]) == len(head):
        return None
    return parts[0].decode("ascii")


# Characters of a key (isKeyNameChar in src/helper/Reply.cc). key.strip(_KEY_CHARS) is empty
# exactly when every character of the key is one of them.
_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _encode_value(value: str) -> str:
    """A value as Squid's parser reads it back unchanged: bare if safe, else quoted."""
    # Bare unless it holds Squid's whitespace (xisspace), a quote, a backslash, "%" (bare
    # values are percent-decoded) or NUL. A chain of `in` tests is several times faster than
    # a regex or str.isprintable() on a URL, and this runs once per reply.
    if value and not (
        " " in value
        or '"' in value
        or "%" in value
        or "\\" in value
        or "\t" in value
        or "\n" in value
        or "\r" in value
        or "\x0b" in value
        or "\x0c" in value
        or "\x00" in value
    ):
        return value
    if "\x00" in value:
        raise ValueError("a helper reply value cannot contain NUL")
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return '"' + escaped + '"'


def _result_text(result: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for key, value in pairs:
        if not key or key.strip(_KEY_CHARS):
            raise ValueError(f"helper reply key {key!r} is not [A-Za-z0-9_-]+")
        result = f"{result} {key}={_encode_value(value)}"
    return result


def _body_text(reply: Ok | Err | BrokenHelper) -> str:
    if isinstance(reply, Ok):
        return _result_text("OK", reply.pairs)
    if isinstance(reply, Err):
        return _result_text("ERR", reply.pairs)
    if isinstance(reply, BrokenHelper):
        return "BH message=" + _encode_value(reply.message) if reply.message else "BH"
    raise TypeError(f"not a helper reply: {reply!r}")


def reply_text(channel: str | None, reply: Reply) -> str:
    """:func:`format_reply` as ``str``: the runtime joins many and encodes them at once."""
    # The prepared reply first: it is the hot path of the store-ID helper.
    text = reply.text if isinstance(reply, PreparedReply) else _body_text(reply)
    if channel is None:
        return text + "\n"
    if not (channel.isdigit() and channel.isascii()):
        raise ValueError(f"channel ID {channel!r} is not a decimal number")
    return channel + " " + text + "\n"


def format_reply(channel: str | None, reply: Reply) -> bytes:
    """One reply line (ending in ``\\n``) for the request that came on ``channel``.

    Raises ValueError for a key outside ``[A-Za-z0-9_-]+``, a value with NUL or a lone
    surrogate, or a channel that is not decimal digits; TypeError for a non-reply.
    """
    return reply_text(channel, reply).encode("utf-8")
