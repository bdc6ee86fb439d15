r"""Reproduce the paper's small-scale studies: train, extrapolate, plot.

A study is one experiment file trained for each model family (Hawk, Griffin,
MQA) and seed, then evaluated at multiples of its training length. Runs go
in parallel, a few per accelerator; each is an ordinary training run in
`OUTDIR/STUDY/MODEL_sSEED` that resumes when the command is run again.

    python -m recurrentgemma_jax.reproduce run --study=induction_heads \
        --size=runlocal --seeds=0 --outdir=/tmp/paper
    python -m recurrentgemma_jax.reproduce run --study=all --size=paper \
        --seeds=0,1 --devices=0,1,2,3 --jobs_per_device=4 --outdir=runs \
        --override=total_steps=8000
    python -m recurrentgemma_jax.reproduce report --outdir=runs \
        --figures=docs/results

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
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("hawk", "griffin", "mqa")
SIZES = ("runlocal", "paper")
# Each run's length evaluation, the one `report` reads.
LENGTH_EVAL_FILE = "length_eval.json"
# Lines of a failed run's log that `run` prints.
LOG_TAIL_LINES = 12


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
  cmd = [sys.executable, "-m", "recurrentgemma_jax.train",
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
  cmd = [sys.executable, "-m", "recurrentgemma_jax.evaluate",
         f"--workdir={job.workdir}",
         "--length_multipliers=" + ",".join(map(str, study.multipliers)),
         f"--examples={examples}", f"--length_eval_file={LENGTH_EVAL_FILE}"]
  return cmd + (["--per_position"] if study.per_position else [])


class Runner:
  """Runs jobs in `slots` parallel workers, each bound to one device."""

  def __init__(self, devices: Sequence[str], jobs_per_device: int):
    self.slots = [d for d in devices for _ in range(jobs_per_device)]
    self.jobs_per_device = jobs_per_device
    self._free = list(self.slots)
    self._lock = threading.Lock()
    self._children: set[subprocess.Popen] = set()
    self.stopping = False

  def stop(self, *_) -> None:
    """Asks every running job to checkpoint and exit (they resume later)."""
    self.stopping = True
    with self._lock:
      for child in self._children:
        child.send_signal(signal.SIGTERM)

  def _env(self, device: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [REPO, env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
      env["JAX_PLATFORMS"] = "cpu"
    else:
      env["CUDA_VISIBLE_DEVICES"] = device
      # Several runs share one accelerator: no process may take it all.
      env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = (
          f"{0.9 / self.jobs_per_device:.3f}")
    return env

  def _call(self, cmd: list[str], device: str, log) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    with self._lock:
      if self.stopping:
        return -signal.SIGTERM
      child = subprocess.Popen(cmd, env=self._env(device), stdout=log,
                               stderr=subprocess.STDOUT, cwd=REPO)
      self._children.add(child)
    try:
      return child.wait()
    finally:
      with self._lock:
        self._children.discard(child)

  def run(self, job: Job, size: str, overrides, config_args,
          stages=("train", "eval")) -> dict:
    with self._lock:
      device = self._free.pop(0)
    try:
      return self._run(job, device, size, overrides, config_args, stages)
    finally:
      with self._lock:
        self._free.append(device)

  def _run(self, job: Job, device: str, size, overrides, config_args,
           stages) -> dict:
    os.makedirs(job.workdir, exist_ok=True)
    record_path = os.path.join(job.workdir, "run.json")
    record = read_json(record_path) or {}
    if record.get("status") == "done":
      return record
    train = train_command(job, size, overrides, config_args)
    evaluate = eval_command(job, size)
    record.update(
        study=job.study, model=job.model, seed=job.seed, size=size,
        train_command=_shell(train), eval_command=_shell(evaluate),
        device=device, host=platform.node(), status="running",
        train_seconds=record.get("train_seconds", 0.0),
        eval_seconds=record.get("eval_seconds", 0.0),
        started=record.get("started", time.strftime("%Y-%m-%d %H:%M:%S")))
    _write_json(record_path, record)
    with open(os.path.join(job.workdir, "log.txt"), "a",
              encoding="utf-8") as log:
      for stage, cmd in (("train", train), ("eval", evaluate)):
        if record.get(f"{stage}_done") or stage not in stages:
          continue
        start = time.perf_counter()
        code = self._call(cmd, device, log)
        record[f"{stage}_seconds"] += time.perf_counter() - start
        if code != 0 or self.stopping:
          record["status"] = "stopped" if self.stopping else "failed"
          record["returncode"] = code
          _write_json(record_path, record)
          return record
        record[f"{stage}_done"] = True
        _write_json(record_path, record)
    if "eval" not in stages:
      record["status"] = "trained"
      _write_json(record_path, record)
      return record
    record["status"] = "done"
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_json(record_path, record)
    return record


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
  """The last `lines` non-blank lines of the log at `path` (the error of a
  failed run), or a note that it cannot be read."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError as e:
    return [f"(no log: {e})"]
  return [line for line in text.splitlines() if line.strip()][-lines:]


def _shell(cmd: Sequence[str]) -> str:
  import shlex  # pylint: disable=g-import-not-at-top
  parts = ["python" if c == sys.executable else c for c in cmd]
  return " ".join(shlex.quote(p.replace(REPO + os.sep, "")) for p in parts)


