"""Runs the jobs of the paper's studies in parallel, a few per accelerator.

Each job trains, then evaluates, in subprocesses bound to one device; its
directory keeps `log.txt` (the run's own output), `run.json` (command,
hardware, wall time, status) and what training writes. SIGTERM or Ctrl-C
stops the runs at a checkpoint; running the same jobs again continues them.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from recurrentgemma_jax import files
from recurrentgemma_jax.paper import studies
from recurrentgemma_jax.paper.studies import Job
from recurrentgemma_jax.paper.studies import read_json

REPO = studies.REPO
# Lines of a failed run's log that `run_jobs` prints.
LOG_TAIL_LINES = 12


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
    train = studies.train_command(job, size, overrides, config_args)
    evaluate = studies.eval_command(job, size)
    record.update(
        study=job.study, model=job.model, seed=job.seed, size=size,
        **({"variant": job.variant} if job.variant else {}),
        train_command=_shell(train), eval_command=_shell(evaluate),
        device=device, host=platform.node(), status="running",
        train_seconds=record.get("train_seconds", 0.0),
        eval_seconds=record.get("eval_seconds", 0.0),
        started=record.get("started", time.strftime("%Y-%m-%d %H:%M:%S")))
    files.write_json_atomic(record_path, record)
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
          files.write_json_atomic(record_path, record)
          return record
        record[f"{stage}_done"] = True
        files.write_json_atomic(record_path, record)
    if "eval" not in stages:
      record["status"] = "trained"
      files.write_json_atomic(record_path, record)
      return record
    record["status"] = "done"
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    files.write_json_atomic(record_path, record)
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


def run_jobs(jobs: Sequence[Job], *, size: str, overrides: Sequence[str],
             config_args: dict[str, str], devices: Sequence[str],
             jobs_per_device: int, train_only: bool, outdir: str) -> int:
  """Runs `jobs` (printing a line as each ends, and a failed one's last log
  lines); exit status 1 if one failed, 143 if stopped by a signal."""
  runner = Runner(devices, jobs_per_device)
  previous = {s: signal.signal(s, runner.stop)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    return _run_all(runner, list(jobs), size, overrides, config_args,
                    train_only, outdir)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _run_all(runner: Runner, jobs: list[Job], size: str, overrides,
             config_args, train_only: bool, outdir: str) -> int:
  print(f"{len(jobs)} runs on {len(runner.slots)} slots "
        f"({','.join(dict.fromkeys(runner.slots))} x "
        f"{runner.jobs_per_device}) -> {outdir}", flush=True)
  start = time.perf_counter()
  failed = 0
  with concurrent.futures.ThreadPoolExecutor(len(runner.slots)) as pool:
    stages = ("train",) if train_only else ("train", "eval")
    futures = {pool.submit(runner.run, j, size, overrides, config_args,
                           stages): j for j in jobs}
    for done, future in enumerate(concurrent.futures.as_completed(futures),
                                  1):
      job, record = futures[future], future.result()
      failed += record["status"] == "failed"
      print(f"[{done}/{len(jobs)} {time.perf_counter() - start:.0f}s] "
            f"{job.study} {job.model}{f' {job.variant}' if job.variant else ''}"
            f" seed {job.seed}: {record['status']} "
            f"(train {record['train_seconds']:.0f}s, eval "
            f"{record['eval_seconds']:.0f}s) {job.workdir}/log.txt",
            flush=True)
      if record["status"] == "failed":
        for line in log_tail(os.path.join(job.workdir, "log.txt")):
          print(f"    {line}", flush=True)
  if failed:
    return 1
  return 128 + signal.SIGTERM if runner.stopping else 0
