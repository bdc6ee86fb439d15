"""Command-line plumbing shared by `train`, `evaluate` (and launchers):
one-line errors for bad flags or configs, and multi-process start-up."""

from __future__ import annotations

import os
import re
import sys

from absl import flags

from recurrentgemma_jax import distributed
from recurrentgemma_jax.config import ConfigError


def define_process_flags() -> None:
  """Flags for multi-process jobs (else `RG_*` variables or auto-detection,
  see `recurrentgemma_jax.distributed`)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_processes() -> None:
  """Joins the job's processes (a no-op for one process)."""
  f = flags.FLAGS
  distributed.initialize(f.coordinator_address, f.num_processes,
                         f.process_id)


def define_compile_flags() -> None:
  """Flags for ahead-of-time compilation (`training/aot.py`)."""
  flags.DEFINE_bool(
      "compile_only", False,
      "Compile the sharded train step (for --topology) and report its "
      "per-chip memory and FLOPs instead of training.")
  flags.DEFINE_string(
      "topology", None,
      "TPU slice to compile for with --compile_only: v5p-128, v4-32, "
      "v5litepod-16, v6e-16 or a libtpu name such as v5p:4x4x4 (needs "
      "libtpu, not a TPU).")


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


def _config_file_error(argv: list[str]) -> str | None:
  """Why `--config`'s file failed to load, or None.

  ml_collections keeps that error until the config is first used (the flag
  then holds a placeholder that raises on any access).
  """
  value = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if type(value).__name__ != "_ErrorConfig":
    return None
  return _missing_config_file(argv) or (
      f"--config: cannot load the config file: "
      f"{_one_line(str(vars(value).get('_error')))}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports any bad flag or config in one line.

  Loading the config file and applying `--config.<field>` overrides happen
  here; absl itself only catches its own error types. `--help` exits with
  status 0.
  """
  try:
    rest = flags.FLAGS(argv)
    message = _config_file_error(argv)
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