def read_json(path: str) -> Any:
  """The JSON value in `path`, or None if it is missing or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _parse_list(text: str, allowed: Sequence[str], name: str) -> list[str]:
  items = [x.strip() for x in text.split(",") if x.strip()]
  if items == ["all"]:
    return list(allowed)
  bad = [x for x in items if x not in allowed]
  if not items or bad:
    raise SystemExit(f"error: --{name}={text!r}: allowed values are "
                     f"{', '.join(allowed)} (comma-separated) or all")
  return items


def jobs_for(outdir: str, studies, models, seeds) -> list[Job]:
  return [Job(s, m, seed, os.path.join(outdir, s, f"{m}_s{seed}"))
          for s in studies for seed in seeds for m in models]


def cmd_run(args) -> int:
  studies = _parse_list(args.study, list(STUDIES), "study")
  models = _parse_list(args.models, MODELS, "models")
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    raise SystemExit(f"error: --seeds={args.seeds!r}: give integers, e.g. "
                     "0,1,2") from None
  if args.size not in SIZES:
    raise SystemExit(f"error: --size={args.size!r}: allowed values are "
                     f"{', '.join(SIZES)}")
  config_args = {}
  for item in args.config_arg:
    study, _, value = item.partition(":")
    if study not in STUDIES or not value:
      raise SystemExit(f"error: --config_arg={item!r}: expected STUDY:ARGS "
                       f"with STUDY one of {', '.join(STUDIES)}")
    config_args[study] = value
  for item in args.override:
    prefix, _, rest = item.partition(":")
    if rest and "=" not in prefix and prefix not in STUDIES:
      raise SystemExit(f"error: --override={item!r}: {prefix!r} is not a "
                       f"study ({', '.join(STUDIES)})")
  runner = Runner(args.devices.split(","), args.jobs_per_device)
  jobs = jobs_for(args.outdir, studies, models, seeds)
  previous = {s: signal.signal(s, runner.stop)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    return _run_all(runner, jobs, args, config_args)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _run_all(runner: Runner, jobs: list[Job], args, config_args) -> int:
  """Runs `jobs`; exit status 1 if one failed, 143 if stopped by a signal."""
  print(f"{len(jobs)} runs on {len(runner.slots)} slots "
        f"({args.devices} x {args.jobs_per_device}) -> {args.outdir}",
        flush=True)
  start = time.perf_counter()
  failed = 0
  with concurrent.futures.ThreadPoolExecutor(len(runner.slots)) as pool:
    stages = ("train",) if args.train_only else ("train", "eval")
    futures = {pool.submit(runner.run, j, args.size, args.override,
                           config_args, stages): j for j in jobs}
    for done, future in enumerate(concurrent.futures.as_completed(futures),
                                  1):
      job, record = futures[future], future.result()
      failed += record["status"] == "failed"
      print(f"[{done}/{len(jobs)} {time.perf_counter() - start:.0f}s] "
            f"{job.study} {job.model} seed {job.seed}: {record['status']} "
            f"(train {record['train_seconds']:.0f}s, eval "
            f"{record['eval_seconds']:.0f}s) {job.workdir}/log.txt",
            flush=True)
      if record["status"] == "failed":
        for line in log_tail(os.path.join(job.workdir, "log.txt")):
          print(f"    {line}", flush=True)
  if failed:
    return 1
  return 128 + signal.SIGTERM if runner.stopping else 0


def cmd_report(args) -> int:
  from recurrentgemma_jax import results  # pylint: disable=g-import-not-at-top
  summary = results.write_report(args.outdir, args.figures or args.outdir)
  print(summary)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m recurrentgemma_jax.reproduce",
      description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  from recurrentgemma_jax import argparse_help  # pylint: disable=g-import-not-at-top
  run = sub.add_parser("run", help="train and evaluate the studies' runs",
                       formatter_class=argparse_help.DefaultsFormatter)
  run.add_argument("--study", default="all",
                   help=f"comma-separated: {', '.join(STUDIES)} or all")
  run.add_argument("--models", default="all",
                   help="comma-separated: hawk, griffin, mqa or all")
  run.add_argument("--seeds", default="0", help="comma-separated integers")
  run.add_argument("--size", default="runlocal",
                   help="runlocal (minutes on a CPU) or paper (Appendix H)")
  run.add_argument("--outdir", required=True)
  run.add_argument("--devices", default="cpu",
                   help="cpu, or comma-separated accelerator ids (0,1,2,3)")
  run.add_argument("--jobs_per_device", type=int, default=1,
                   help="runs sharing each device")
  run.add_argument("--override", action="append", default=[],
                   help="a config field for every run, e.g. total_steps=8000,"
                   " or for one study: lm:total_steps=2000 (repeatable)")
  run.add_argument("--config_arg", action="append", default=[],
                   help="STUDY:ARGS appended to that study's config "
                   "argument, e.g. lm:files=/data/corpus.txt")
  run.add_argument("--train_only", action="store_true",
                   help="skip the length evaluations (run again without "
                   "this flag to add them)")
  report = sub.add_parser("report", help="figures and tables from OUTDIR")
  report.add_argument("--outdir", required=True)
  report.add_argument("--figures", default="",
                      help="where the PNGs go (default OUTDIR)")
  args = parser.parse_args(argv)
  if args.command == "run" and args.jobs_per_device < 1:
    parser.error("--jobs_per_device must be >= 1")
  return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
  sys.exit(main())
