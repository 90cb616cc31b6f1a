"""The checks of `patchcache selftest`, each against real processes on loopback.

Every check returns the figures it measured as a one-line detail, or raises
:class:`CheckFailed` with the reason. They share one throwaway deployment (:class:`Bench`): a
byte-counting origin and a Squid started with the configuration `patchcache squid-conf`
generates, with the store-ID helper, the ICAP service and the prefetcher attached, exactly as an
admin runs them. The order matters only at the end: killing the ICAP service comes last.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchcache.errors import PatchcacheError
from patchcache.installation import SQUID_USER, as_squid_user, check_runnable, console_script
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.testbed import MiB, Origin, OriginObject, bits_download, http_request
from patchcache.testbed.ports import free_port
from patchcache.testbed.squid import SquidInstance
from patchcache.testbed.squid_logs import WaitTimedOut, wait_until
from patchcache.testbed.stack import Stack


class CheckFailed(PatchcacheError):
    """A check ran and found the suite not doing what it must."""


# The rules the checks run with: the built-in packs, with limits small enough to test quickly.
SELFTEST_RULES = """\
# patchcache selftest: the built-in packs with small limits, so every check takes seconds.
[settings]
default_max_object_size = "2 MiB"
prefetch_delay = 0.5
prefetch_max_attempts = 2

[classes.windows-update]
max_object_size = "256 MiB"

[classes.delivery-optimization]
max_object_size = "4 MiB"
"""

WU_DIR = "/d/msdownload/update/software/secu/2026/11"
WU_HOSTS = (
    "download.windowsupdate.com",
    "au.download.windowsupdate.com",
    "wsus.ds.download.windowsupdate.com",
)
DO_HOST = "tlu.dl.delivery.mp.microsoft.com"
DO_GUID = "5e1f7e57-0000-4000-8000-5e1f7e570001"
PLAIN_HOST = "mirror.example.com"
# Hosts that look like a trusted one but are not: none may get a shared key.
LOOK_ALIKES = (
    "download.windowsupdate.com.evil.example",
    "evil-download.windowsupdate.com.example",
    "downloadwindowsupdate.com",
    "download.windowsupdate.co",
    "download.windowsupdate.com@evil.example",
    "download.windowsupdate.com%2eevil.example",
    "xn--download-windowsupdate-com.example",
    "download.windowsupdate.com\u2024evil.example",  # ONE DOT LEADER
    "download.wind\u043ewsupdate.com",  # CYRILLIC SMALL LETTER O
    "download.windowsupdate.\uff43om",  # FULLWIDTH LATIN SMALL LETTER C
)
# Trusted for the antivirus class, with KELVIN SIGN for K: lower-cased it would be the real host.
KELVIN_URL = "http://dnl-01.geo.\u212aaspersky.com/bases/av/kdb/i386/kdb-i386-0607g.xz.dat"
GENUINE_AV_URL = "http://dnl-01.geo.kaspersky.com/bases/av/kdb/i386/kdb-i386-0607g.xz.dat"
RANGED_SIZE = 96 * MiB  # big enough that the first range passing through costs < 2 %
MAX_UPSTREAM_RATIO = 1.02


def _c_path(path: str) -> str:
    return path.replace("/d/", "/c/", 1)


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


@dataclass
class Bench:
    """The shared deployment; `stack` is started by :meth:`start`."""

    workdir: Path
    squid_binary: str
    origin: Origin = field(default_factory=Origin)
    stack: Stack | None = None
    objects: dict[str, OriginObject] = field(default_factory=dict)

    def start(self) -> None:
        self.origin.start()
        self.stack = Stack(
            self.workdir / "stack",
            rules_text=SELFTEST_RULES,
            origin_port=self.origin.port,
            cache_size_mb=1024,
            squid_binary=self.squid_binary,
            prefetch_options=("--poll", "0.2", "--backoff", "0.2", "--max-backoff", "1"),
        )
        self.stack.start()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.origin.stop()

    @property
    def running(self) -> Stack:
        if self.stack is None or self.stack.squid is None:
            raise CheckFailed("not run: the deployment did not start")
        return self.stack

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.origin.port}{path}"

    def wu_object(self, label: str, size: int, *, corrupt: bool = False) -> OriginObject:
        obj = self.origin.register_digest_named(
            WU_DIR, size, seed=f"selftest-{label}", suffix=".msu", corrupt=corrupt
        )
        # The same bytes under the c/ prefix, as Windows Update's CDN serves them.
        self.origin.register(_c_path(obj.path), content=obj.content, etag=obj.etag or False)
        self.objects[label] = obj
        return obj

    def access_codes(self, path: str, since: int) -> list[str]:
        """Squid's result codes (e.g. TCP_HIT/206) for requests of `path` after line `since`."""
        squid = self.running.squid
        assert squid is not None
        return [e.code for e in squid.access_log_entries()[since:] if path in e.url]

    def access_count(self) -> int:
        squid = self.running.squid
        assert squid is not None
        return len(squid.access_log_lines())

    def wait_access(self, count: int) -> None:
        squid = self.running.squid
        assert squid is not None
        try:
            squid.wait_for_access_lines(count, timeout=10)
        except WaitTimedOut:
            # The short reason: the timeout's own message lists every entry seen.
            raise CheckFailed(
                f"access.log has {self.access_count()} of {count} entries after 10 s"
            ) from None

    def cached(self, url: str) -> bool:
        """Whether Squid holds `url` (`only-if-cached`: Squid answers 504 rather than fetch;
        `max-stale`: stale counts too, as for the classes with freshness "revalidate")."""
        reply = http_request(
            self.running.proxy_url,
            url,
            headers={"Cache-Control": "only-if-cached, max-stale"},
            timeout=30,
            max_body=512 * MiB,
        )
        return reply.status == 200


