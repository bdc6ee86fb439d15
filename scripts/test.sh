#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the CPU test suite.
# Slow tests are excluded; run them with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest tests "$@"
