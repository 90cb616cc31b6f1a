"""squid.conf generation: the lines that attach patchcache to an existing Squid (5.x and later).

- `render`: the snippet of one proxy (`ConfOptions`, `render_squid_conf`): store-ID, guards,
  per-class size limits, freshness, expansion, ICAP, PURGE and the report log.
- `acls`: dstdomain lists for host patterns and size regexes, the ACL building blocks.
- `delay_pools`: the delay pools that hold prefetch fills to their rates on the WAN.
- `peers`: more than one proxy: a branch's parent, a CARP farm's back ends.
- `farm`: the whole block of a CARP farm's front (`render_farm_front`).
- `examples`: the examples shipped in squid_conf_examples/ (``python -m
  patchcache.squidconf.examples DIR`` rewrites them).

Nothing here imports the prefetcher, the ICAP service or the state: generating a configuration
needs only the rules (tests/unit/test_squidconf_imports.py holds that).
"""

from patchcache.squidconf.farm import render_farm_front
from patchcache.squidconf.render import ConfOptions, helper_queue_size, render_squid_conf

__all__ = ["ConfOptions", "helper_queue_size", "render_farm_front", "render_squid_conf"]
