"""Runs `sharded_cases.py` on 8 simulated CPU devices in a child process.

The device count is fixed when JAX initialises its CPU backend, which the
rest of the suite has already done in this process, so the sharded cases run
under their own `python -m pytest` with XLA_FLAGS set.
"""

import os
import pathlib
import subprocess
import sys

CASES = pathlib.Path(__file__).with_name("sharded_cases.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sharded_cases_on_8_cpu_devices():
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
      JAX_PLATFORMS="cpu",
      # The child imports what this process imports, however the runner
      # (pytest from a checkout, Bazel runfiles) set up sys.path.
      PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
  )
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       str(CASES)],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert result.returncode == 0, (
      f"sharded cases failed:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
  )
