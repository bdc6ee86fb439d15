r"""Evaluate a training workdir's checkpoint.

    recurrentgemma evaluate --workdir=/tmp/rg_quickstart \
        [--step=N] [--config=experiments/x.py:arg --config.eval_batches=16]

Without `--config`, the config the run saved in `WORKDIR/config.json` is
used. Prints the eval loss, perplexity and accuracy of the newest complete
checkpoint (or `--step`) and appends them to the workdir's metrics. It only
reads the checkpoints, so it is safe while a trainer runs on the workdir.

Length extrapolation (writes WORKDIR/length_eval_step<N>_x<1-2-4>_n<examples>
[_positions].json, named by its settings, or --length_eval_file; see
`training/length_eval.py`):

    recurrentgemma evaluate --workdir=/tmp/induction_heads \
        --length_multipliers=1,2,4,8,16,32,64 [--examples=256] [--per_position]
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.config import ConfigError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file; default: WORKDIR/config.json.",
      lock_config=True, **kw)
  flags.DEFINE_string("workdir", None, "The training run's directory.", **kw)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).",
                       **kw)
  flags.DEFINE_list(
      "length_multipliers", [],
      "Evaluate at these multiples of the training length (e.g. 1,2,4,8) "
      "and write the result in WORKDIR (see --length_eval_file).", **kw)
  flags.DEFINE_integer("examples", 256,
                       "Sequences scored per length (--length_multipliers).",
                       **kw)
  flags.DEFINE_bool("per_position", False,
                    "With --length_multipliers: also the mean loss at each "
                    "position within a document.", **kw)
  flags.DEFINE_string(
      "length_eval_file", "",
      "With --length_multipliers: the result's file name in WORKDIR; default "
      "length_eval_step<N>_x<multipliers>_n<examples>[_positions].json, "
      "named by the settings. A file holding other settings is not replaced.",
      **kw)
  common.define_process_flags(flag_values)
  # Listed by --help, not only --helpfull.
  flags.adopt_module_key_flags(common, **kw)
  flags.mark_flags_as_required(["workdir"], **kw)


def _multipliers(values: list[str]) -> list[int]:
  try:
    multipliers = [int(m) for m in values]
    if min(multipliers) < 1:
      raise ValueError
  except ValueError as e:
    raise ConfigError(
        "--length_multipliers: give integers >= 1, e.g. 1,2,4,8 "
        f"(got {','.join(values)})") from e
  return multipliers


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Evaluates as the flags say, prints the result; returns the exit code."""
  from recurrentgemma_jax.training import length_eval  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  if args:
    raise app.UsageError(f"unexpected arguments: {args}")
  common.initialize_processes(f)
  try:
    config = f.config or loop.load_workdir_config(f.workdir)
    if f.length_multipliers:
      result = length_eval.evaluate_lengths(
          config, f.workdir, _multipliers(f.length_multipliers), step=f.step,
          examples=f.examples, per_position=f.per_position,
          result_file=f.length_eval_file or None)
      for row in result["lengths"]:  # the per-position arrays stay in the file
        row.pop("per_position_loss", None)
        row.pop("per_position_tokens", None)
    else:
      result = loop.evaluate(config, f.workdir, f.step)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(result, indent=2))
  return 0


def main() -> None:
  common.start(sys.modules[__name__], quiet_logs=True, tpu_guard=True)


if __name__ == "__main__":
  main()
