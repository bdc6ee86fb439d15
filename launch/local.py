#!/usr/bin/env python3
"""`recurrentgemma launch-local` from this checkout, without installing it:

    python launch/local.py --num_processes 2 --devices_per_process 4 \
        -- --config=experiments/selective_copy.py:runlocal --workdir=/tmp/run

The program is `recurrentgemma_jax/cli/launch_local.py`; the launcher is
`recurrentgemma_jax/launch/local.py`. See launch/README.md.
"""

import os
import runpy
import sys

if __name__ == "__main__":
  # The checkout instead of launch/ (whose tpu.py and local.py would
  # shadow any modules of those names).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runpy.run_module("recurrentgemma_jax.cli.launch_local", run_name="__main__",
                   alter_sys=True)
