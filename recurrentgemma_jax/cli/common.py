"""What every command-line tool shares: one-line errors for bad flags or
configs, multi-process start-up, and running a tool from Python.

A tool module defines `define_flags(flag_values)` and `run(flag_values,
args) -> exit code`; its `__main__` block defines the flags on `flags.FLAGS`
and hands `run` to absl (`app.run(main, flags_parser=parse_flags)`), and
`call(module, [...])` runs the same code in this process (tests, notebooks).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

from recurrentgemma_jax import distributed
from recurrentgemma_jax import platforms
from recurrentgemma_jax.config import ConfigError


def define_process_flags(flag_values: flags.FlagValues = flags.FLAGS
                         ) -> None:
  """Flags for multi-process jobs (else `RG_*` variables or auto-detection,
  see `recurrentgemma_jax.distributed`)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "Number of processes.",
                       flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "This process's index.",
                       flag_values=flag_values)


def initialize_processes(flag_values: flags.FlagValues = flags.FLAGS
                         ) -> None:
  """Joins the job's processes (a no-op for one process)."""
  f = flag_values
  distributed.initialize(f.coordinator_address, f.num_processes,
                         f.process_id)


def define_compile_flags(flag_values: flags.FlagValues = flags.FLAGS
                         ) -> None:
  """Flags for ahead-of-time compilation (`training/aot.py`)."""
  flags.DEFINE_bool(
      "compile_only", False,
      "Compile the sharded train step (for --topology) and report its "
      "per-chip memory and FLOPs instead of training.",
      flag_values=flag_values)
  flags.DEFINE_string(
      "topology", None,
      "TPU slice to compile for with --compile_only: v5p-128, v4-32, "
      "v5litepod-16, v6e-16 or a libtpu name such as v5p:4x4x4 (needs "
      "libtpu, not a TPU).", flag_values=flag_values)


def compile_only(config, workdir: str, topology: str | None) -> int:
  """Compiles the train step ahead of time, prints the report (and writes
  it to `workdir/aot_<topology>.json`); returns the exit code."""
  from recurrentgemma_jax.training import aot  # pylint: disable=g-import-not-at-top

  if not topology:
    print("error: --compile_only needs --topology (e.g. v5p-128)",
          file=sys.stderr)
    return 1
  try:
    report = aot.compile_train_step(config, topology)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(report.summary())
  try:
    os.makedirs(workdir, exist_ok=True)
    name = report.topology.replace(":", "_")
    with open(os.path.join(workdir, f"aot_{name}.json"), "w") as f:
      f.write(report.to_json())
  except OSError as e:
    print(f"warning: could not write the report to {workdir}: {e}",
          file=sys.stderr)
  return 0


def quiet_library_logs() -> None:
  """Library logs at WARNING and above only, unless `--verbosity` is given:
  a tool's output is what it prints, and INFO lines (Orbax writes several
  per checkpoint, data loading, JAX) would bury it."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def _one_line(text: str) -> str:
  """First and last lines of a message (ml_collections embeds tracebacks)."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


# absl's help flags print the usage, then exit with status 1.
_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull",
               "--helpxml")


def _missing_config_file(argv: list[str]) -> str | None:
  """The message for a `--config` file that does not exist, or None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    else:
      continue
    path = path.split(":", 1)[0]
    if path and not os.path.exists(path):
      return f"--config: config file {path} not found"
  return None


def _config_file_error(argv: list[str],
                       flag_values: flags.FlagValues) -> str | None:
  """Why `--config`'s file failed to load, or None.

  ml_collections keeps that error until the config is first used (the flag
  then holds a placeholder that raises on any access).
  """
  value = flag_values["config"].value if "config" in flag_values else None
  if type(value).__name__ != "_ErrorConfig":
    return None
  return _missing_config_file(argv) or (
      f"--config: cannot load the config file: "
      f"{_one_line(str(vars(value).get('_error')))}")


def parse_flags(argv: list[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl flag parsing that reports any bad flag or config in one line.

  Loading the config file and applying `--config.<field>` overrides happen
  here; absl itself only catches its own error types. `--help` exits with
  status 0.

  Returns:
    `argv[0]` and the arguments that are not flags.
  """
  try:
    rest = flag_values(argv)
    message = _config_file_error(argv, flag_values)
    if message is None:
      return rest
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    message = _one_line(str(e))
  except OSError as e:  # a `--config.<field>` override of a missing file
    message = _missing_config_file(argv) or _one_line(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: no such field
    text = str(e.args[0] if e.args else e)
    name = re.search(r"\w+", text)
    hint = re.search(r'Did you mean "(\w+)"', text)
    message = (f"unknown config field on the command line: "
               f"{name[0] if name else text}"
               + (f" (did you mean {hint[1]}?)" if hint else ""))
  except (ConfigError, TypeError, ValueError) as e:
    message = _one_line(str(e))
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_with_passthrough(
    argv: list[str], flag_values: flags.FlagValues = flags.FLAGS
) -> list[str]:
  """`parse_flags` for the part of `argv` before the first `--`; what
  follows it is returned after a `--`, unparsed (a launcher's command)."""
  if "--" not in argv:
    return parse_flags(argv, flag_values)
  split = argv.index("--")
  return parse_flags(argv[:split], flag_values) + argv[split:]


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """`(arguments before the first --, arguments after it)`."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  split = argv.index("--")
  return argv[:split], argv[split + 1:]


def call(module: Any, args: Sequence[str]) -> int:
  """Runs the tool `module` on the command-line arguments `args` (without
  the program name) in this process, with flags of its own; returns its
  exit code. Bad flags exit as on the command line (SystemExit). A module
  with `PASSTHROUGH = True` keeps what follows `--` for its command."""
  flag_values = flags.FlagValues()
  argv = [module.__name__, *args]
  # ml_collections' config_file flags register their `--config.<field>`
  # overrides from sys.argv, not from the argv being parsed.
  saved, sys.argv = sys.argv, argv
  try:
    module.define_flags(flag_values)
    parse = (parse_with_passthrough if getattr(module, "PASSTHROUGH", False)
             else parse_flags)
    rest = parse(argv, flag_values)
  finally:
    sys.argv = saved
  return module.run(flag_values, rest[1:])


def start(module: Any, *, quiet_logs: bool = False,
          tpu_guard: bool = False) -> None:
  """The `python -m` / console-script start of the tool `module`: defines
  its flags, parses the command line (keeping what follows `--` when it
  has `PASSTHROUGH = True`) and exits with `module.run`'s code.

  Args:
    module: a tool module with `define_flags(flag_values)` and
      `run(flag_values, argv) -> int`.
    quiet_logs: silence the libraries' info logs (`--verbosity=0` brings
      them back).
    tpu_guard: leave JAX's TPU backend out when there is no TPU
      (`platforms.skip_absent_tpu`), for tools that start JAX.
  """
  if tpu_guard:
    platforms.skip_absent_tpu()
  module.define_flags()
  parse = (parse_with_passthrough if getattr(module, "PASSTHROUGH", False)
           else parse_flags)

  def main(argv: list[str]) -> None:
    if quiet_logs:
      quiet_library_logs()
    sys.exit(module.run(flags.FLAGS, argv[1:]))

  app.run(main, flags_parser=parse)
