#!/usr/bin/env bash
# Creates .venv (Python >= 3.12) and installs the package with its test and
# TPU (ahead-of-time compilation) extras at the versions CI pins.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for cand in "${PYTHON:-}" python3.12 python3 "$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
    if "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "error: Python >= 3.12 is required (jax >= 0.11); install it (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python)
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
