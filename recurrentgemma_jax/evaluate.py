r"""Evaluate a training workdir's checkpoint: the command-line entry point.

    python -m recurrentgemma_jax.evaluate --workdir=/tmp/rg_quickstart \
        [--step=N] [--config=experiments/x.py:arg --config.eval_batches=16]

Without `--config`, the config the run saved in `WORKDIR/config.json` is
used. Prints the eval loss, perplexity and accuracy of the newest complete
checkpoint (or `--step`) and appends them to the workdir's metrics. It only
reads the checkpoints, so it is safe while a trainer runs on the workdir.

Length extrapolation (writes WORKDIR/length_eval_step<N>_x<1-2-4>_n<examples>
[_positions].json, named by its settings, or --length_eval_file; see
`training/length_eval.py`):

    python -m recurrentgemma_jax.evaluate --workdir=/tmp/induction_heads \
        --length_multipliers=1,2,4,8,16,32,64 [--examples=256] [--per_position]
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from recurrentgemma_jax import platforms
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import cli
from recurrentgemma_jax.training import length_eval
from recurrentgemma_jax.training import loop


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  flags_ = flags.FLAGS
  if not flags_["verbosity"].present:
    # The result is the output; library INFO lines (data loading, JAX)
    # would bury it. `--verbosity=0` brings them back.
    logging.set_verbosity(logging.WARNING)
  cli.initialize_processes()
  try:
    config = flags_.config or loop.load_workdir_config(flags_.workdir)
    if flags_.length_multipliers:
      try:
        multipliers = [int(m) for m in flags_.length_multipliers]
        if min(multipliers) < 1:
          raise ValueError
      except ValueError as e:
        raise ConfigError(
            "--length_multipliers: give integers >= 1, e.g. 1,2,4,8 "
            f"(got {','.join(flags_.length_multipliers)})") from e
      result = length_eval.evaluate_lengths(
          config, flags_.workdir, multipliers, step=flags_.step,
          examples=flags_.examples, per_position=flags_.per_position,
          result_file=flags_.length_eval_file or None)
      for row in result["lengths"]:  # the per-position arrays stay in the file
        row.pop("per_position_loss", None)
        row.pop("per_position_tokens", None)
    else:
      result = loop.evaluate(config, flags_.workdir, flags_.step)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  platforms.skip_absent_tpu()
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file; default: WORKDIR/config.json.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
  flags.DEFINE_list(
      "length_multipliers", [],
      "Evaluate at these multiples of the training length (e.g. 1,2,4,8) "
      "and write the result in WORKDIR (see --length_eval_file).")
  flags.DEFINE_integer("examples", 256,
                       "Sequences scored per length (--length_multipliers).")
  flags.DEFINE_bool("per_position", False,
                    "With --length_multipliers: also the mean loss at each "
                    "position within a document.")
  flags.DEFINE_string(
      "length_eval_file", "",
      "With --length_multipliers: the result's file name in WORKDIR; default "
      "length_eval_step<N>_x<multipliers>_n<examples>[_positions].json, "
      "named by the settings. A file holding other settings is not replaced.")
  cli.define_process_flags()
  flags.adopt_module_key_flags(cli)  # listed by --help, not only --helpfull
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=cli.parse_flags)
