r"""Run a training job as several JAX processes on this machine.

    recurrentgemma launch-local --num_processes 2 --devices_per_process 4 \
        -- --config=experiments/selective_copy.py:runlocal --workdir=/tmp/run

Each process runs `python -m recurrentgemma_jax.cli.train <args after -->`
(or --module) on the CPU backend with its own simulated devices; the
processes join through a coordinator on 127.0.0.1. The first failure ends
the job, SIGTERM / Ctrl-C / --timeout stop every process at a checkpoint,
and the processes die with the launcher (`recurrentgemma_jax.launch.local`).
"""

from __future__ import annotations

import sys

from absl import flags

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.launch import local

# What follows `--` is the trainer's command line.
PASSTHROUGH = True


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  flags.DEFINE_integer("num_processes", 2, "processes to start",
                       lower_bound=1, **kw)
  flags.DEFINE_integer("devices_per_process", 4,
                       "simulated CPU devices of each process", lower_bound=1,
                       **kw)
  flags.DEFINE_string("module", local.TRAINER,
                      "the Python module each process runs", **kw)
  flags.DEFINE_float("timeout", None, "seconds before giving up", **kw)


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Runs the job; its exit code (that of the first process to fail)."""
  before, train_args = common.split_passthrough(args)
  if before:
    print(f"error: unexpected arguments {before}: the trainer's go after "
          "'--'", file=sys.stderr)
    return 2
  return local.launch(f.num_processes, f.devices_per_process, train_args,
                      f.module, f.timeout)


def main() -> None:
  common.start(sys.modules[__name__])


if __name__ == "__main__":
  main()
