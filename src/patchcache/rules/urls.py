"""Strict URL splitting for rule matching.

Cache keys merge content from many URLs, so the host a URL really names decides whether a rule
may map it. This splitter is deliberately narrower than a browser's: anything that could make the
host we see differ from the host Squid connects to (user-info, percent-encoding or backslashes in
the authority, non-ASCII) makes the URL unmatchable, and the URL is then cached under its own name
as Squid would anyway. Dot-segments and encoded slashes in the path are refused for the same
reason: the key must name what the origin serves.

Every check on the authority is made on the text as it came, before any case folding:
`str.lower()` maps some non-ASCII letters onto ASCII ones (U+212A KELVIN SIGN becomes `k`,
U+0130 becomes `i` plus a combining dot), so lower-casing first would turn a look-alike host
into a trusted one. Only LDH ASCII hosts (IDNA A-labels included, as they are ASCII) can
match; a host longer than a DNS name (253 characters) cannot.

It is a hand-written splitter and not `urllib.parse` because it runs for every request Squid sends
to the store-ID helper; one compiled regex is several times faster.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$")
_HOST_CHARS_RE = re.compile(r"^[a-z0-9.\-]+$")
# A last label that is a number (decimal, or hex as inet_aton reads it): never a DNS name.
_NUMERIC_LABEL_RE = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_BAD_PATH_RE = re.compile(r"%2[fFeE]|%5[cC]|%00|\\|/\.\.?(?:/|$)")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name has at most 253 characters; with brackets, port and a final dot an authority worth
# matching stays well under this. Longer ones are refused (and never memoised).
_MAX_HOST = 253
_MAX_AUTHORITY = _MAX_HOST + 16


@dataclass(frozen=True, slots=True)
class SplitUrl:
    """The parts of a URL that rules look at. `host` is lower-case, without port or final dot."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str | None
    is_ip: bool


class UrlRefused(ValueError):
    """The URL cannot be matched safely; the message says why (shown by `patchcache explain`)."""


Parts = tuple[str, str, "int | None", str, "str | None", bool]
"""(scheme, host, port, path, query, is_ip): the allocation-light form of `SplitUrl`."""


def split_url(url: str) -> SplitUrl:
    """Split `url` or raise `UrlRefused` with the reason."""
    parts = split_parts(url)
    if isinstance(parts, str):
        raise UrlRefused(parts)
    return SplitUrl(*parts)


def split_parts(url: str) -> Parts | str:
    """The parts of `url` as a tuple, or the reason it is refused (a string).

    The store-ID helper calls this for every distinct URL: no exception, no object beyond the
    tuple on the common path."""
    # str methods, not the regex: this runs once per distinct URL and the regex costs ~2 us.
    sep = url.find("://")
    if sep <= 0:
        return "not an absolute http(s) URL"
    scheme = url[:sep]
    rest = url[sep + 3 :]
    slash = rest.find("/")
    authority_text = rest if slash < 0 else rest[:slash]
    if "?" in authority_text or "#" in authority_text:
        found = _URL_RE.match(url)  # rare: let the general grammar split it
        if found is None:
            return "not an absolute http(s) URL"
        scheme, authority_text, path, query = found.groups()
    else:
        path_query = "" if slash < 0 else rest[slash:]
        if "#" in path_query:
            path_query = path_query[: path_query.find("#")]
        path, question, query_text = path_query.partition("?")
        query = query_text if question else None
    if scheme not in _DEFAULT_PORTS:
        if not scheme.isascii():
            return "scheme is not ASCII"
        scheme = scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            return f"scheme {scheme!r} is not http or https"
    authority = _authority(authority_text)
    if isinstance(authority, str):
        return authority
    if not path:
        path = "/"
    # Substring tests first: most paths have none of these, and `in` is cheaper than a search.
    elif ("%" in path or "\\" in path or "/." in path) and _BAD_PATH_RE.search(path):
        return "dot-segments, encoded slashes or backslashes in the path"
    host, port, is_ip = authority
    return scheme, host, port, path, query, is_ip


def _authority(authority: str) -> tuple[str, int | None, bool] | str:
    """(host, port, is_ip) or the reason for refusal. Memoised: a proxy sees few hosts, many
    times each, and this is a pure function of its argument. The memo holds short authorities
    only, so it stays small in bytes whatever the URLs (4096 x ~270 characters at most)."""
    if len(authority) > _MAX_AUTHORITY:
        return "host longer than a DNS name"
    return _short_authority(authority)


@functools.lru_cache(maxsize=4096)
def _short_authority(authority: str) -> tuple[str, int | None, bool] | str:
    if not authority.isascii():
        # Checked before anything folds case (see the module docstring).
        return "host has characters outside a-z 0-9 . -"
    if "@" in authority:
        return "user-info in the authority (user@host) is never matched"
    if "%" in authority or "\\" in authority:
        return "percent-encoding or backslash in the host is never matched"
    try:
        host, port = _split_host_port(authority)
    except UrlRefused as exc:
        return str(exc)
    is_ip = _is_ip(host)
    if not is_ip and ends_in_number(host):
        # 167772161, 010.1.2.3, 10.1.258, 0xa.1.2.3: resolvers read these as addresses (each
        # its own way); no name ends in a numeric label, so they can only be addresses in
        # disguise, and an address is trusted only in its one canonical form.
        return "numeric host that is not a dotted-quad IPv4 address (integer, octal, hex form)"
    return host, port, is_ip


def ends_in_number(host: str) -> bool:
    """Whether the last label of `host` (lower-case) is a number, as inet_aton reads them."""
    return _NUMERIC_LABEL_RE.match(host.rpartition(".")[2]) is not None


def authority_parts(authority: str) -> tuple[str, int | None, bool] | str:
    """(host, port, is_ip) of a URL authority (`host[:port]`), checked as a URL's is, or the
    reason it is refused. Also for hosts named elsewhere in a URL (Connected Cache's origin)."""
    return _authority(authority)


def _split_host_port(authority: str) -> tuple[str, int | None]:
    port: int | None = None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise UrlRefused("unterminated IPv6 literal")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UrlRefused("garbage after IPv6 literal")
            port = _port(rest[1:])
        try:
            return str(ipaddress.IPv6Address(host)), port
        except ValueError as exc:
            raise UrlRefused(f"bad IPv6 literal: {exc}") from None
    host, colon, port_text = authority.rpartition(":")
    if not colon:
        host = authority
    else:
        port = _port(port_text)
    if not host.isascii():  # before lower(): see the module docstring
        raise UrlRefused("host has characters outside a-z 0-9 . -")
    host = host.lower().rstrip(".")
    if not host:
        raise UrlRefused("empty host")
    if not _HOST_CHARS_RE.match(host):
        raise UrlRefused("host has characters outside a-z 0-9 . -")
    if len(host) > _MAX_HOST:
        raise UrlRefused("host longer than a DNS name")
    return host, port


def _port(text: str) -> int | None:
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise UrlRefused(f"bad port {text!r}")
    return int(text)


def _is_ip(host: str) -> bool:
    if ":" in host:
        return True
    if not host[-1].isdigit():
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        # Not a dotted quad (0x7f.1, 2130706433, 010.1.2.3): refused by the caller.
        return False
    return True
