"""Ranged-download scenarios run against each Squid profile, measuring upstream bytes.

The headline measure of the project: bytes the origin actually sent, divided by the object size,
with many BITS-like clients downloading by sequential 1 MiB ranges. 1.0 is the physical limit;
Squid's default costs one copy per client. The origin counts bytes written to its sockets, so
aborted transfers count what really crossed the "uplink".

Used by `patchcache demo` and `bench/amplification.py`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from patchcache.testbed import MiB, Origin, OriginObject, run_clients
from patchcache.testbed.clients import run_sparse_clients
from patchcache.testbed.stack import PROFILES, Profile, Stack

DO_GUID = "7f3c1d2e-8a9b-4c5d-9e0f-112233445566"


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One object served by the origin and how clients fetch it."""

    label: str
    size: int
    # "wu" (digest-named), "do" (GUID + per-client query), "plain" (ordinary content), "psf"
    # (an express payload read by each client in 256 KiB ranges at random offsets, read_bytes
    # each, from its own loopback address)
    kind: str
    clients: int
    variants: int = 1  # distinct URLs among the clients (hosts / query strings)
    read_bytes: int | None = None  # each client reads only this much (ordinary content)
    stagger: float = 0.2
    head: bool = False  # clients learn the size with a HEAD first (BITS); else they know it (DO)
    per_size: bool = False  # partial reads, but measured per object size (many sparse readers)


@dataclass
class FileResult:
    label: str
    size: int
    upstream: int
    asked: int
    elapsed: float
    partial: bool = False  # clients read only part of the object (ordinary content)

    @property
    def ratio(self) -> float:
        """Upstream bytes per object size; for partial reads, per byte the clients asked for."""
        return self.upstream / (self.asked if self.partial else self.size)


@dataclass
class ProfileResult:
    profile: Profile
    files: list[FileResult] = field(default_factory=list)


WU_HOSTS = (
    "download.windowsupdate.com",
    "au.download.windowsupdate.com",
    "wsus.ds.download.windowsupdate.com",
)
DO_HOSTS = (
    "tlu.dl.delivery.mp.microsoft.com",
    "2.tlu.dl.delivery.mp.microsoft.com",
    "dl.delivery.mp.microsoft.com",
)

DEMO_RULES = """\
# Demo rules: the built-in packs, with one limit for ordinary traffic.
[settings]
default_max_object_size = "8 MiB"
"""


# Sparse clients come from 127.0.0.x addresses (distinct clients to Squid and patchcache).
LOOPBACK_CLIENTS = (
    "acl pc_loopback_clients src 127.0.0.0/8\nhttp_access allow pc_loopback_clients\n"
)


def _register(origin: Origin, spec: FileSpec) -> OriginObject:
    if spec.kind == "psf":
        return origin.register_digest_named(
            "/d/msdownload/update/software/updt/2026/11",
            spec.size,
            seed=spec.label,
            stem=f"windows10.0-kb{5050000 + spec.size % 9973}-x64-express",
            suffix=".psf",
        )
    if spec.kind == "wu":
        obj = origin.register_digest_named(
            "/d/msdownload/update/software/secu/2026/11",
            spec.size,
            seed=spec.label,
            stem=f"windows10.0-kb{5040000 + spec.size % 9973}-x64",
            suffix=".msu",
        )
        # The same bytes under the c/ prefix, as Windows Update's CDN serves them.
        origin.register(_c_path(obj.path), content=obj.content, etag=obj.etag or False)
        return obj
    if spec.kind == "do":
        # One GUID per scenario: two DO scenarios must not replace each other's object.
        guid = DO_GUID[:-12] + hashlib.sha1(spec.label.encode()).hexdigest()[:12]
        return origin.register(f"/filestreamingservice/files/{guid}", spec.size, seed=spec.label)
    slug = re.sub(r"[^a-z0-9]+", "-", spec.label.lower()).strip("-")
    return origin.register(f"/media/{slug}.mp4", spec.size, seed=spec.label)


def _c_path(path: str) -> str:
    return path.replace("/d/", "/c/", 1)


def _paths(obj: OriginObject, spec: FileSpec) -> list[str]:
    return [obj.path, _c_path(obj.path)] if spec.kind == "wu" else [obj.path]


