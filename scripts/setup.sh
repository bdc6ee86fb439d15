#!/usr/bin/env bash
# Creates .venv (Python >= 3.12) and installs the package with its test and
# TPU (ahead-of-time compilation) extras at the versions CI pins.
# With --hf (and always under CI, CI=true, or once .venv-hf exists) also
# .venv-hf: Python 3.11 with torch (CPU) and transformers, the oracle of the
# Hugging Face parity tests (tests/model/test_hf_interop.py); torch's only
# wheel here is for Python 3.11, and the library itself never needs torch.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
with_hf=0
for arg in "$@"; do
  case "$arg" in
    --hf) with_hf=1 ;;
    *) echo "error: unknown argument $arg (allowed: --hf)" >&2; exit 2 ;;
  esac
done
if [ "${CI:-}" = true ] || [ -x .venv-hf/bin/python ]; then with_hf=1; fi

# find_python VERSION_TEST HINT CANDIDATES...: the first candidate whose
# `sys.version_info` passes VERSION_TEST (a Python expression).
find_python() {
  local test=$1 hint=$2; shift 2
  for cand in "$@"; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
    if "$cand" -c "import sys; v = sys.version_info; sys.exit(not ($test))" 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "error: $hint" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python "v >= (3, 12)" \
    "Python >= 3.12 is required (jax >= 0.11); install it (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" \
    "${PYTHON:-}" python3.12 python3 "$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3)
  echo "[setup] creating .venv with $("$py" --version)"
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
stamp=.venv/.installed-$(cat setup.py requirements/ci-constraints.txt scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing recurrentgemma_jax[test,tpu] (pinned by requirements/ci-constraints.txt)"
  "${pip[@]}" --upgrade pip
  "${pip[@]}" -c requirements/ci-constraints.txt -e ".[test,tpu]"
  # The official package is the tests' numerical oracle; its pins
  # (absl-py<2, numpy<2.4) conflict with chex, so it comes without deps.
  "${pip[@]}" --no-deps -c requirements/ci-constraints.txt recurrentgemma
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"


if [ "$with_hf" = 1 ]; then
  if [ ! -x .venv-hf/bin/python ]; then
    # python3 here may be pyenv's 3.12 (.python-version): ask for 3.11 first.
    py=$(find_python "v[:2] == (3, 11)" \
      "the Hugging Face test venv needs Python 3.11 (torch's wheel); install it or set HF_PYTHON=/path/to/python3.11" \
      "${HF_PYTHON:-}" python3.11 /usr/bin/python3 "$(pyenv root 2>/dev/null)/versions/3.11"*/bin/python3)
    echo "[setup] creating .venv-hf with $("$py" --version)"
    "$py" -m venv .venv-hf
  fi
  hf_stamp=.venv-hf/.installed-$(cat requirements/hf-constraints.txt scripts/setup.sh | sha1sum | cut -c1-12)
  if [ ! -f "$hf_stamp" ]; then
    echo "[setup] installing torch (CPU) and transformers into .venv-hf (pinned by requirements/hf-constraints.txt)"
    .venv-hf/bin/python -m pip install -q --disable-pip-version-check \
      -c requirements/hf-constraints.txt torch transformers safetensors numpy
    rm -f .venv-hf/.installed-*
    touch "$hf_stamp"
  fi
  hf_versions=$(.venv-hf/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')
  echo "[setup] ready: .venv-hf $hf_versions"
fi
