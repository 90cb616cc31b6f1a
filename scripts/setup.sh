#!/usr/bin/env bash
# Install what patchcache needs on a fresh Debian 12 machine and the package itself into .venv.
# Idempotent: safe to run again. Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

missing=()
for pkg in squid c-icap python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# The ICAP service's native head scanner (optional, but 2-3x less CPU per request) needs a C
# compiler and the headers of the Python that builds it.
command -v cc >/dev/null 2>&1 || missing+=(gcc)
if ! python3 -c 'import os, sysconfig; exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    dpkg -s python3-dev >/dev/null 2>&1 || missing+=(python3-dev)
fi
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

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# Byte-compile the package as an installed one would be: Squid starts helper processes often, and
# an editable install under PYTHONDONTWRITEBYTECODE would compile every module at every start.
.venv/bin/python -m compileall -q src/patchcache >/dev/null
if .venv/bin/python -c 'import patchcache.icap_service._scan' 2>/dev/null; then
    native="native ICAP scanner built"
else
    native="native ICAP scanner NOT built (no C compiler?): pure-Python ICAP parsing"
fi
echo "setup: ok ($(.venv/bin/patchcache --version), $native, $(squid -v | head -n1))" >&2
