"""The command-line tools: one `recurrentgemma <verb>` per job.

    recurrentgemma train --config=experiments/selective_copy.py:runlocal \
        --workdir=/tmp/rg_quickstart
    recurrentgemma sample --workdir=/tmp/rg_quickstart --prompt_tokens=2,0,5
    recurrentgemma VERB --help

`python -m recurrentgemma_jax VERB` and `python -m recurrentgemma_jax.cli.VERB`
(with `_` for `-`) run the same program. Each verb is a module of this
package with a short absl `main`; the work is done by the library.

This module imports only the standard library: setup.py reads
`CONSOLE_SCRIPTS` from it without importing the package.
"""

from __future__ import annotations

import os
import runpy
import sys

# What `pip install` puts on PATH: one command with verbs, the same as
# `python -m recurrentgemma_jax`.
SCRIPT = "recurrentgemma"
CONSOLE_SCRIPTS = [f"{SCRIPT} = recurrentgemma_jax.cli:main"]

COMMANDS = {
    "train": "train an experiment (resumes its workdir)",
    "evaluate": "evaluate a workdir's checkpoint (also at longer lengths)",
    "sample": "sample from a workdir or released weights",
    "convert": "convert weights between official, Hugging Face and workdir "
               "layouts",
    "plot": "draw the loss and accuracy curves of runs",
    "reproduce": "run the paper's small-scale studies and report them",
    "launch-local": "run a command as several JAX processes on this machine",
    "launch-tpu": "run an experiment on Cloud TPU VMs and pod slices",
}


def module_name(verb: str) -> str:
  """The module that implements `verb` ("launch-tpu" -> ...cli.launch_tpu)."""
  return f"{__name__}.{verb.replace('-', '_')}"


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"usage: {SCRIPT} VERB [flags]   ({SCRIPT} VERB --help for its "
           "flags)", "", "verbs:"]
  lines += [f"  {verb:<{width}}  {text}" for verb, text in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  """Runs `argv[1]`'s module as `__main__` with the remaining arguments,
  exactly as `python -m recurrentgemma_jax.cli.<verb>` would."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage(), file=sys.stdout if len(argv) > 1 else sys.stderr)
    sys.exit(0 if len(argv) > 1 else 1)
  verb = argv[1]
  if verb not in COMMANDS:
    print(f"error: unknown verb {verb!r}; one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    sys.exit(1)
  # runpy sets argv[0] to the module's file, as `python -m` does.
  sys.argv = [f"{os.path.basename(argv[0])} {verb}", *argv[2:]]
  runpy.run_module(module_name(verb), run_name="__main__", alter_sys=True)


# Entry points from before the verbs (`python -m recurrentgemma_jax.sample`
# and the like), kept so that scripts written for them still run. Not
# `train` and `evaluate`: modules of those names would replace the package's
# `recurrentgemma_jax.train()` / `evaluate()` functions once imported; use
# `python -m recurrentgemma_jax train`.
MOVED = ("sample", "plot", "reproduce")


def run_moved(verb: str) -> None:
  """Runs `verb` for its former module `recurrentgemma_jax.<verb>`, with a
  one-line note of the new spelling."""
  print(f"note: `python -m recurrentgemma_jax.{verb}` is now "
        f"`{SCRIPT} {verb}` (or `python -m recurrentgemma_jax {verb}`)",
        file=sys.stderr)
  main([SCRIPT, verb, *sys.argv[1:]])
