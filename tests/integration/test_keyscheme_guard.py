"""The key-scheme guard with real processes: `patchcache store-id`, `prefetch` and `status`
started against a state dir built with older rules.

The state is built the way a running installation builds it: a store-ID helper started with the
old rules records their key schemes, then objects of two classes are recorded and queued. The
rules then change one class; the services started on the new rules must retire that class's
records (one warning, from one process, however many start together) and keep the other's.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from patchcache.installation import console_script
from patchcache.rules import CompiledRules, load_rules
from patchcache.state import StateStore

TIMEOUT = 60.0
RULES = """
packs = []

[classes.alpha]
hosts = ["a.example"]
path = '^/files/(?P<name>[^/]+)$'
key = "/f/{{name}}{{query}}"
volatile_params = [{alpha_volatile}]

[classes.beta]
hosts = ["b.example"]
path = '^/.*$'
key = "{beta_key}"
"""
ALPHA_URL = "http://a.example/files/kb1.cab?token=abc&v=2"
BETA_URL = "http://b.example/pkg/kb2.cab"


def write_rules(
    path: Path, *, alpha_volatile: str = '"token"', beta_key: str = "{{path}}{{query}}"
) -> CompiledRules:
    path.write_text(RULES.format(alpha_volatile=alpha_volatile, beta_key=beta_key))
    return load_rules(path)


def start_helper(rules: Path, state_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(console_script()), "store-id", "--rules", str(rules), "--state-dir", str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def answers(proc: subprocess.Popen[str], *urls: str) -> tuple[list[str], str]:
    """Send `urls` (one channel each), close stdin; the replies by channel, and stderr."""
    lines = "".join(f"{n} {url} -\n" for n, url in enumerate(urls))
    out, err = proc.communicate(lines, timeout=TIMEOUT)
    assert proc.returncode == 0, err
    by_channel = dict(line.split(" ", 1) for line in out.splitlines())
    return [by_channel[str(n)] for n in range(len(urls))], err


def key_of(rules: CompiledRules, url: str) -> str:
    match = rules.match(url)
    assert match is not None
    return match.key


def build_old_state(tmp_path: Path) -> tuple[Path, CompiledRules]:
    state_dir = tmp_path / "state"
    old_path = tmp_path / "old.toml"
    old = write_rules(old_path)
    replies, err = answers(start_helper(old_path, state_dir), ALPHA_URL, BETA_URL)
    assert err == ""  # a new state dir adopts the rules' schemes silently
    assert all("expand" not in reply for reply in replies)  # nothing known yet
    with StateStore(state_dir) as store:
        for url, cls in ((ALPHA_URL, "alpha"), (BETA_URL, "beta")):
            assert store.record_first_sight(key_of(old, url), url, cls, 4096, None, None)
        assert store.queue_length() == 2
    return state_dir, old


def test_helpers_started_on_changed_rules_retire_only_the_changed_class(tmp_path: Path) -> None:
    state_dir, old = build_old_state(tmp_path)
    new_path = tmp_path / "new.toml"
    new = write_rules(new_path, alpha_volatile='"token", "v"')
    assert key_of(new, ALPHA_URL) != key_of(old, ALPHA_URL)
    assert key_of(new, BETA_URL) == key_of(old, BETA_URL)

    # Squid starts several helpers at once: they all compare, one retires.
    helpers = [start_helper(new_path, state_dir) for _ in range(4)]
    results = [answers(proc, ALPHA_URL, BETA_URL) for proc in helpers]

    warnings = [line for _, err in results for line in err.splitlines()]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning.startswith("patchcache store-id: warning: state dir ")
    assert "key scheme changed for class(es) alpha (volatile_params)" in warning
    assert "beta" not in warning
    assert "retired 1 record(s) and 1 queued job(s)" in warning
    for (alpha_reply, beta_reply), _ in results:
        assert alpha_reply == f"OK store-id={key_of(new, ALPHA_URL)}"  # no expand=1
        assert beta_reply == f"OK store-id={key_of(new, BETA_URL)} expand=1"

    with StateStore(state_dir) as store:
        assert store.get(key_of(old, ALPHA_URL)) is None
        beta = store.get(key_of(old, BETA_URL))
        assert beta is not None and beta.class_name == "beta"
        assert [job.class_name for job in store.jobs()] == ["beta"]
        assert [(e.class_name, e.kind) for e in store.retirements()] == [("alpha", "key_scheme")]


def test_prefetcher_on_changed_rules_fetches_no_stale_job(tmp_path: Path) -> None:
    state_dir, old = build_old_state(tmp_path)
    with StateStore(state_dir) as store:
        assert store.forget(key_of(old, ALPHA_URL))  # only the job that goes stale is queued
    new_path = tmp_path / "new.toml"
    write_rules(new_path, beta_key="/b{{path}}")
    # A proxy that would see any fill: nothing may connect to it.
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(8)
        proxy.settimeout(0.0)
        port = proxy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "patchcache.prefetch",
                "prefetch",
                "--once",
                "--proxy",
                f"http://127.0.0.1:{port}",
                "--state-dir",
                str(state_dir),
                "--rules",
                str(new_path),
                "--idle-timeout",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        try:
            proxy.accept()
            connected = True
        except BlockingIOError:
            connected = False
    assert not connected, "the prefetcher fetched a job of a retired class"
    assert done.stdout.startswith("completed 0, failed 0, parked 0, refused 0"), done.stdout
    warnings = [line for line in done.stderr.splitlines() if "key scheme changed" in line]
    assert len(warnings) == 1 and "class(es) beta (key)" in warnings[0], done.stderr
    with StateStore(state_dir) as store:
        assert store.queue_length() == 0
        assert store.records() == []


def test_status_names_the_retired_classes(tmp_path: Path) -> None:
    state_dir, _old = build_old_state(tmp_path)
    new_path = tmp_path / "new.toml"
    write_rules(new_path, alpha_volatile="")
    answers(start_helper(new_path, state_dir), ALPHA_URL)
    status = [str(console_script()), "status", "--state-dir", str(state_dir)]
    text = subprocess.run(status, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert "1 retirement(s) on record" in text.stdout
    assert (
        "alpha  retired " in text.stdout and "key scheme changed (volatile_params)" in text.stdout
    )
    doc = json.loads(
        subprocess.run(
            [*status, "--json"], capture_output=True, text=True, timeout=TIMEOUT, check=True
        ).stdout
    )
    assert [e["class"] for e in doc["key_schemes"]["retired"]] == ["alpha"]


def test_icap_service_start_retires_the_changed_class(tmp_path: Path) -> None:
    state_dir, old = build_old_state(tmp_path)
    new_path = tmp_path / "new.toml"
    write_rules(new_path, alpha_volatile="")
    command = [str(console_script()), "icap", "--rules", str(new_path)]
    command += ["--state-dir", str(state_dir), "--listen", "127.0.0.1:0", "--workers", "2"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            lines: list[str] = []
            while not lines or "listening on" not in lines[-1]:
                line = proc.stderr.readline()
                assert line, f"icap service ended early: {lines}"
                lines.append(line)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    warnings = [line for line in lines if "key scheme changed" in line]
    assert len(warnings) == 1 and "class(es) alpha (volatile_params)" in warnings[0], lines
    with StateStore(state_dir) as store:
        assert store.get(key_of(old, ALPHA_URL)) is None
        assert store.get(key_of(old, BETA_URL)) is not None