def check_squid_program(squid_binary: str) -> str:
    """The program runs and says it is Squid 5 or later."""
    try:
        done = subprocess.run(
            [squid_binary, "-v"], capture_output=True, text=True, timeout=20, check=False
        )
    except OSError as exc:
        raise CheckFailed(f"{squid_binary} cannot be run: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{squid_binary} -v did not finish in 20 s") from exc
    found = re.search(r"Squid Cache: Version (\d+)\.(\d+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise CheckFailed(
            f"{squid_binary} -v exited {done.returncode} without a Squid version line: "
            "not a working Squid"
        )
    if int(found.group(1)) < 5:
        raise CheckFailed(f"{found.group(0)}: patchcache needs Squid 5 or later")
    return found.group(0)


def check_installation() -> str:
    """The `patchcache` program is beside this interpreter and Squid's user can run it."""
    script = console_script()
    if os.geteuid() == 0:
        check_runnable(script)
        return f"{script} and its interpreter runnable by {SQUID_USER}"
    return f"{script} (not root: Squid and the helpers run as this user)"


def check_config_parses(bench: Bench) -> str:
    """The generated configuration passes `squid -k parse` on this Squid."""
    rules_path = bench.workdir / "parse-rules.toml"
    rules_path.write_text(SELFTEST_RULES)
    rules = load_rules(rules_path)
    body = render_squid_conf(
        rules,
        ConfOptions(
            patchcache_bin=str(console_script()),
            rules_path=rules_path,
            state_dir=bench.workdir / "parse-state",
            icap_url="icap://127.0.0.1:1344/respmod",
            url_rewrite=True,
        ),
    )
    squid = SquidInstance(body, workdir=bench.workdir / "parse", binary=bench.squid_binary)
    done = squid.parse_check(squid.render_config(free_port()))
    output = done.stdout + done.stderr
    bad = [line for line in output.splitlines() if re.search(r"FATAL|ERROR|Bungled", line)]
    if done.returncode != 0 or bad:
        raise CheckFailed(
            f"squid -k parse exited {done.returncode}: " + " | ".join(bad[-3:] or [output[-300:]])
        )
    warnings = sum("WARNING" in line for line in output.splitlines())
    return f"{len(body.splitlines())} generated lines accepted, {warnings} warnings"


