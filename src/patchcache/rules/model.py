"""The rules file schema, validated by pydantic.

A rules file (TOML) names *classes* of update content. Each class says which URLs it covers
(trusted host patterns and a path regex), how the cache key is built, which query parameters are
volatile, how large an object of the class may be, and what the rest of the suite may do with it
(cache, prefetch, expand ranges, pin or revalidate).

These models only validate. `patchcache.rules.compiled` turns a validated document into the
immutable matcher that the helpers, the ICAP service and the prefetcher share.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from patchcache.rules.addresses import check_trusted_network
from patchcache.rules.regex import PathRegex, RegexError
from patchcache.rules.urls import ends_in_number

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Parse `"4 GiB"`, `"200 MB"`, `"512k"` or a plain integer into bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '4 GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("a size must be a number of bytes or a string such as '4 GiB'")
    found = _SIZE_RE.match(value)
    if found is None or found.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(
            f"cannot read {value!r} as a size; write e.g. '4 GiB', '200 MB' or 1048576"
        )
    return int(float(found.group(1)) * _SIZE_UNITS[found.group(2).lower()])


def parse_rate(value: object) -> int:
    """Parse a bandwidth such as `"10 MiB/s"` or `"8 Mbit/s"` into bytes per second."""
    if isinstance(value, str):
        text = value.strip()
        lowered = text.lower()
        for suffix, divisor in (("bit/s", 8), ("bps", 8), ("/s", 1)):
            if lowered.endswith(suffix):
                number = text[: -len(suffix)]
                if divisor == 8:
                    # "8 Mbit/s": decimal prefixes, in bits.
                    return parse_size(number.strip().upper().replace("I", "i") + "B") // 8
                return parse_size(number)
        raise ValueError(f"cannot read {value!r} as a rate; write e.g. '10 MiB/s' or '50 Mbit/s'")
    return parse_size(value)


ByteSize = Annotated[int, BeforeValidator(parse_size)]
ByteRate = Annotated[int, BeforeValidator(parse_rate)]

_HOST_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_RE = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
_WINDOW_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")
_PARAM_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$|^\*$")

Freshness = Literal["pin", "revalidate"]
DigestAlgorithm = Literal["sha1", "sha256", "md5"]


def _check_host_pattern(pattern: str) -> str:
    """Host patterns are exact names or `*.suffix`; IP literals only as exact entries."""
    text = pattern.strip().lower().rstrip(".")
    if not text:
        raise ValueError("empty host pattern")
    if text.startswith("*."):
        suffix = text[2:]
        if not _HOST_RE.match(suffix) or "." not in suffix:
            raise ValueError(
                f"host pattern {pattern!r}: after '*.' write a domain with at least two labels"
            )
        return _not_numeric(pattern, text)
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if "*" in text:
        raise ValueError(f"host pattern {pattern!r}: '*' is allowed only as a leading '*.' label")
    if not _HOST_RE.match(text):
        raise ValueError(f"host pattern {pattern!r} is not a valid host name")
    return _not_numeric(pattern, text)


def _not_numeric(pattern: str, text: str) -> str:
    """No name ends in a numeric label; URLs with such hosts are refused (rules.urls), so a
    pattern like '010.1.2.3' or '*.0.1' could only be a mistake."""
    if ends_in_number(text):
        raise ValueError(
            f"host pattern {pattern!r} ends in a numeric label: write an IP address in "
            "dotted-quad form, or a network in `trusted_networks`"
        )
    return text


class ExpandAfter(BaseModel):
    """Demand-aware expansion: a ranged object of the class is fetched whole only once `clients`
    distinct clients asked for it, or the distinct bytes asked for reach `fraction` of its size
    (whichever comes first; 0 turns a condition off). Until then its ranges pass through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: int = Field(default=0, ge=0, description="Distinct clients (0: not a condition).")
    fraction: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of the size asked for (0: not a condition)."
    )

    @model_validator(mode="after")
    def _some_condition(self) -> ExpandAfter:
        if self.clients == 0 and self.fraction == 0.0:
            raise ValueError("expand_after needs `clients` or `fraction` (or both)")
        return self


