"""Running a test's child process as Squid's user, as Squid runs its helpers and services."""

from __future__ import annotations

import os
import pwd

from patchcache.testbed.squid import SQUID_USER


def as_squid_user() -> None:
    """A ``preexec_fn``: drop from root to the proxy user (group first, while still allowed)."""
    user = pwd.getpwnam(SQUID_USER)
    os.setgid(user.pw_gid)
    os.setgroups([])
    os.setuid(user.pw_uid)
