#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then trains the default experiment:
# a 5-block Griffin on selective copying, sized for a 2-core CPU (about 3
# minutes idle), and plots its curves. Ends with an eval accuracy far above
# chance (1/14). Pass a workdir to keep the run elsewhere; running again with
# the same workdir resumes, and finishes at once when training is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir=${1:-/tmp/rg_quickstart}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
# The `recurrentgemma` command that setup.sh installed (the same as
# `.venv/bin/python -m recurrentgemma_jax VERB`).
.venv/bin/recurrentgemma train \
  --config=experiments/selective_copy.py:runlocal --workdir="$workdir"
.venv/bin/recurrentgemma plot "$workdir" --out="$workdir/curves.png"
echo "[quickstart] metrics: $workdir/metrics.jsonl   curves: $workdir/curves.png"
echo "[quickstart] for the README's other commands: source .venv/bin/activate"
