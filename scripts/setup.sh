#!/usr/bin/env bash
# Install what patchcache needs on a fresh Debian 12 machine and the package itself into .venv.
# Idempotent: safe to run again. Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

missing=()
for pkg in squid c-icap python3-venv chromium prometheus redis-server; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# The ICAP service's native head scanner (optional, but 2-3x less CPU per request) needs a C
# compiler and the headers of the Python that builds it.
command -v cc >/dev/null 2>&1 || missing+=(gcc)
dpkg -s python3-dev >/dev/null 2>&1 || missing+=(python3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} (apt)" >&2
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages start system services on 3128 / 1344; patchcache's demo and tests run
# their own instances on free loopback ports and never touch the system ones. Stop them only on
# machines we set up from scratch (CI), never on an admin's running proxy.
if [ "${CI:-}" = "true" ]; then
    "${SUDO[@]}" service squid stop >/dev/null 2>&1 || true
    "${SUDO[@]}" service c-icap stop >/dev/null 2>&1 || true
fi

# Squid runs the helpers as its user `proxy`, and the ICAP service and the prefetcher run as
# `proxy` beside them, so the venv must be made from an interpreter `proxy` can execute, in a
# directory `proxy` can enter. A `python3` first on PATH may live in root's home (a pyenv build
# under a 0700 directory): prefer Debian's own. PATCHCACHE_PYTHON overrides the choice.
as_proxy() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u proxy -- "$@"; else sudo -n -u proxy -- "$@"; fi
}
if [ -n "${PATCHCACHE_PYTHON:-}" ]; then
    python="$PATCHCACHE_PYTHON"
elif [ -x /usr/bin/python3 ]; then
    python=/usr/bin/python3
else
    python="$(command -v python3 || true)"
fi
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: no Python 3.11+ found: install Debian's python3 (apt-get install python3 python3-venv) or set PATCHCACHE_PYTHON" >&2
    exit 1
fi
if ! as_proxy "$python" -c '' 2>/dev/null; then
    echo "setup: Squid's user proxy cannot run $python (a private directory on its path?): set PATCHCACHE_PYTHON to an interpreter outside root's home, e.g. /usr/bin/python3" >&2
    exit 1
fi
here="$(pwd -P)"
if ! as_proxy test -r "$here/src/patchcache/__init__.py" 2>/dev/null; then
    echo "setup: Squid's user proxy cannot enter $here (a parent directory is private): clone into a directory every user can enter, e.g. /opt or /srv, or chmod o+x the blocking parent" >&2
    exit 1
fi
# A venv made earlier from another interpreter (say, one proxy cannot run) is made again.
if [ -x .venv/bin/python ] && ! as_proxy .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != sys.argv[1])' \
        "$("$python" -c 'import sys; print(sys.base_prefix)')" 2>/dev/null; then
    echo "setup: .venv was made from another interpreter or proxy cannot run it: making it again from $python" >&2
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,html]'
# Byte-compile the package as an installed one would be: Squid starts helper processes often, and
# an editable install under PYTHONDONTWRITEBYTECODE would compile every module at every start.
.venv/bin/python -m compileall -q src/patchcache >/dev/null
if .venv/bin/python -c 'import patchcache.icap_service._scan' 2>/dev/null; then
    native="native ICAP scanner built"
else
    native="native ICAP scanner NOT built (no C compiler?): pure-Python ICAP parsing"
fi
# The same check the tests make: the installed console script and its interpreter run as proxy.
if ! as_proxy .venv/bin/patchcache --version >/dev/null; then
    echo "setup: Squid's user proxy cannot run $here/.venv/bin/patchcache: check the permissions of $here and its parents" >&2
    exit 1
fi
echo "setup: ok ($(.venv/bin/patchcache --version), $python, $native, $(squid -v | head -n1))" >&2