class HelperSession:
    """The real store-ID helper program, as Squid runs it (as proxy, concurrency on)."""

    def __init__(self, bench: Bench) -> None:
        stack = bench.running
        self.proc = subprocess.Popen(
            [
                str(console_script()),
                "store-id",
                "--rules",
                str(stack.rules_path),
                "--state-dir",
                str(stack.state_dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=as_squid_user(),
        )
        self._buffer = b""

    def ask(self, lines: list[bytes], timeout: float = 20.0) -> list[bytes]:
        """Send lines, return exactly as many answer lines (or fail on silence or exit)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"".join(line + b"\n" for line in lines))
        self.proc.stdin.flush()
        answers: list[bytes] = []
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while len(answers) < len(lines):
            while b"\n" in self._buffer and len(answers) < len(lines):
                line, self._buffer = self._buffer.split(b"\n", 1)
                answers.append(line)
            if len(answers) == len(lines):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"helper answered {len(answers)} of {len(lines)} lines")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise CheckFailed(
                        f"helper exited (code {self.proc.wait(5)}) after "
                        f"{len(answers)} of {len(lines)} answers"
                    )
                self._buffer += chunk
        return answers

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _store_id(answer: bytes) -> str | None:
    found = re.search(rb"\bOK\b.*\bstore-id=(\S+)", answer)
    return found.group(1).decode() if found else None


def check_keys(bench: Bench) -> str:
    """Variants of one update share one key; look-alike hosts get none."""
    obj = bench.wu_object("keys", 1 * MiB)
    variants = [
        bench.url(host, path) for host in WU_HOSTS for path in (obj.path, _c_path(obj.path))
    ]
    do_variants = [
        bench.url(DO_HOST, f"/filestreamingservice/files/{DO_GUID}?P1={n}&P2=404&P3=2&P4=s{n}")
        for n in range(3)
    ]
    fakes = [f"http://{host}{obj.path}" for host in LOOK_ALIKES] + [KELVIN_URL]
    urls = variants + do_variants + fakes + [GENUINE_AV_URL]
    helper = HelperSession(bench)
    try:
        answers = helper.ask([f"{n} {url}".encode() for n, url in enumerate(urls)])
    finally:
        helper.close()
    keys = [_store_id(a.split(b" ", 1)[1] if b" " in a else a) for a in answers]
    genuine_av = keys.pop()
    if genuine_av is None:
        raise CheckFailed(f"the genuine antivirus URL got no key: {GENUINE_AV_URL}")
    wu_keys = set(keys[: len(variants)])
    do_keys = set(keys[len(variants) : len(variants) + len(do_variants)])
    fake_keys = [(url, key) for url, key in zip(fakes, keys[-len(fakes) :], strict=True) if key]
    if len(wu_keys) != 1 or None in wu_keys:
        raise CheckFailed(
            f"{len(variants)} URL variants of one update got keys {sorted(map(str, wu_keys))}"
        )
    if len(do_keys) != 1 or None in do_keys:
        raise CheckFailed(f"Delivery-Optimization variants got keys {sorted(map(str, do_keys))}")
    if fake_keys:
        raise CheckFailed(
            f"look-alike host got a shared key: {fake_keys[0][0]} -> {fake_keys[0][1]}"
        )
    return (
        f"{len(variants)} Windows Update variants -> 1 key, {len(do_variants)} DO variants -> "
        f"1 key, {len(fakes)} look-alike hosts -> no key"
    )


GARBAGE: tuple[bytes, ...] = (
    b"",
    b"   ",
    b"\x00\x01\x02 binary junk \xff\xfe",
    b"7",
    b"8 not-a-url",
    b"9 http://[::1",
    b"10 http://download.windowsupdate.com/\xff\xfe\xfd.msu",
    b"11 " + b"http://download.windowsupdate.com/" + b"a" * 70_000,
    b"12 http://download.windowsupdate.com/d/msdownload/update/%zz%00.msu extra=1 \x7f",
    b"GET / HTTP/1.1",
)


def check_helper_garbage(bench: Bench) -> str:
    """A helper fed garbage answers every line, in order, and keeps serving."""
    obj = bench.objects.get("keys") or bench.wu_object("keys", 1 * MiB)
    good = f"99 {bench.url(WU_HOSTS[0], obj.path)}".encode()
    rounds = 20
    lines = list(GARBAGE) * rounds + [good]
    helper = HelperSession(bench)
    try:
        answers = helper.ask(lines, timeout=60)
        alive = helper.proc.poll() is None
    finally:
        helper.close()
    if not alive:
        raise CheckFailed("helper exited after garbage")
    last = answers[-1]
    if not last.startswith(b"99 OK") or _store_id(last) is None:
        raise CheckFailed(f"after garbage, a good line got {last[:120]!r}")
    kinds: dict[str, int] = {}
    for answer in answers[:-1]:
        word = next((w for w in answer.split()[:2] if w in (b"OK", b"ERR", b"BH")), b"?")
        kinds[word.decode()] = kinds.get(word.decode(), 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    return (
        f"{len(lines) - 1} garbage lines answered in order ({summary}); "
        "then a good line got its key"
    )


def check_ranged_once(bench: Bench) -> str:
    """A ranged download crosses the uplink once; a second client on another variant hits."""
    stack = bench.running
    obj = bench.wu_object("ranged", RANGED_SIZE)
    first = bench.url(WU_HOSTS[0], obj.path)
    bits_download(stack.proxy_url, first, size=obj.size, verify=obj.content, timeout=240)
    if not stack.wait_queue_drained(timeout=60):
        raise CheckFailed("the prefetch queue did not drain within 60 s")
    upstream = bench.origin.bytes_sent(obj.path) + bench.origin.bytes_sent(_c_path(obj.path))
    ratio = upstream / obj.size
    if ratio > MAX_UPSTREAM_RATIO:
        raise CheckFailed(
            f"{_mib(obj.size)} object cost {ratio:.3f}x its size upstream "
            f"(limit {MAX_UPSTREAM_RATIO}x)"
        )
    since = bench.access_count()
    bench.origin.reset_counters()
    second = bench.url(WU_HOSTS[1], _c_path(obj.path))
    stats = bits_download(stack.proxy_url, second, size=obj.size, verify=obj.content, timeout=240)
    bench.wait_access(since + stats.requests)
    codes = bench.access_codes(_c_path(obj.path), since)
    hits = sum(code.startswith("TCP_HIT") for code in codes)
    again = bench.origin.bytes_sent(_c_path(obj.path)) + bench.origin.bytes_sent(obj.path)
    if hits != len(codes) or not codes or again:
        raise CheckFailed(
            f"second client: {hits} of {len(codes)} ranges TCP_HIT, {again} bytes upstream "
            f"(codes {sorted(set(codes))})"
        )
    return (
        f"{_mib(obj.size)} in {stats.requests} ranges: upstream {ratio:.4f}x its size; second "
        f"client on another host and path: {hits}/{len(codes)} TCP_HIT, 0 bytes upstream"
    )


def _fetch_twice(bench: Bench, url: str, path: str, size: int) -> tuple[list[str], float, bool]:
    since = bench.access_count()
    for _ in range(2):
        reply = http_request(bench.running.proxy_url, url, timeout=60, max_body=size + MiB)
        if reply.status != 200 or len(reply.body) != size:
            raise CheckFailed(f"{url}: status {reply.status}, {len(reply.body)} bytes")
    bench.wait_access(since + 2)
    codes = bench.access_codes(path, since)
    copies = bench.origin.copies_sent(path)
    return codes, copies, bench.cached(url)


def check_class_limit(bench: Bench) -> str:
    """An object over its class's limit is not stored (Squid's global limit is far higher)."""
    obj = bench.origin.register(f"/filestreamingservice/files/{DO_GUID}", 6 * MiB, seed="do-big")
    url = bench.url(DO_HOST, f"{obj.path}?P1=1&P2=404&P3=2&P4=sig")
    codes, copies, cached = _fetch_twice(bench, url, obj.path, obj.size)
    if copies < 2 or cached or any("HIT" in code for code in codes):
        raise CheckFailed(
            f"6 MiB object over its 4 MiB class limit: {copies:.1f} copies upstream for two "
            f"fetches, codes {codes}, cached={cached}"
        )
    return (
        f"6.0 MiB Delivery-Optimization object over its 4 MiB class limit: {copies:.1f} copies "
        f"for 2 fetches ({', '.join(codes)}), not cached"
    )


def check_default_limit(bench: Bench) -> str:
    """Ordinary content over the default limit is not stored; under it, it is (the control)."""
    big = bench.origin.register("/media/selftest-big.mp4", 4 * MiB, seed="plain-big")
    small = bench.origin.register("/media/selftest-small.bin", 1 * MiB, seed="plain-small")
    big_codes, big_copies, big_cached = _fetch_twice(
        bench, bench.url(PLAIN_HOST, big.path), big.path, big.size
    )
    small_codes, small_copies, small_cached = _fetch_twice(
        bench, bench.url(PLAIN_HOST, small.path), small.path, small.size
    )
    if big_copies < 2 or big_cached or any("HIT" in code for code in big_codes):
        raise CheckFailed(
            f"4 MiB ordinary object over the 2 MiB default: {big_copies:.1f} copies for two "
            f"fetches, codes {big_codes}, cached={big_cached}"
        )
    if small_copies != 1 or not small_cached:
        raise CheckFailed(
            f"control failed: a 1 MiB ordinary object under the default was not stored "
            f"({small_copies:.1f} copies, codes {small_codes}): the check cannot see storage"
        )
    return (
        f"4.0 MiB ordinary object over the 2 MiB default: {big_copies:.1f} copies for 2 fetches, "
        f"not cached; control 1.0 MiB object: {small_copies:.1f} copy, {small_codes[-1]}"
    )


def check_digest_mismatch(bench: Bench) -> str:
    """A body whose SHA-1 does not match its name is purged and its job parked."""
    stack = bench.running
    obj = bench.wu_object("corrupt", 4 * MiB, corrupt=True)
    url = bench.url(WU_HOSTS[0], obj.path)
    bits_download(stack.proxy_url, url, size=obj.size, stop_after=2 * MiB, timeout=60)
    status: dict[str, Any] = {}

    def parked_job() -> dict[str, object] | None:
        nonlocal status
        status = stack.status()
        return next((r for r in status["parked"] if obj.path in str(r.get("url", ""))), None)

    parked = wait_until(parked_job, lambda found: found is not None, timeout=60, interval=0.5)
    if parked is None:
        raise CheckFailed(f"corrupt object not parked within 60 s: {status['counts']}")
    error = str(parked.get("last_error", ""))
    if "mismatch" not in error:
        raise CheckFailed(f"parked for another reason: {error}")
    if bench.cached(url):
        raise CheckFailed("the corrupt copy is still in Squid's cache")
    return (
        f"corrupt 4.0 MiB object: parked after {parked.get('attempts')} attempts "
        f"({error[:80]}), not in the cache"
    )


def check_icap_bypass(bench: Bench) -> str:
    """With the ICAP service killed (bypass=on), clients are still served, byte for byte."""
    stack = bench.running
    stack.kill("icap")
    obj = bench.wu_object("bypass", 8 * MiB)
    url = bench.url(WU_HOSTS[2], obj.path)
    stats = bits_download(stack.proxy_url, url, size=obj.size, verify=obj.content, timeout=120)
    squid = stack.squid
    assert squid is not None
    if not squid.running:
        raise CheckFailed("Squid stopped after the ICAP service was killed")
    return f"ICAP service killed; {stats.requests} ranges of an 8.0 MiB object served and verified"


Check = Callable[[Bench], str]

# (name, function, needs the deployment running)
DEPLOYMENT_CHECKS: tuple[tuple[str, Check], ...] = (
    ("keys", check_keys),
    ("helper-garbage", check_helper_garbage),
    ("ranged-download-once", check_ranged_once),
    ("class-limit", check_class_limit),
    ("default-limit", check_default_limit),
    ("digest-mismatch", check_digest_mismatch),
    ("icap-bypass", check_icap_bypass),
)
