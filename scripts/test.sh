#!/usr/bin/env bash
# The test command: set up (idempotent), then lint, type-check and run every test, including the
# integration tests that start real Squid processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
