"""The host part of every store-ID key patchcache makes: ``http://<class>.patchcache.squid.internal/``.

The rules make keys with it (`patchcache.rules.compiled`); the state finds a class's entries
that carry only a key, such as the demand of an object not yet recorded, by its prefix.
"""

from __future__ import annotations

KEY_HOST_SUFFIX = ".patchcache.squid.internal"


def class_key_root(class_name: str) -> str:
    """Scheme and host of every key of `class_name` (the key's path follows)."""
    return f"http://{class_name}{KEY_HOST_SUFFIX}"


def class_key_prefix(class_name: str) -> str:
    """The start of every key of `class_name`, up to and including the path's first slash
    (so that class `a` does not match the keys of class `a-b`)."""
    return class_key_root(class_name) + "/"
