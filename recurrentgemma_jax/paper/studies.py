"""The paper's small-scale studies: which runs make up each, and the
train and evaluation commands of one run.

A study is one experiment file trained for each model family (Hawk, Griffin,
MQA) and seed, then evaluated at multiples of its training length. Each run
is an ordinary `recurrentgemma train` run in `OUTDIR/STUDY/MODEL_sSEED`,
followed by `recurrentgemma evaluate --length_multipliers=...`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

# The checkout: the experiment files live in its `experiments/`.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MODELS = ("hawk", "griffin", "mqa")
SIZES = ("runlocal", "paper")
# Each run's length evaluation, the one the report reads.
LENGTH_EVAL_FILE = "length_eval.json"


@dataclasses.dataclass(frozen=True)
class Study:
  """One figure's worth of runs.

  Attributes:
    experiment: experiment file, relative to the repository root.
    title: what the figures call it.
    config_arg: extra `:arg` for the experiment file at the paper size.
    multipliers: evaluation lengths, as multiples of the training length.
    examples: sequences scored per evaluation length.
    per_position: also record the loss per position (language modelling).
    metric: the headline eval metric, "accuracy" or "loss".
  """

  experiment: str
  title: str
  config_arg: str = ""
  multipliers: tuple[int, ...] = (1,)
  examples: int = 512
  per_position: bool = False
  metric: str = "accuracy"


STUDIES: dict[str, Study] = {
    "selective_copy": Study("experiments/selective_copy.py",
                            "Selective copying"),
    "induction_heads": Study("experiments/induction_heads.py",
                             "Induction heads",
                             multipliers=(1, 2, 4, 8, 16, 32, 64)),
    "mqar": Study("experiments/mqar.py", "Multi-query associative recall"),
    # The corpus is the run's (lm.py's default or --config_arg=lm:files=).
    "lm": Study("experiments/lm.py", "Byte-level language modelling",
                config_arg="size=small",
                # The whole held-out split at every length.
                multipliers=(1, 2, 4, 8), examples=4096, per_position=True,
                metric="loss"),
}


@dataclasses.dataclass(frozen=True)
class Job:
  study: str
  model: str
  seed: int
  workdir: str


def config_flag(study: Study, model: str, size: str, extra: str = "") -> str:
  """`--config=experiments/x.py:model=M[,size arg][,extra]`."""
  args = [f"model={model}"]
  if size == "runlocal":
    args.append("runlocal")
  elif study.config_arg:
    args.append(study.config_arg)
  if extra:
    args.append(extra)
  return f"--config={os.path.join(REPO, study.experiment)}:{','.join(args)}"


def train_command(job: Job, size: str, overrides: Sequence[str],
                  config_args: dict[str, str]) -> list[str]:
  study = STUDIES[job.study]
  cmd = [sys.executable, "-m", "recurrentgemma_jax.cli.train",
         config_flag(study, job.model, size, config_args.get(job.study, "")),
         f"--config.seed={job.seed}", f"--workdir={job.workdir}"]
  for item in overrides:  # "field=value" or "STUDY:field=value"
    prefix, _, rest = item.partition(":")
    if rest and "=" not in prefix:
      if prefix == job.study:
        cmd.append(f"--config.{rest}")
    else:
      cmd.append(f"--config.{item}")
  return cmd


def eval_command(job: Job, size: str) -> list[str]:
  study = STUDIES[job.study]
  # runlocal: fewer sequences, so long CPU evaluations take minutes.
  examples = min(study.examples, 128) if size == "runlocal" else study.examples
  cmd = [sys.executable, "-m", "recurrentgemma_jax.cli.evaluate",
         f"--workdir={job.workdir}",
         "--length_multipliers=" + ",".join(map(str, study.multipliers)),
         f"--examples={examples}", f"--length_eval_file={LENGTH_EVAL_FILE}"]
  return cmd + (["--per_position"] if study.per_position else [])


def jobs_for(outdir: str, studies, models, seeds) -> list[Job]:
  return [Job(s, m, seed, os.path.join(outdir, s, f"{m}_s{seed}"))
          for s in studies for seed in seeds for m in models]


def read_json(path: str) -> Any:
  """The JSON value in `path`, or None if it is missing or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
