r"""Train an experiment: the command-line entry point.

    python -m recurrentgemma_jax.train \
        --config=experiments/selective_copy.py:runlocal \
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

From Python (notebooks), use `recurrentgemma_jax.training.train(config,
workdir)`; this module is also callable with the same arguments.
"""

from __future__ import annotations

import sys
import types

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from recurrentgemma_jax import platforms
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import cli
from recurrentgemma_jax.training import loop


def train(config, workdir: str) -> loop.TrainResult:
  """See `recurrentgemma_jax.training.loop.train`."""
  return loop.train(config, workdir)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  flags_ = flags.FLAGS
  if not flags_["verbosity"].present:
    # Our progress lines are prints; library INFO logs (Orbax writes several
    # per checkpoint) would bury them. `--verbosity=0` brings them back.
    logging.set_verbosity(logging.WARNING)
  if flags_.compile_only:
    sys.exit(cli.compile_only(flags_.config, flags_.workdir, flags_.topology))
  cli.initialize_processes()
  try:
    result = loop.train(flags_.config, flags_.workdir)
  except (ConfigError, loop.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if result.preempted:
    sys.exit(143)  # 128 + SIGTERM: schedulers see an interrupted job


class _CallableModule(types.ModuleType):
  """Makes `recurrentgemma_jax.train(config, workdir)` work even where the
  submodule import rebinds the package attribute to this module."""

  def __call__(self, config, workdir: str) -> loop.TrainResult:
    return train(config, workdir)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
  platforms.skip_absent_tpu()
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (experiments/*.py[:arg]).",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
  cli.define_process_flags()
  cli.define_compile_flags()
  flags.adopt_module_key_flags(cli)  # listed by --help, not only --helpfull
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=cli.parse_flags)
