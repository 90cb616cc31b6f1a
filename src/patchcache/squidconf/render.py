"""Generate the squid.conf lines that attach patchcache to an existing Squid (5.x and later).

Every line here rests on a fact measured on Squid 5.7 (docs/squid-behaviour.md):

- `store_id_bypass off` with `queue-size=`: with the default `on`, a busy helper pool silently
  stores objects under their raw URL.
- `store_id_access` lets only the classes' hosts reach the helper (everything else costs nothing),
  and never the helper's own size look-up (a HEAD marked `X-PatchCache-Probe`, `--head-via`),
  which the ICAP service does not see either.
- Guards: a redirect or an error stored under a mapped key would be served to every variant, so
  `store_miss` and `send_hit` refuse anything but 200/206 for requests that carry a store-id.
- Per-class maximum object sizes in pure Squid: the global `maximum_object_size` is raised to the
  largest class limit and `store_miss deny` refuses replies whose Content-Length is over the limit
  of their class (`rep_header` ACLs are fast, so `store_miss` can use them). The ICAP service
  refines this (path-exact classes, chunked replies, 206 totals); since it can only add
  refusals, with ICAP a host also trusted by a class with a larger limit is left to it.
- `icap_service_revival_delay 30`: an ICAP service down at Squid start (or restarted) is used
  again after 30 s (Squid's minimum) instead of 180 s.
- Expansion decided per request: the helper's `expand=1` note drives `range_offset_limit none`
  and `collapsed_forwarding_access`.
- The report log: a `logformat patchcache` line adding what Squid's default log lacks (bytes
  read from upstream, the store-ID key) for `patchcache report`, in its own file. Squid writes
  its built-in access.log only while squid.conf has no `access_log` line at all (Debian's has
  none), so the default one is declared again beside it unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patchcache.helpers.head_probe import PROBE_HEADER
from patchcache.report.parse import PATCHCACHE_LOGFORMAT
from patchcache.rules import CompiledClass, CompiledRules
from patchcache.squidconf.acls import (
    class_acl_lines,
    dstdomain_entries,
    greater_than_regex,
    hosts_and_networks_acl,
    hosts_overlap,
    networks_overlap,
)
from patchcache.squidconf.delay_pools import render_delay_pools
from patchcache.squidconf.peers import parent_lines


@dataclass(frozen=True, slots=True)
class ConfOptions:
    """Where things are and which parts to emit."""

    patchcache_bin: str = "/usr/bin/patchcache"
    rules_path: Path | None = None
    state_dir: Path | None = None
    # Or a Redis state (redis://…), with the file holding its password.
    state_url: str | None = None
    state_password_file: Path | None = None
    icap_url: str | None = None
    icap_bypass: bool = True
    url_rewrite: bool = False
    # The proxy's own address (http://127.0.0.1:3128): the store-ID helper sends one HEAD
    # through it to learn the size of an object first seen without one (needs state_dir).
    head_via: str | None = None
    store_id_children: int = 8
    concurrency: int = 50
    purge_from_localhost: bool = True
    # patchcache's own access log for `patchcache report` (None: not written).
    report_log: Path | None = Path("/var/log/squid/patchcache.log")
    # Declare Squid's default access.log again (any access_log line turns the default off).
    keep_access_log: bool = True
    parent: str | None = None  # a branch: class downloads go through this parent proxy

    @property
    def has_state(self) -> bool:
        return self.state_dir is not None or self.state_url is not None

    def state_arg(self) -> str:
        """The helper's state options (empty without a state)."""
        if self.state_dir is not None:
            return f" --state-dir {self.state_dir}"
        if self.state_url is None:
            return ""
        password = self.state_password_file
        return f" --state {self.state_url}" + (
            f" --state-password-file {password}" if password is not None else ""
        )


# Squid's default store_id_extras, then the request's Range header (`range=-` without one).
STORE_ID_EXTRAS = "%>a/%>A %un %>rm myip=%la myport=%lp range=%>h{Range}"
DEFAULT_ACCESS_LOG = "daemon:/var/log/squid/access.log squid"


def _report_log_lines(opts: ConfOptions) -> list[str]:
    if opts.report_log is None:
        return []
    lines = [
        "# patchcache's own access log: bytes from upstream (%<bs) and store-ID key per request,",
        "# for `patchcache report` (exact bytes saved per class).",
        f"logformat patchcache {PATCHCACHE_LOGFORMAT}",
        f"access_log daemon:{opts.report_log} patchcache",
    ]
    if opts.keep_access_log:
        lines += [
            "# Squid writes its default access.log only while no access_log line exists: keep it",
            "# (drop this line if your squid.conf declares its own access_log).",
            f"access_log {DEFAULT_ACCESS_LOG}",
        ]
    return [*lines, ""]