class ClassRule(BaseModel):
    """One class of content: which URLs, which key, which limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    enabled: bool = True
    hosts: tuple[str, ...] = Field(
        default=(),
        description="Trusted hosts: exact names or '*.domain' (subdomains only, not the apex).",
    )
    path: str = Field(
        default=".*",
        description="Regex matched against the whole URL path (query excluded).",
    )
    schemes: tuple[Literal["http", "https"], ...] = ("http", "https")
    key: str = Field(
        default="{path}{query}",
        description="Key template: {path}, {query} (stable params), named groups of `path`.",
    )
    volatile_params: tuple[str, ...] = Field(
        default=(),
        description="Query parameters left out of the key ('*' for all); never removed upstream.",
    )
    digest: DigestAlgorithm | None = Field(
        default=None,
        description="Algorithm of the hex digest captured by the (?P<digest>...) group of `path`.",
    )
    allow_ip_literals: bool = Field(
        default=False,
        description="Older form: also match URLs whose host is an IP address listed in `hosts` "
        "(each one exactly). Prefer `trusted_networks`; a class cannot set both.",
    )
    trusted_networks: tuple[str, ...] = Field(
        default=(),
        description="Networks (CIDR) of caches the admin vouches for: a URL whose host is an IP "
        "address inside one gets the key the class's named hosts would give it.",
    )
    connected_cache: bool = Field(
        default=False,
        description="Also map Connected Cache URLs (http://<address>/<path>?...&cacheHostOrigin="
        "<host>) whose address is in `trusted_networks` and whose origin host is in `hosts`.",
    )
    max_object_size: ByteSize = Field(default=4 * 1024**3)
    cache: bool = True
    prefetch: bool = True
    expand_ranges: bool = True
    expand_after: ExpandAfter | None = Field(
        default=None,
        description="Expand only after this much demand, e.g. { clients = 4, fraction = 0.5 } "
        "(express .psf files read in scattered ranges); default: on first sight.",
    )
    freshness: Freshness = "revalidate"
    preferred_mirror: str | None = Field(
        default=None,
        description="Base URL (scheme://host[:port]) the URL-rewrite helper sends matches to.",
    )
    prefetch_rate: ByteRate | None = Field(
        default=None, description="Bandwidth limit for this class's prefetches, e.g. '5 MiB/s'."
    )
    prefetch_windows: tuple[str, ...] = Field(
        default=(),
        description="Local-time windows 'HH:MM-HH:MM' when prefetching this class may run.",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_host_pattern(item) for item in value)

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if value and info.data.get("allow_ip_literals"):
            raise ValueError(
                "set either `trusted_networks` or the older `allow_ip_literals`, not both: list "
                "each IP address of `hosts` here as a network (a.b.c.d/32)"
            )
        return tuple(str(check_trusted_network(item)) for item in value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        # Compiled by the engine that will run it (linear-time RE2, see rules.regex).
        try:
            PathRegex(value)
        except RegexError as exc:
            raise ValueError(f"path regex {value!r} cannot be used: {exc}") from None
        return value

    @field_validator("volatile_params")
    @classmethod
    def _params(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _PARAM_RE.match(item):
                raise ValueError(f"volatile parameter {item!r} must be a plain name or '*'")
        return value

    @field_validator("prefetch_windows")
    @classmethod
    def _windows(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _WINDOW_RE.match(item):
                raise ValueError(f"window {item!r} must look like '22:00-06:00'")
        return value

    @field_validator("preferred_mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        if value is None:
            return None
        found = re.match(r"^(https?)://([A-Za-z0-9.\-]+)(:[0-9]{1,5})?/?$", value)
        if found is None:
            raise ValueError(f"preferred_mirror {value!r} must be like 'http://host[:port]'")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> ClassRule:
        groups = PathRegex(self.path).group_names
        for name in re.findall(r"\{([^{}]*)\}", self.key):
            if name not in ("path", "query") and name not in groups:
                raise ValueError(
                    f"key template uses {{{name}}} but `path` has no group (?P<{name}>...)"
                )
        if self.digest is not None and "digest" not in groups:
            raise ValueError("`digest` is set but `path` has no (?P<digest>...) group")
        if self.enabled and not self.hosts:
            raise ValueError("a class needs at least one trusted host in `hosts`")
        return self


class PresenceSite(BaseModel):
    """A local cache that clients of some subnets are sent to (enterprise content network)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subnets: tuple[str, ...]
    cache_url: str = Field(description="Base URL of that site's cache, e.g. 'http://10.1.0.5:8080'")
    classes: tuple[str, ...] = Field(default=(), description="Only these classes (default: all)")

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError as exc:
                raise ValueError(f"subnet {item!r} is not a network: {exc}") from exc
        return tuple(out)

    @field_validator("cache_url")
    @classmethod
    def _cache_url(cls, value: str) -> str:
        if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+/?$", value):
            raise ValueError(f"cache_url {value!r} must be like 'http://host[:port]'")
        return value.rstrip("/")


class Settings(BaseModel):
    """Settings that are not per class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_max_object_size: ByteSize = Field(
        default=8 * 1024**2,
        description="Largest object Squid may store for traffic outside every class.",
    )
    # URLs whose answers each helper process remembers. Only class URLs reach the helper
    # (store_id_access) and a BITS client repeats its URL within seconds, so a few thousand
    # in-flight downloads fit; a bigger table costs every new URL more (bench/storeid_vs_perl.py:
    # 4096 entries +0.4 us per distinct URL, 65536 entries +0.8 us).
    answer_cache_size: int = Field(
        default=8192,
        ge=0,
        le=10_000_000,
        description="Answers each helper process remembers, by URL.",
    )
    # The same memo bounded in bytes: Squid passes URLs of tens of kilobytes, and 8192 answers
    # for 8 KB URLs took 241 MB per helper. Estimated from the URLs' lengths.
    answer_cache_bytes: ByteSize = Field(
        default=16 * 1024**2,
        ge=0,
        le=4 * 1024**3,
        description="Memory for remembered answers in each helper process, e.g. '16 MiB'.",
    )
    prefetch_rate: ByteRate | None = Field(default=None, description="Global prefetch bandwidth.")
    prefetch_max_attempts: int = Field(default=5, ge=1, le=100)
    prefetch_delay: float = Field(
        default=10.0,
        ge=0,
        le=86400,
        description="Seconds between the first sight of an object and its prefetch job. The "
        "clients' own expanded requests usually fill the object first; the prefetcher then "
        "only verifies it (a cache hit) instead of competing with them for Squid's CPU.",
    )


class RulesDocument(BaseModel):
    """The whole rules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packs: tuple[str, ...] | None = Field(
        default=None, description="Built-in packs to enable by name; omit for all of them."
    )
    settings: Settings = Settings()
    classes: dict[str, ClassRule] = Field(default_factory=dict)
    presence: tuple[PresenceSite, ...] = ()

    @field_validator("classes")
    @classmethod
    def _names(cls, value: dict[str, ClassRule]) -> dict[str, ClassRule]:
        for name in value:
            if not re.match(r"^[a-z0-9][a-z0-9-]{0,40}$", name):
                raise ValueError(
                    f"class name {name!r}: use lower-case letters, digits and '-' (max 41)"
                )
        return value


class PackDocument(BaseModel):
    """A built-in rule pack: classes only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    classes: dict[str, ClassRule]
