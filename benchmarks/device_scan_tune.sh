#!/usr/bin/env bash
# One device call: install the carried wheels, check pallas_gpu variants on
# the GPU (float64 oracle; repeat determinism for the look-back), each under
# a time limit (a broken look-back protocol would otherwise hang the call),
# then time the walking kernel, the variants that passed and
# accelerated-scan.
#   bash benchmarks/device_scan_tune.sh SHAPES [RUNS] [ROWS] [CHECK_CASES]
#       [CHECK_TIMEOUT_S] [TIMING_TIMEOUT_S]
# ROWS: ';'-separated benchmarks/scan.py PALLAS_VARIANTS rows to check and
# time (default "pallas_gpu chunked;pallas_gpu lookback").
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1 RG_EXPERIMENTAL_LOOKBACK=1
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
impls="pallas_gpu walk"
IFS=';' read -ra rows <<< "${3:-pallas_gpu chunked;pallas_gpu lookback}"
for row in "${rows[@]}"; do
  log="$out/check_${row##* }.log"
  if timeout "${5:-70}" python3 benchmarks/scan.py --check_only "$row" --check_cases "${4:-6}" \
      > "$log" 2>&1; then
    echo "check $row: ok"; impls="$impls,$row"
  else
    echo "check $row: FAILED (rc $?)"
  fi
  grep "^check" "$log" | cut -c1-170
done
echo "timing: $impls"
timeout "${6:-300}" python3 benchmarks/scan.py --grid --shapes "$1" --impls "$impls" --runs "${2:-11}" \
  --out "$out/grid.json" > "$out/grid.log" 2>&1
echo "timing rc $?"
grep -v '^{' "$out/grid.log" | tail -40
