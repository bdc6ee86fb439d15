r"""Reproduce the paper's small-scale studies: train, extrapolate, plot.

A study is one experiment file trained for each model family (Hawk, Griffin,
MQA) and seed, then evaluated at multiples of its training length. Runs go
in parallel, a few per accelerator; each is an ordinary training run in
`OUTDIR/STUDY/MODEL_sSEED` that resumes when the command is run again.

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
(tables of final metrics, mean and spread over seeds). SIGTERM or Ctrl-C
stops the runs at a checkpoint; running again continues them.

The flags marked `run:` belong to `run`, those marked `report:` to `report`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.paper import studies

ACTIONS = ("run", "report")
# The flags of each action (--outdir belongs to both).
RUN_FLAGS = ("study", "models", "seeds", "size", "devices", "jobs_per_device",
             "override", "config_arg", "train_only")
REPORT_FLAGS = ("figures",)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("outdir", None, "the studies' runs (run: written, "
                      "report: read)", **kw)
  flags.DEFINE_string("study", "all", "run: comma-separated: "
                      f"{', '.join(studies.STUDIES)} or all", **kw)
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


def _parse_list(text: str, allowed: Sequence[str], name: str) -> list[str]:
  items = [x.strip() for x in text.split(",") if x.strip()]
  if items == ["all"]:
    return list(allowed)
  bad = [x for x in items if x not in allowed]
  if not items or bad:
    raise SystemExit(f"error: --{name}={text!r}: allowed values are "
                     f"{', '.join(allowed)} (comma-separated) or all")
  return items


def _run(f: flags.FlagValues) -> int:
  """`run`: checks every flag, then trains and evaluates the studies."""
  from recurrentgemma_jax.paper import runner  # pylint: disable=g-import-not-at-top

  chosen = _parse_list(f.study, list(studies.STUDIES), "study")
  models = _parse_list(f.models, studies.MODELS, "models")
  try:
    seeds = [int(s) for s in f.seeds.split(",")]
  except ValueError:
    raise SystemExit(f"error: --seeds={f.seeds!r}: give integers, e.g. "
                     "0,1,2") from None
  if f.size not in studies.SIZES:
    raise SystemExit(f"error: --size={f.size!r}: allowed values are "
                     f"{', '.join(studies.SIZES)}")
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


def run(f: flags.FlagValues, args: list[str]) -> int:
  """`args[0]` (run or report) with the flags; returns the exit code."""
  if len(args) != 1 or args[0] not in ACTIONS:
    print(f"error: give one action, run or report (got {args})",
          file=sys.stderr)
    return 2
  action = args[0]
  other = REPORT_FLAGS if action == "run" else RUN_FLAGS
  given = [f"--{name}" for name in other if f[name].present]
  if given:
    print(f"error: {', '.join(given)} not allowed with {action}",
          file=sys.stderr)
    return 2
  if f.outdir is None:
    print(f"error: {action} needs --outdir", file=sys.stderr)
    return 2
  return _run(f) if action == "run" else _report(f)


def main() -> None:
  common.start(sys.modules[__name__])


if __name__ == "__main__":
  main()
