"""The paper's small-scale studies: which runs make up each, and the
train and evaluation commands of one run.

A study is one experiment file trained for each model family (Hawk, Griffin,
MQA), seed and (for a scaling study) model size, then evaluated at
multiples of its training length. Each run is an ordinary `recurrentgemma
train` run in `OUTDIR/STUDY/MODEL_sSEED` (`MODEL_SIZE_sSEED` with sizes),
followed by `recurrentgemma evaluate --length_multipliers=...`. The
official-model control (`tool="control"`) runs `recurrentgemma reproduce
control` instead: our Griffin and the official one trained side by side
(`official_control.py`), then both evaluated at the same lengths.
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
# An official-model control run's (`official_control.RESULT_FILE`).
CONTROL_RESULT_FILE = "official_control.json"


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
    tool: "train" (`recurrentgemma train`, then `evaluate`) or "control"
      (`recurrentgemma reproduce control`: ours and the official model).
    models: the families it trains.
    variants: model sizes, each run with `size=VARIANT` (in place of
      `config_arg`); () for one size.
    sizes: the `--size` values it has (runlocal, paper).
  """

  experiment: str
  title: str
  config_arg: str = ""
  multipliers: tuple[int, ...] = (1,)
  examples: int = 512
  per_position: bool = False
  metric: str = "accuracy"
  tool: str = "train"
  models: tuple[str, ...] = MODELS
  variants: tuple[str, ...] = ()
  sizes: tuple[str, ...] = SIZES


STUDIES: dict[str, Study] = {
    "selective_copy": Study("experiments/selective_copy.py",
                            "Selective copying"),
    "induction_heads": Study("experiments/induction_heads.py",
                             "Induction heads",
                             multipliers=(1, 2, 4, 8, 16, 32, 64)),
    "mqar": Study("experiments/mqar.py", "Multi-query associative recall"),
    # Width 128 and 8 pairs, sized for 2 CPU cores (docs/results.md).
    "mqar_wide": Study("experiments/mqar.py",
                       "Multi-query associative recall, width 128, 8 pairs",
                       config_arg="size=wide", sizes=("paper",)),
    # The corpus is the run's (lm.py's default or --config_arg=lm:files=).
    "lm": Study("experiments/lm.py", "Byte-level language modelling",
                config_arg="size=small",
                # The whole held-out split at every length.
                multipliers=(1, 2, 4, 8), examples=4096, per_position=True,
                metric="loss"),
    # Paper Figure 2 on the Python standard library's source (lm.py's
    # default corpus), bytes: held-out loss against training FLOPs.
    "code_scaling": Study("experiments/lm.py", "Scaling on Python source",
                          multipliers=(1, 2, 4, 8), examples=4096,
                          per_position=True, metric="loss",
                          variants=("1m", "4m", "16m"), sizes=("paper",)),
    # Our Griffin and the official one from the same weights and batches.
    "official_control": Study("experiments/induction_heads.py",
                              "Induction heads: ours and the official Griffin",
                              multipliers=(1, 2, 4, 8, 16, 32, 64),
                              tool="control", models=("griffin",)),
}
# The module every command runs as `python -m`.
TRAIN = "recurrentgemma_jax.cli.train"
EVALUATE = "recurrentgemma_jax.cli.evaluate"
REPRODUCE = "recurrentgemma_jax.cli.reproduce"


@dataclasses.dataclass(frozen=True)
class Job:
  study: str
  model: str
  seed: int
  workdir: str
  variant: str = ""  # the model size of a scaling study


def config_flag(study: Study, model: str, size: str, extra: str = "",
                variant: str = "") -> str:
  """`--config=experiments/x.py:model=M[,size arg][,extra]`."""
  args = [f"model={model}"]
  if variant:
    args.append(f"size={variant}")
  elif size == "runlocal":
    args.append("runlocal")
  elif study.config_arg:
    args.append(study.config_arg)
  if extra:
    args.append(extra)
  return f"--config={os.path.join(REPO, study.experiment)}:{','.join(args)}"


def train_command(job: Job, size: str, overrides: Sequence[str],
                  config_args: dict[str, str]) -> list[str]:
  study = STUDIES[job.study]
  tool = ([TRAIN] if study.tool == "train" else [REPRODUCE, "control"])
  cmd = [sys.executable, "-m", *tool,
         config_flag(study, job.model, size, config_args.get(job.study, ""),
                     job.variant),
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
  lengths = "--length_multipliers=" + ",".join(map(str, study.multipliers))
  if study.tool == "control":  # writes official_control.RESULT_FILE
    return [sys.executable, "-m", REPRODUCE, "control",
            f"--workdir={job.workdir}", lengths, f"--examples={examples}"]
  cmd = [sys.executable, "-m", EVALUATE, f"--workdir={job.workdir}",
         lengths, f"--examples={examples}",
         f"--length_eval_file={LENGTH_EVAL_FILE}"]
  return cmd + (["--per_position"] if study.per_position else [])


def run_name(model: str, seed: int, variant: str = "") -> str:
  """A run's directory name in `OUTDIR/STUDY/`."""
  return f"{model}_{variant}_s{seed}" if variant else f"{model}_s{seed}"


def jobs_for(outdir: str, studies, models, seeds) -> list[Job]:
  """Every run of `studies` for `models` (those each study trains) and
  `seeds`, and each study's variants."""
  return [Job(s, m, seed, os.path.join(outdir, s, run_name(m, seed, v)), v)
          for s in studies for seed in seeds
          for v in (STUDIES[s].variants or ("",))
          for m in models if m in STUDIES[s].models]


def read_json(path: str) -> Any:
  """The JSON value in `path`, or None if it is missing or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
