"""Is a domain a public suffix (`co.uk`, `github.io`)? From the Public Suffix List.

The `publicsuffixlist` package ships the list, so the answer needs no network. Both the ICANN
and the private sections count: under `cloudfront.net` as under `co.uk`, anyone can get a name.
The list is parsed once, on first use (about 0.3 s and 2 MB), and only when a rules file has a
`*.domain` pattern of its own to check.
"""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList

__all__ = ["is_public_suffix"]


@functools.cache
def _list() -> PublicSuffixList:
    return PublicSuffixList()


def is_public_suffix(domain: str) -> bool:
    """True if names directly under ``domain`` belong to unrelated registrants."""
    return bool(_list().is_public(domain.lower().rstrip(".")))
