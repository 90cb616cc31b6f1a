#!/usr/bin/env bash
# The demo: set up (idempotent), then run a throwaway Squid on loopback with patchcache attached,
# a local origin serving update-like files, and several simulated BITS clients; print savings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/patchcache demo "$@"
