#!/usr/bin/env bash
# One device call: install the carried wheels, check the chunked scan
# variants on the GPU (float64 oracle, repeat determinism; each under a time
# limit, since a broken look-back protocol would hang), then time the walking
# kernel, the variants that passed and accelerated-scan.
#   bash benchmarks/device_scan_tune.sh SHAPES [RUNS] [VARIANTS] [CHECK_CASES]
# VARIANTS: check-name:row-name pairs (benchmarks/scan.py CHECK_VARIANTS and
# PALLAS_VARIANTS), e.g. "chunked:pallas_gpu chunked".
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1 RG_EXPERIMENTAL_LOOKBACK=1
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
impls="pallas_gpu walk"
IFS=';' read -ra variants <<< "${3:-chunked:pallas_gpu chunked;lookback:pallas_gpu lookback}"
for v in "${variants[@]}"; do
  name=${v%%:*}; impl=${v#*:}
  if timeout "${5:-70}" python3 benchmarks/scan.py --check_only "$name" --check_cases "${4:-6}" \
      > "$out/check_$name.log" 2>&1; then
    echo "check $name: ok"; [ -n "$impl" ] && impls="$impls,$impl"
  else
    echo "check $name: FAILED (rc $?)"
  fi
  grep "^check" "$out/check_$name.log" | cut -c1-170
done
echo "timing: $impls"
timeout "${6:-300}" python3 benchmarks/scan.py --grid --shapes "$1" --impls "$impls" --runs "${2:-11}" \
  --out "$out/grid.json" > "$out/grid.log" 2>&1
echo "timing rc $?"
grep -v '^{' "$out/grid.log" | tail -40
