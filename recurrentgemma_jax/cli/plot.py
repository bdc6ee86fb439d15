"""Draw loss and accuracy curves of one or more runs into a PNG.

    recurrentgemma plot WORKDIR [WORKDIR ...] [--out=curves.png]

One colour per run, train and eval loss (left) and accuracy (right), chance
marked for synthetic tasks; see `recurrentgemma_jax.plotting`.
"""

from __future__ import annotations

import sys

from absl import flags

from recurrentgemma_jax import plotting
from recurrentgemma_jax.cli import common
from recurrentgemma_jax.config import ConfigError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string("out", "curves.png", "output PNG path",
                      flag_values=flag_values)


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Plots the workdirs `args`; prints the PNG's path. The exit code."""
  if not args:
    print("error: give one or more training workdirs", file=sys.stderr)
    return 2
  try:
    print(plotting.plot(args, f.out))
  except (FileNotFoundError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main() -> None:
  common.start(sys.modules[__name__])


if __name__ == "__main__":
  main()
