"""Ending a child process a test started: politely first, by force after a bounded wait."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (and wait, bounded, for that)."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
