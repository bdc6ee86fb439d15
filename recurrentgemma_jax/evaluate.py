"""Evaluate a training workdir's checkpoint: the command-line entry point.

    python -m recurrentgemma_jax.evaluate --workdir=/tmp/rg_quickstart \
        [--step=N] [--config=experiments/x.py:arg --config.eval_batches=16]

Without `--config`, the config the run saved in `WORKDIR/config.json` is
used. Prints the eval loss, perplexity and accuracy of the newest complete
checkpoint (or `--step`) and appends them to the workdir's metrics.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import cli
from recurrentgemma_jax.training import loop


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  flags_ = flags.FLAGS
  cli.initialize_processes()
  try:
    config = flags_.config or loop.load_workdir_config(flags_.workdir)
    result = loop.evaluate(config, flags_.workdir, flags_.step)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file; default: WORKDIR/config.json.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
  cli.define_process_flags()
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=cli.parse_flags)
