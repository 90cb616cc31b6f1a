"""The key scheme of each class: everything that decides which cache key a URL gets in it.

The shared state keeps one record per key. A record is only right while the key still names the
same content, so the state remembers the scheme each class had when its records were written
(`patchcache.state.keyschemes`) and retires a class's records when its scheme changes.

What is in a class's scheme (see `CompiledRules.key_for` and `_render_key`):

- ``hosts``, ``schemes``, ``path``, ``allow_ip_literals``: which URLs the class takes. A new host
  or a looser path can bring URLs of other content onto existing keys.
- ``trusted_networks`` and ``connected_cache``: which IP-literal and Connected Cache URLs the
  class takes (`patchcache.rules.addresses`); a new network brings whatever answers there onto
  existing keys. Both are in the scheme only when networks are set: without them neither
  changes any key, and adding the fields left every existing scheme as it was.
- ``key`` and ``volatile_params``: how the key is rendered from the URL.
- `KEY_SCHEME_VERSION`, the key host suffix and the case-insensitive group names: the code's
  share of the key. Bump `KEY_SCHEME_VERSION` whenever a release changes how keys are rendered
  or how URLs are split (`patchcache.rules.urls`): every class is then retired once.

What is not, because the key of a URL does not depend on it: ``description``, ``enabled`` (a
disabled class keeps its recorded scheme; its keys are reached by no URL meanwhile), ``digest``
(the algorithm checked by the prefetcher, not part of the key), the class's place in matching
order (keys carry the class name, so a URL that moves to another class gets another key), the
flags ``cache``, ``prefetch``, ``expand_ranges``, ``expand_after``, ``freshness``,
``preferred_mirror`` and the prefetch rate and windows. ``max_object_size`` is kept apart
(recorded beside the scheme): a new limit re-judges the class's records by size instead of
retiring them (see `patchcache.state.keyschemes`).

Hosts, schemes and volatile parameters are sets to the matcher, so they are sorted here:
reordering a list in the rules file does not retire anything.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from patchcache.key_host import KEY_HOST_SUFFIX
from patchcache.rules.compiled import CASELESS_GROUPS
from patchcache.rules.model import ClassRule

KEY_SCHEME_VERSION = 1
"""Version of the key rendering code. Bump it when a release changes keys for unchanged rules."""


def scheme_fields(rule: ClassRule) -> dict[str, Any]:
    """The parts of `rule` (and of the code) that decide the key of a URL, as plain JSON values."""
    return {
        "version": KEY_SCHEME_VERSION,
        "key_host_suffix": KEY_HOST_SUFFIX,
        "caseless_groups": sorted(CASELESS_GROUPS),
        "hosts": sorted(rule.hosts),
        "schemes": sorted(rule.schemes),
        "path": rule.path,
        "allow_ip_literals": rule.allow_ip_literals,
        "key": rule.key,
        "volatile_params": sorted(rule.volatile_params),
        **_address_fields(rule),
    }


def _address_fields(rule: ClassRule) -> dict[str, Any]:
    if not rule.trusted_networks:
        return {}
    return {
        "trusted_networks": sorted(rule.trusted_networks),
        "connected_cache": rule.connected_cache,
    }


def fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of `scheme_fields()` output."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