def _urls(origin: Origin, obj: OriginObject, spec: FileSpec) -> list[str]:
    urls = []
    for client in range(spec.clients):
        variant = client % spec.variants
        if spec.kind == "wu":
            path = obj.path if variant % 2 == 0 else _c_path(obj.path)
            urls.append(_url(origin, WU_HOSTS[variant % len(WU_HOSTS)], path))
        elif spec.kind == "do":
            query = f"?P1={1800000000 + client}&P2=404&P3=2&P4=sig{client:04d}{variant}"
            urls.append(_url(origin, DO_HOSTS[variant % len(DO_HOSTS)], obj.path + query))
        else:
            urls.append(_url(origin, "mirror.example.com", obj.path))
    return urls


def _url(origin: Origin, host: str, path_query: str) -> str:
    return f"http://{host}:{origin.port}{path_query}"


def run_profile(
    profile: Profile,
    specs: list[FileSpec],
    *,
    workdir: Path,
    rules_text: str = DEMO_RULES,
    progress: Callable[[str], None] = lambda _msg: None,
    timeout: float = 600.0,
    head_lookup: bool = True,
) -> ProfileResult:
    """Run every file's clients through `profile`, each file on a fresh stack (an empty cache, and
    no disk writeback of the previous file competing with this one), return upstream bytes."""
    result = ProfileResult(profile)
    with Origin() as origin:
        objects = [_register(origin, spec) for spec in specs]
        for number, (spec, obj) in enumerate(zip(specs, objects, strict=True)):
            stack_dir = workdir / f"{profile}-{number}"
            with Stack(
                stack_dir,
                profile=profile,
                rules_text=rules_text,
                head_lookup=head_lookup,
                extra_config=LOOPBACK_CLIENTS,
            ) as stack:
                progress(f"{profile}: {spec.label}: {spec.clients} clients")
                origin.reset_counters()
                began = time.monotonic()
                if spec.kind == "psf":
                    stats = run_sparse_clients(
                        stack.proxy_url,
                        _url(origin, WU_HOSTS[0], obj.path),
                        spec.clients,
                        size=obj.size,
                        read_bytes=spec.read_bytes or obj.size,
                        verify=obj.content,
                        stagger=spec.stagger,
                        timeout=timeout,
                    )
                else:
                    stats = run_clients(
                        stack.proxy_url,
                        _urls(origin, obj, spec),
                        size=None if spec.head else obj.size,
                        verify=obj.content,
                        stagger=spec.stagger,
                        stop_after=spec.read_bytes,
                        timeout=timeout,
                    )
                elapsed = time.monotonic() - began
                if profile == "patchcache":
                    stack.wait_queue_drained(timeout=timeout)
                upstream = sum(origin.bytes_sent(path) for path in _paths(obj, spec))
                asked = sum(s.bytes_received for s in stats)
                result.files.append(
                    FileResult(
                        spec.label,
                        obj.size,
                        upstream,
                        asked,
                        elapsed,
                        spec.read_bytes is not None and not spec.per_size,
                    )
                )
            shutil.rmtree(stack_dir, ignore_errors=True)  # free the disk for the next file
    return result


def run_all(
    specs: list[FileSpec],
    *,
    profiles: tuple[Profile, ...] = PROFILES,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[ProfileResult]:
    with tempfile.TemporaryDirectory(prefix="patchcache-demo-") as tmp:
        base = workdir or Path(tmp)
        return [run_profile(p, specs, workdir=base, progress=progress) for p in profiles]


def format_table(results: list[ProfileResult]) -> str:
    """Upstream MiB and copies (upstream / size) per file and profile."""
    labels = [f.label for f in results[0].files]
    head = f"{'file':<34} {'size':>8} " + " ".join(f"{r.profile:>22}" for r in results)
    lines = [head, "-" * len(head)]
    for index, label in enumerate(labels):
        size = results[0].files[index].size
        cells = []
        for res in results:
            f = res.files[index]
            cells.append(f"{f.upstream / MiB:>9.1f} MiB {f.ratio:>6.2f}x")
        lines.append(f"{label:<34} {size / MiB:>4.0f} MiB " + " ".join(f"{c:>22}" for c in cells))
    lines.append("")
    lines.append(
        "updates: upstream bytes / file size: 1.00x is one copy for all clients (the limit);"
    )
    lines.append("Squid's default costs one copy per client. Ordinary content read in part:")
    lines.append("upstream bytes / bytes the clients asked for (1.00x: nothing fetched in vain).")
    return "\n".join(lines)
