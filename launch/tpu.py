#!/usr/bin/env python3
"""`recurrentgemma launch-tpu` from this checkout, without installing it:

    python launch/tpu.py ACTION --name NAME --zone ZONE --accelerator TYPE \
        [--project P] [--spot | --reserved] [--queued] [--dry_run] \
        [-- TRAIN_ARGS...]

The program is `recurrentgemma_jax/cli/launch_tpu.py`; see launch/README.md.
"""

import os
import runpy
import sys

if __name__ == "__main__":
  # The checkout instead of launch/ (whose tpu.py and local.py would
  # shadow any modules of those names).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runpy.run_module("recurrentgemma_jax.cli.launch_tpu", run_name="__main__",
                   alter_sys=True)
