"""Where this installation's `patchcache` program is, and whether Squid's user can run it.

Squid starts its helpers as its own user (`proxy` on Debian), and the ICAP service and the
prefetcher share state with them, so they run as that user too. A `patchcache` program that
root can run but `proxy` cannot fails only at run time, as a helper that dies at start. The
usual cause is an interpreter under a private directory: a venv made from a pyenv build in
root's home (mode 0700) points at an interpreter `proxy` cannot reach.

The program is always looked up beside the running interpreter (the venv's or the package's
`bin/`), never on PATH: PATH may hold another installation, or none.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from patchcache.errors import PatchcacheError

SQUID_USER = "proxy"


class InstallationError(PatchcacheError):
    """The `patchcache` program is missing or cannot be run by Squid's user."""


def as_squid_user() -> Callable[[], None] | None:
    """A ``preexec_fn`` that runs a child process as Squid's user, as Squid runs its helpers.

    None when not root: then the child runs as we do (no switch is possible or needed). The
    user is looked up here, in the parent, so the child does nothing between fork and exec but
    the three calls (group first, while still allowed).
    """
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam(SQUID_USER)

    def switch() -> None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)

    return switch


def console_script() -> Path:
    """The `patchcache` console script installed with the running interpreter."""
    script = Path(sys.executable).parent / "patchcache"
    if not script.is_file():
        raise InstallationError(
            f"{script} is missing: install the package into this interpreter's environment "
            "(pip install .)"
        )
    return script


def _may(info: os.stat_result, user: pwd.struct_passwd, groups: set[int], bit: int) -> bool:
    """Whether `user` has permission `bit` (stat.S_IXOTH / S_IROTH scale) on a file."""
    if user.pw_uid == 0:
        # root may read anything, and execute anything with at least one x bit.
        return bit != stat.S_IXOTH or bool(info.st_mode & 0o111)
    if info.st_uid == user.pw_uid:
        return bool(info.st_mode & (bit << 6))
    if info.st_gid in groups:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)


def _groups(user: pwd.struct_passwd) -> set[int]:
    return set(os.getgrouplist(user.pw_name, user.pw_gid))


def _walk_blocked(path: Path, user: pwd.struct_passwd, groups: set[int]) -> str | None:
    walked = Path(path.anchor)
    for part in path.parts[1:-1]:
        walked = walked / part
        try:
            info = walked.stat()
        except OSError as exc:
            return f"{walked}: {exc.strerror}"
        if not _may(info, user, groups, stat.S_IXOTH):
            mode = stat.S_IMODE(info.st_mode)
            return f"{user.pw_name} cannot enter {walked} (mode {mode:o})"
    return None


def blocked_for(path: Path, user_name: str = SQUID_USER, *, execute: bool = True) -> str | None:
    """Why `user_name` cannot run (or, with execute=False, read) `path`; None when it can.

    Checks every directory on the way both as written and after resolving symlinks (a venv's
    `python` is a symlink to the interpreter it was made from, often in another tree), so the
    answer names the directory that blocks.
    """
    user = pwd.getpwnam(user_name)
    groups = _groups(user)
    literal = Path(os.path.abspath(path))
    real = literal.resolve()
    for candidate in dict.fromkeys((literal, real)):
        problem = _walk_blocked(candidate, user, groups)
        if problem:
            return problem
    try:
        info = real.stat()
    except OSError as exc:
        return f"{real}: {exc.strerror}"
    bit = stat.S_IXOTH if execute else stat.S_IROTH
    if not _may(info, user, groups, bit):
        verb = "execute" if execute else "read"
        return f"{user_name} cannot {verb} {real} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def interpreter_of(script: Path) -> Path | None:
    """The interpreter named on a script's `#!` line, if it has one."""
    try:
        with script.open("rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].strip().split()
    if not words:
        return None
    return Path(os.fsdecode(words[0]))


def check_runnable(script: Path, user_name: str = SQUID_USER) -> None:
    """Raise InstallationError unless `user_name` can execute `script` and its interpreter."""
    problems = [blocked_for(script, user_name)]
    interpreter = interpreter_of(script)
    if interpreter is not None:
        problems.append(blocked_for(interpreter, user_name))
    found = [p for p in problems if p]
    if found:
        raise InstallationError(
            f"Squid's user {user_name} cannot run {script}: {'; '.join(found)}. "
            "Build the environment from an interpreter outside private directories "
            "(e.g. /usr/bin/python3 -m venv) in a directory every user can enter."
        )
