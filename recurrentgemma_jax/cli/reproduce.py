r"""Reproduce the paper's small-scale studies: train, extrapolate, plot.

A study is one experiment file trained for each model family (Hawk, Griffin,
MQA) and seed, then evaluated at multiples of its training length. Runs go
in parallel, a few per accelerator; each is an ordinary training run in
`OUTDIR/STUDY/MODEL_sSEED` that resumes when the command is run again. The
scaling study `code_scaling` (paper Figure 2 on the Python standard
library's source, bytes) trains each family at three sizes of
experiments/lm.py (`size=1m,4m,16m`, 20 tokens per non-embedding
parameter) in `OUTDIR/code_scaling/MODEL_SIZE_sSEED`; it has no runlocal
size. `--study=all` runs every study that has the chosen `--size`.

    recurrentgemma reproduce run --study=induction_heads \
        --size=runlocal --seeds=0 --outdir=/tmp/paper
    recurrentgemma reproduce run --study=all --size=paper \
        --seeds=0,1 --devices=0,1,2,3 --jobs_per_device=4 --outdir=runs \
        --override=total_steps=8000
    recurrentgemma reproduce report --outdir=runs --figures=docs/results

`run` prints one line per finished run (for a failed one, also the last
lines of its log) and leaves in each run directory `log.txt` (the run's own
output), `metrics.jsonl`, checkpoints, `length_eval.json` (the study's
length evaluation, which `report` reads; an `evaluate --length_multipliers`
by hand writes its own file, named by its settings) and `run.json`
(command, hardware, wall time). The language-modelling study trains on the
default corpus of experiments/lm.py, the Python standard library's source
(`--config_arg=lm:files=PATH` for your text). `report`
turns every finished run into PNG figures and `summary.md` / `summary.json`
(tables of final metrics, mean and spread over seeds; for `code_scaling`,
held-out loss against training FLOPs and tokens, and Griffin against MQA
at equal FLOPs). SIGTERM or Ctrl-C stops the runs at a checkpoint; running
again continues them.

`control` is one run of the official-model control (the
`official_control` study; `recurrentgemma_jax/paper/official_control.py`):
our Griffin and the official `recurrentgemma` one trained side by side
from the same initial weights on the same batches, then both evaluated at
the same lengths (`WORKDIR/official_control.json`):

    recurrentgemma reproduce control \
        --config=experiments/induction_heads.py:model=griffin \
        --workdir=/tmp/control [--config.total_steps=6200]
    recurrentgemma reproduce control --workdir=/tmp/control \
        --length_multipliers=1,2,4,8,16,32,64 --examples=512

The flags marked `run:` belong to `run`, those marked `report:` to `report`,
those marked `control:` to `control`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.paper import studies

ACTIONS = ("run", "report", "control")
# The flags of each action.
FLAGS_OF = {
    "run": ("outdir", "study", "models", "seeds", "size", "devices",
            "jobs_per_device", "override", "config_arg", "train_only"),
    "report": ("outdir", "figures"),
    "control": ("config", "workdir", "length_multipliers", "examples"),
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("outdir", None, "the studies' runs (run: written, "
                      "report: read)", **kw)
  flags.DEFINE_string("study", "all", "run: comma-separated: "
                      f"{', '.join(studies.STUDIES)} or all (those with "
                      "this --size and one of --models)", **kw)
  flags.DEFINE_string("models", "all",
                      "run: comma-separated: hawk, griffin, mqa or all", **kw)
  flags.DEFINE_string("seeds", "0", "run: comma-separated integers", **kw)
  flags.DEFINE_string("size", "runlocal", "run: runlocal (minutes on a CPU) "
                      "or paper (Appendix H)", **kw)
  flags.DEFINE_string("devices", "cpu", "run: cpu, or comma-separated "
                      "accelerator ids (0,1,2,3)", **kw)
  flags.DEFINE_integer("jobs_per_device", 1, "run: runs sharing each device",
                       lower_bound=1, **kw)
  flags.DEFINE_multi_string(
      "override", [], "run: a config field for every run, e.g. "
      "total_steps=8000, or for one study: lm:total_steps=2000 (repeatable)",
      **kw)
  flags.DEFINE_multi_string(
      "config_arg", [], "run: STUDY:ARGS appended to that study's config "
      "argument, e.g. lm:files=/data/corpus.txt (repeatable)", **kw)
  flags.DEFINE_bool("train_only", False, "run: skip the length evaluations "
                    "(run again without this flag to add them)", **kw)
  flags.DEFINE_string("figures", "",
                      "report: where the PNGs go (default OUTDIR)", **kw)
  config_flags.DEFINE_config_file(
      "config", None, "control: experiment config file (experiments/*.py"
      "[:arg]) to train both models on", lock_config=True, **kw)
  flags.DEFINE_string("workdir", None, "control: the run's directory", **kw)
  flags.DEFINE_list("length_multipliers", [], "control: evaluate both "
                    "models at these multiples of the training length", **kw)
  flags.DEFINE_integer("examples", 512, "control: sequences scored per "
                       "evaluation length", lower_bound=1, **kw)


def _parse_list(text: str, allowed: Sequence[str], name: str) -> list[str]:
  items = [x.strip() for x in text.split(",") if x.strip()]
  if items == ["all"]:
    return list(allowed)
  bad = [x for x in items if x not in allowed]
  if not items or bad:
    raise SystemExit(f"error: --{name}={text!r}: allowed values are "
                     f"{', '.join(allowed)} (comma-separated) or all")
  return items


def chosen_studies(text: str, size: str, models: Sequence[str]) -> list[str]:
  """The studies `--study=text` names; `all` is every study that has `size`
  and trains one of `models` (the official-model control, which needs the
  official package, only when named), a named one that does not is an
  error."""
  chosen = _parse_list(text, list(studies.STUDIES), "study")
  fits = {s: (size in studies.STUDIES[s].sizes,
              bool(set(models) & set(studies.STUDIES[s].models)))
          for s in chosen}
  if text.strip() == "all":
    return [s for s in chosen
            if all(fits[s]) and studies.STUDIES[s].tool != "control"]
  for study in chosen:
    spec = studies.STUDIES[study]
    if not fits[study][0]:
      raise SystemExit(f"error: --study={study} has no --size={size}; its "
                       f"sizes are {', '.join(spec.sizes)}")
    if not fits[study][1]:
      raise SystemExit(f"error: --study={study} trains "
                       f"{', '.join(spec.models)} only, not "
                       f"--models={','.join(models)}")
  return chosen


def _run(f: flags.FlagValues) -> int:
  """`run`: checks every flag, then trains and evaluates the studies."""
  from recurrentgemma_jax.paper import runner  # pylint: disable=g-import-not-at-top

  if f.size not in studies.SIZES:
    raise SystemExit(f"error: --size={f.size!r}: allowed values are "
                     f"{', '.join(studies.SIZES)}")
  models = _parse_list(f.models, studies.MODELS, "models")
  chosen = chosen_studies(f.study, f.size, models)
  try:
    seeds = [int(s) for s in f.seeds.split(",")]
  except ValueError:
    raise SystemExit(f"error: --seeds={f.seeds!r}: give integers, e.g. "
                     "0,1,2") from None
  config_args = {}
  for item in f.config_arg:
    study, _, value = item.partition(":")
    if study not in studies.STUDIES or not value:
      raise SystemExit(f"error: --config_arg={item!r}: expected STUDY:ARGS "
                       f"with STUDY one of {', '.join(studies.STUDIES)}")
    config_args[study] = value
  for item in f.override:
    prefix, _, rest = item.partition(":")
    if rest and "=" not in prefix and prefix not in studies.STUDIES:
      raise SystemExit(f"error: --override={item!r}: {prefix!r} is not a "
                       f"study ({', '.join(studies.STUDIES)})")
  return runner.run_jobs(
      studies.jobs_for(f.outdir, chosen, models, seeds), size=f.size,
      overrides=f.override, config_args=config_args,
      devices=f.devices.split(","), jobs_per_device=f.jobs_per_device,
      train_only=f.train_only, outdir=f.outdir)


def _report(f: flags.FlagValues) -> int:
  """`report`: figures and tables of every finished run."""
  from recurrentgemma_jax.paper import report  # pylint: disable=g-import-not-at-top

  try:
    print(report.write_report(f.outdir, f.figures or f.outdir))
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def _control(f: flags.FlagValues) -> int:
  """`control`: trains both models (--config), evaluates them at
  --length_multipliers, or both in that order."""
  from recurrentgemma_jax.paper import official_control  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  try:
    multipliers = [int(m) for m in f.length_multipliers]
  except ValueError:
    print(f"error: --length_multipliers={','.join(f.length_multipliers)}: "
          "give integers >= 1, e.g. 1,2,4", file=sys.stderr)
    return 2
  try:
    if f.config is not None:
      result = official_control.train(f.config, f.workdir)
      if result.preempted:
        return 143  # 128 + SIGTERM: interrupted, resumes when run again
    if multipliers:
      print(official_control.markdown(official_control.evaluate(
          f.workdir, multipliers, f.examples)))
  except (ConfigError, loop.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run(f: flags.FlagValues, args: list[str]) -> int:
  """`args[0]` (run, report or control) with the flags; returns the exit
  code."""
  if len(args) != 1 or args[0] not in ACTIONS:
    print(f"error: give one action, run, report or control (got {args})",
          file=sys.stderr)
    return 2
  action = args[0]
  other = {name for names in FLAGS_OF.values() for name in names
           } - set(FLAGS_OF[action])
  given = [f"--{name}" for name in sorted(other) if f[name].present]
  if given:
    print(f"error: {', '.join(given)} not allowed with {action}",
          file=sys.stderr)
    return 2
  if action == "control":
    if f.workdir is None:
      print("error: control needs --workdir", file=sys.stderr)
      return 2
    if f.config is None and not f.length_multipliers:
      print("error: control needs --config (train both models) and/or "
            "--length_multipliers (evaluate them)", file=sys.stderr)
      return 2
    return _control(f)
  if f.outdir is None:
    print(f"error: {action} needs --outdir", file=sys.stderr)
    return 2
  return _run(f) if action == "run" else _report(f)


def main() -> None:
  common.start(sys.modules[__name__], quiet_logs=True, tpu_guard=True)


if __name__ == "__main__":
  main()
