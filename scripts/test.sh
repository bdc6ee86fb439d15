#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the CPU test suite, one
# pytest worker per core (whole files per worker: module fixtures and the
# compilation caches stay warm). Slow tests are excluded; run them with:
#   scripts/test.sh -m slow
# Any pytest arguments pass through (e.g. -n 0 for a single process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest tests -n auto --dist loadfile --durations=15 "$@"
