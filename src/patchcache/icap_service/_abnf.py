"""ICAP grammar and limits: the protocol's constants and regular expressions, nothing else.

The token and field grammar is RFC 9110's (section 5.6.2 tchar, section 5.5 fields), which
RFC 3507 section 4.3 borrows for ICAP heads. The same grammar exists twice, on text and on bytes:
ICAP heads are validated as bytes in one C-level regex pass each, before any decoding, while the
encapsulated HTTP heads are decoded once (latin-1: every byte maps to one character) and matched
as text so that the groups need no decoding each. _scan.c holds the same grammar in C.
"""

from __future__ import annotations

import re

DEFAULT_MAX_HEAD_SIZE = 65536
DEFAULT_MAX_PREVIEW = 1 << 20
MAX_HEADERS = 200
MAX_CHUNK_LINE = 4096
MAX_CHUNK_SIZE_DIGITS = 15  # 2**60 bytes: more than any real body, small enough to stay sane

ICAP_VERSION = "ICAP/1.0"
METHODS = frozenset({"OPTIONS", "REQMOD", "RESPMOD"})

# RFC 3507 section 4.3.3 reason phrases, plus 206 from the Partial Content extension.
REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    404: "ICAP Service Not Found",
    405: "Method Not Allowed For Service",
    408: "Request Timeout",
    500: "Server Error",
    501: "Method Not Implemented",
    503: "Service Overloaded",
    505: "ICAP Version Not Supported By Server",
}

TOKEN_RE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN = re.compile(TOKEN_RE)
# One field of a block already validated, as text: (name, value without the blanks around it).
FIELD = re.compile(f"({TOKEN_RE}):[ \t]*(.*?)[ \t]*\r\n")
HEX = re.compile(f"[0-9A-Fa-f]{{1,{MAX_CHUNK_SIZE_DIGITS}}}")
# The field grammar on bytes, for the ICAP head: zero or more ``token:value CRLF`` lines. It
# rejects obs-fold (a line starting with SP/HT): RFC 7230 deprecates it.
_FIELDS_B = rb"(?:" + TOKEN_RE.encode() + rb":[^\r\n]*\r\n)*"
FIELD_BLOCK_B = re.compile(_FIELDS_B)
_FIELDS = _FIELDS_B.decode("ascii")
HTTP_REQUEST_HEAD = re.compile(
    "(" + TOKEN_RE + ") ([^ \r\n]+) (HTTP/[^ \r\n]*)\r\n(" + _FIELDS + ")\r\n"
)
HTTP_RESPONSE_HEAD = re.compile(
    "(HTTP/[^ \r\n]*) ([0-9]{3})(?: ([^\r\n]*))?\r\n(" + _FIELDS + ")\r\n"
)


def is_token(text: str) -> bool:
    return TOKEN.fullmatch(text) is not None