def _key_prefix_regex(cls: CompiledClass) -> str:
    """The start of the class's store-ID keys as a refresh_pattern regex (Squid matches
    refresh_pattern against the store ID; class names are [a-z0-9-])."""
    return (cls.key_prefix + "/").replace(".", "\\.")


def _size_squid(value: int) -> str:
    return f"{max(1, (value + 1023) // 1024)} KB"


def helper_queue_size(opts: ConfOptions) -> int:
    """Requests Squid may queue for a helper pool before it counts as overloaded: twice what
    the pool holds at once (a helper without concurrency holds one)."""
    return opts.store_id_children * max(1, opts.concurrency) * 2


def _children_options(opts: ConfOptions) -> str:
    # Squid's default on-persistent-overload=die stops the worker once the queue has stayed
    # over queue-size for 3 minutes (docs/squid-behaviour.md); ERR drops lookups instead.
    return (
        f"{opts.store_id_children} startup=1 idle=1 concurrency={opts.concurrency} "
        f"queue-size={helper_queue_size(opts)} on-persistent-overload=ERR"
    )


def render_squid_conf(rules: CompiledRules, opts: ConfOptions) -> str:
    """The snippet, to be included before the admin's own `http_access` rules."""
    caching = [c for c in rules.classes if c.rule.cache]
    rules_arg = f" --rules {opts.rules_path}" if opts.rules_path else ""
    state_arg = opts.state_arg()
    probing = opts.head_via is not None and opts.has_state
    if probing:
        state_arg += f" --head-via {opts.head_via}"
    lines: list[str] = [
        "# --- patchcache: generated by `patchcache squid-conf`; include before http_access ---",
        f"# rules fingerprint {rules.fingerprint}; sources: {', '.join(rules.sources)}",
        "",
    ]
    if not caching:
        lines.append("# no class allows caching: nothing to attach")
        return "\n".join(lines) + "\n"

    lines.append("# Hosts of the classes that may be cached (the helpers check host and path).")
    lines += class_acl_lines("pc_classes", caching)
    lines.append("acl pc_keyed note store-id")
    lines.append("acl pc_good_status http_status 200 206")
    lines.append("")
    if opts.parent is not None:
        lines += parent_lines(opts.parent)

    lines.append("# Store-ID: one key for every URL variant of the same content.")
    lines.append(f"store_id_program {opts.patchcache_bin} store-id{rules_arg}{state_arg}")
    lines.append(
        "# Overloaded helpers degrade instead of stopping Squid: after 3 minutes of a full queue"
    )
    lines.append("# Squid answers ERR itself (the URL is its own key) until the queue drains.")
    lines.append(f"store_id_children {_children_options(opts)}")
    lines.append("store_id_bypass off")
    if probing:
        lines.append("# The helper's own HEAD (size look-up): no key, no expansion, no recursion.")
        lines.append(f"acl pc_probe req_header {PROBE_HEADER} .")
        lines.append("store_id_access deny pc_probe")
        lines.append("# Default extras and the Range header: sizes are looked up for ranges only.")
        lines.append(f'store_id_extras "{STORE_ID_EXTRAS}"')
    lines.append("store_id_access allow pc_classes")
    lines.append("store_id_access deny all")
    lines.append("# Never keep or serve a redirect or an error under a key shared by many URLs.")
    lines.append("store_miss deny pc_keyed !pc_good_status")
    lines.append("send_hit deny pc_keyed !pc_good_status")
    lines.append("")

    if opts.url_rewrite:
        lines.append("# Presence: nearest cache (302) or preferred mirror for class downloads.")
        lines.append(f"url_rewrite_program {opts.patchcache_bin} url-rewrite{rules_arg}")
        lines.append(f"url_rewrite_children {_children_options(opts)}")
        lines.append("url_rewrite_access allow pc_classes")
        lines.append("url_rewrite_access deny all")
        lines.append("url_rewrite_timeout 5 seconds on_timeout=bypass")
        lines.append("")

    largest = max(c.max_object_size for c in caching)
    default = rules.settings.default_max_object_size
    lines.append("# Per-class maximum object sizes (Squid has one global limit).")
    lines.append(f"maximum_object_size {_size_squid(max(largest, default))}")
    lines.append(f"acl pc_over_default rep_header Content-Length {greater_than_regex(default)}")
    lines.append("store_miss deny pc_over_default !pc_classes")
    by_limit: dict[int, list[CompiledClass]] = {}
    for cls in caching:
        by_limit.setdefault(cls.max_object_size, []).append(cls)
    for number, (limit, group) in enumerate(sorted(by_limit.items())):
        if limit >= largest:
            continue
        lines += class_acl_lines(f"pc_limit{number}_hosts", group)
        lines.append(
            f"acl pc_limit{number}_over rep_header Content-Length {greater_than_regex(limit)}"
        )
        # A host shared with a class of a larger limit: the ICAP service knows the class of
        # each response (by path) and refuses exactly; a host-wide rule would also refuse the
        # larger class's objects, and ICAP can only add refusals. Without ICAP, stay strict.
        group_hosts = [p for c in group for p in c.rule.hosts]
        larger = [
            q
            for c in caching
            if c.max_object_size > limit
            for q in c.rule.hosts
            if any(hosts_overlap(p, q) for p in group_hosts)
        ]
        group_nets = [n for c in group for n in c.rule.trusted_networks]
        larger_nets = [
            q
            for c in caching
            if c.max_object_size > limit
            for q in c.rule.trusted_networks
            if any(networks_overlap(p, q) for p in group_nets)
        ]
        if opts.icap_url is not None and (larger or larger_nets):
            lines += hosts_and_networks_acl(
                f"pc_limit{number}_larger", dstdomain_entries(larger), larger_nets
            )
            lines.append(
                f"store_miss deny pc_limit{number}_hosts !pc_limit{number}_larger "
                f"pc_limit{number}_over"
            )
        else:
            lines.append(f"store_miss deny pc_limit{number}_hosts pc_limit{number}_over")
    lines.append("")

    revalidated = [c for c in caching if c.rule.freshness == "revalidate"]
    if revalidated:
        lines.append(
            "# Revalidated classes: names reused for new content (definitions, installers)."
        )
        lines.append(
            "# No heuristic freshness: every hit is checked with the origin (304 if unchanged)."
        )
        for cls in revalidated:
            lines.append(f"refresh_pattern ^{_key_prefix_regex(cls)} 0 0% 0")
        lines.append("")

    pinned = [c for c in caching if c.rule.freshness == "pin"]
    if pinned:
        lines.append("# Pinned classes: content named by digest/GUID/version never changes.")
        for cls in pinned:
            lines.append(
                f"refresh_pattern ^{_key_prefix_regex(cls)} 10080 100% 525600 "
                "override-expire override-lastmod ignore-reload ignore-no-store ignore-private"
            )
        lines.append("")

    if opts.has_state:
        lines.append("# Per-request range expansion: only where the helper said expand=1.")
        lines.append("acl pc_expand note expand 1")
        lines.append("range_offset_limit none pc_expand")
        lines.append("collapsed_forwarding on")
        lines.append("collapsed_forwarding_access allow pc_expand")
        lines.append("collapsed_forwarding_access deny all")
        lines.append("")

    if opts.icap_url is not None:
        bypass = "on" if opts.icap_bypass else "off"
        lines.append(
            "# ICAP: per-class limits on the real response, first sight of ranged downloads."
        )
        lines.append("icap_enable on")
        # An ICAP service that failed its OPTIONS (not yet up when Squid started, restarted)
        # is bypassed until the revival delay has passed: with Squid's default of 180 s a
        # download starting meanwhile skipped the per-class checks and the first sight (4.0x
        # the object upstream instead of 1.02x, measured). 30 s is Squid's hard minimum.
        lines.append("icap_service_revival_delay 30")
        lines.append("icap_preview_enable on")
        lines.append("icap_persistent_connections on")
        if any(c.rule.expand_after is not None for c in caching):
            # Demand-aware classes (expand_after) count distinct clients: X-Client-IP.
            lines.append("icap_send_client_ip on")
        lines.append(f"icap_service pc_respmod respmod_precache {opts.icap_url} bypass={bypass}")
        if probing:
            lines.append("adaptation_access pc_respmod deny pc_probe")
        lines.append("adaptation_access pc_respmod allow pc_classes")
        lines.append("adaptation_access pc_respmod deny all")
        lines.append('adaptation_meta X-PC-StoreID "%note{store-id}"')
        # The ICAP service stores a chunked whole response (no length) only when the helper
        # expanded it (its size is known and within the class limit).
        lines.append('adaptation_meta X-PC-Expand "%note{expand}"')
        lines.append("acl pc_nostore rep_header X-PatchCache-Store ^no")
        lines.append("store_miss deny pc_nostore")
        lines.append("")

    if opts.has_state:
        # The prefetcher marks its requests with its class; only Squid's delay pools can slow
        # the origin side of a fill (pacing the reader does not: Squid reads ahead).
        pools = render_delay_pools(rules)
        if pools:
            lines.append(pools.rstrip("\n"))
            lines.append("")

    if opts.purge_from_localhost and opts.has_state:
        lines.append("# PURGE from this host only (the prefetcher purges bad digests).")
        lines.append("acl pc_purge method PURGE")
        lines.append("http_access allow pc_purge localhost")
        lines.append("http_access deny pc_purge")
        lines.append("")
    lines += _report_log_lines(opts)
    lines.append("# --- end of patchcache ---")
    return "\n".join(lines) + "\n"
