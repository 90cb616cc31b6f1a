"""One access-log line to one `Entry`: Squid's `squid` and `combined` formats, and patchcache's.

Pure functions, no I/O: `parse_line` returns None for anything it cannot read whole (a
truncated line, another format, binary junk), and the caller counts those.

Formats (Squid 5 `logformat` codes, http://www.squid-cache.org/Doc/config/logformat/):

- `squid` (Squid's default):
  ``%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt``
- `combined`:
  ``%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st "%{Referer}>h" "%{User-Agent}>h" %Ss:%Sh``
- `patchcache` (written by the `logformat patchcache` line `patchcache squid-conf` adds):
  ``pc1 %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %<sh %<bs %rm %Sh/%<a %ru %note{store-id}``.
  It adds what the default log lacks: `%<bs`, the body bytes read from the next hop (the
  exact upstream traffic), `%<sh`, the reply header bytes sent to the client (so body bytes to
  the client are `%<st - %<sh`), and the store-ID key Squid actually used. The leading `pc1`
  tags the line and its version, so a mixed or misconfigured file is still read correctly.
"""

from __future__ import annotations

import calendar
from typing import Final, NamedTuple

PATCHCACHE_TAG: Final = "pc1"
PATCHCACHE_LOGFORMAT: Final = (
    f"{PATCHCACHE_TAG} %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %<sh %<bs %rm %Sh/%<a %ru "
    "%note{store-id}"
)

FORMAT_SQUID: Final = "squid"
FORMAT_COMBINED: Final = "combined"
FORMAT_PATCHCACHE: Final = "patchcache"

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}


class Entry(NamedTuple):
    """What the report needs from one transaction. `upstream_bytes` and `header_bytes` are
    None when the format does not carry them; `store_id` is None when absent or `-`."""

    ts: float
    code: str
    status: int
    bytes_to_client: int
    method: str
    url: str
    upstream_bytes: int | None
    header_bytes: int | None
    store_id: str | None
    fmt: str


# A line as the aggregator's hot loop takes it (a NamedTuple costs a Python-level __new__ per
# line): (ts, code, status, bytes to client, method, url, upstream bytes, header bytes,
# store-id, format).
Fields = tuple[float, str, int, int, str, str, int | None, int | None, str | None, str]

_VALID_CODES: set[str] = set()


def _count(text: str) -> int:
    """A byte counter: digits only ("-" is 0; Squid logs "-" where nothing was read)."""
    if text.isdigit():
        return int(text)
    if text == "-":
        return 0
    raise ValueError(text)


def _result_code(code: str) -> str:
    """`%Ss`: upper-case letters and underscores (TCP_MEM_HIT, NONE_NONE, TCP_MISS_ABORTED)."""
    if code in _VALID_CODES:
        return code
    if not code.isascii() or not code.isupper() or not code.replace("_", "").isalpha():
        raise ValueError(code)
    if len(_VALID_CODES) < 1024:  # Squid has a few dozen; a bound against odd logs
        _VALID_CODES.add(code)
    return code


def combined_time(text: str) -> float:
    """`%tl` (``10/Oct/2000:13:55:36 -0700``) as a Unix timestamp."""
    if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[21] not in "+-":
        raise ValueError(text)
    month = _MONTHS[text[3:6]]
    fields = (text[0:2], text[7:11], text[12:14], text[15:17], text[18:20], text[22:24], text[24:])
    if not all(f.isdigit() and f.isascii() for f in fields):
        raise ValueError(text)
    day, year, hour, minute, second, tz_hours, tz_minutes = (int(f) for f in fields)
    tz = (tz_hours * 60 + tz_minutes) * 60 * (1 if text[21] == "+" else -1)
    return float(calendar.timegm((year, month, day, hour, minute, second)) - tz)


def parse_combined(line: str) -> Fields:
    open_at = line.find(" [")
    close_at = line.find('] "', open_at)
    if open_at < 0 or close_at < 0:
        raise ValueError("no [time]")
    ts = combined_time(line[open_at + 2 : close_at])
    req_end = line.find('" ', close_at + 3)
    if req_end < 0:
        raise ValueError("no request")
    request = line[close_at + 3 : req_end].split(" ")
    if len(request) != 3:
        raise ValueError("request")
    after = line[req_end + 2 :].split(" ", 2)
    if len(after) < 3:
        raise ValueError("truncated")
    status = after[0]
    if not status.isdigit() or not status.isascii():
        raise ValueError(status)
    code = _result_code(line.rsplit(" ", 1)[-1].partition(":")[0])
    return (
        ts,
        code,
        int(status),
        _count(after[1]),
        request[0],
        request[1],
        None,
        None,
        None,
        FORMAT_COMBINED,
    )


def parse_fields(line: str) -> Fields | None:
    """`parse_line` as a plain tuple, for the aggregator's loop.

    The two split-based formats are read inline, without a call per field: this runs once per
    log line and is most of the report's time.
    """
    parts = line.split()
    n = len(parts)
    try:
        if n > 6 and parts[3][0] == "[" and '"' in line:
            return parse_combined(line)
        if n > 11 and parts[0] == PATCHCACHE_TAG:
            if n != 12:
                return None
            ts_text, field, sent, head, upstream = parts[1], parts[4], parts[5], parts[6], parts[7]
            base = 1
        elif n > 6:
            ts_text, field, sent = parts[0], parts[3], parts[4]
            head = upstream = ""
            base = 0
        else:
            return None
        ts = float(ts_text)
        if not 0.0 <= ts < 1e11:  # also refuses nan and inf
            return None
        code, slash, status = field.partition("/")
        if not slash or not status.isdigit():
            return None
        if code not in _VALID_CODES:
            _result_code(code)
        if sent.isdigit():
            size = int(sent)
        elif sent == "-":
            size = 0
        else:
            return None
        if base == 0:
            return (ts, code, int(status), size, parts[5], parts[6], None, None, None, "squid")
        store_id = parts[11]
        return (
            ts,
            code,
            int(status),
            size,
            parts[8],
            parts[10],
            _count(upstream),
            _count(head),
            None if store_id == "-" else store_id,
            FORMAT_PATCHCACHE,
        )
    except (ValueError, KeyError, IndexError):
        return None


def parse_line(line: str) -> Entry | None:
    """The entry for one line (without its newline), or None when it is not a whole line of a
    known format."""
    fields = parse_fields(line)
    return None if fields is None else Entry(*fields)
