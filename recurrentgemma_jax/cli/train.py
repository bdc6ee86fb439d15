r"""Train an experiment.

    recurrentgemma train --config=experiments/selective_copy.py:runlocal \
        --workdir=/tmp/rg_quickstart [--config.total_steps=500 ...]

`--config` takes an experiment file (`get_config(arg)`), with the text after
`:` passed as `arg`; `--config.<field>=<value>` overrides a field (unknown
fields and wrong types are errors). Running again with the same workdir
resumes from its newest complete checkpoint. With `--compile_only
--topology=v5p-128` nothing runs: the sharded train step is compiled ahead of
time for that TPU slice (libtpu, no TPU needed) and its per-chip memory and
FLOPs are printed (`recurrentgemma_jax.training.aot`). Multi-process jobs (pod
slices, `launch/`) join through `recurrentgemma_jax.distributed`: detected
on Cloud TPU VMs, else from the coordinator flags or `RG_*` variables.

From Python (notebooks), use `recurrentgemma_jax.train(config, workdir)`
(`recurrentgemma_jax.training.loop.train`).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.config import ConfigError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (experiments/*.py[:arg]).",
      flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.",
                      flag_values=flag_values)
  common.define_process_flags(flag_values)
  common.define_compile_flags(flag_values)
  # Listed by --help, not only --helpfull.
  flags.adopt_module_key_flags(common, flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"],
                               flag_values=flag_values)


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Trains (or compiles) as the flags say; returns the exit code."""
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  if args:
    raise app.UsageError(f"unexpected arguments: {args}")
  if f.compile_only:
    return common.compile_only(f.config, f.workdir, f.topology)
  common.initialize_processes(f)
  try:
    result = loop.train(f.config, f.workdir)
  except (ConfigError, loop.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 143 if result.preempted else 0  # 128 + SIGTERM: interrupted


def main() -> None:
  common.start(sys.modules[__name__], quiet_logs=True, tpu_guard=True)


if __name__ == "__main__":
  main()
