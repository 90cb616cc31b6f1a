"""The installed `patchcache` program runs as Squid's user, found beside this interpreter.

A venv made from an interpreter under a private directory (a pyenv build in root's home, mode
0700) installs a console script that root runs fine and `proxy` cannot: every helper Squid
starts then dies. These tests hold the installation this suite runs from to that standard.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from patchcache.installation import (
    InstallationError,
    as_squid_user,
    blocked_for,
    check_runnable,
    console_script,
    interpreter_of,
)


def test_console_script_is_beside_the_running_interpreter() -> None:
    script = console_script()
    assert script.parent == Path(sys.executable).parent
    interpreter = interpreter_of(script)
    assert interpreter is not None
    assert interpreter.parent == Path(sys.executable).parent


def test_console_script_and_its_interpreter_runas_squid_user() -> None:
    script = console_script()
    interpreter = interpreter_of(script)
    assert interpreter is not None
    # The static check, with a reason naming the blocking directory if it fails ...
    assert blocked_for(script) is None
    assert blocked_for(interpreter) is None
    check_runnable(script)
    if os.geteuid() != 0:
        pytest.skip("running the script as proxy needs root")
    # ... and the real thing: the kernel's verdict, as Squid will meet it.
    done = subprocess.run(
        [str(script), "--version"],
        preexec_fn=as_squid_user(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "patchcache" in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a private directory for proxy")
def test_interpreter_in_a_private_directory_is_refused(proxy_dir: Path) -> None:
    private = proxy_dir / "home"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    fake_python = private / "python3"
    fake_python.symlink_to(Path(sys.executable).resolve())
    script = proxy_dir / "patchcache"
    script.write_text(f"#!{fake_python}\nprint('hi')\n")
    script.chmod(0o755)
    problem = blocked_for(fake_python)
    assert problem is not None and str(private) in problem
    with pytest.raises(InstallationError, match="cannot enter"):
        check_runnable(script)


def test_missing_execute_bit_is_named(proxy_dir: Path) -> None:
    target = proxy_dir / "tool"
    target.write_text("#!/bin/sh\n")
    target.chmod(0o744)
    problem = blocked_for(target)
    assert problem is not None and "cannot execute" in problem
    assert stat.S_IMODE(target.stat().st_mode) == 0o744
