"""What the user sees: metrics.jsonl, TensorBoard events and a progress line.

Only process 0 writes. Each line of `WORKDIR/metrics.jsonl` is one JSON
object `{"step": int, "<split>/<name>": float, ...}` (e.g. `train/loss`,
`eval/accuracy`); a resumed run appends, so a step may appear twice (the
later line wins), and starts on a fresh line after a torn last line (a
killed writer). `plot.py` reads this file; `read_records` skips torn lines.

Log lines (`log`) end with the wall-clock time.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping

from etils import epath

from recurrentgemma_jax.training.workdir import WorkdirError
from recurrentgemma_jax.training.workdir import describe_storage
from recurrentgemma_jax.training.workdir import disk_full

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard event files.

  `workdir` may be local or remote (e.g. `gs://`); remote object stores
  cannot append, so there the file is rewritten with every record.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self._path = epath.Path(workdir) / METRICS_FILE
    self._remote = "://" in str(workdir)
    self._lines = (self._path.read_text().splitlines(keepends=True)
                   if self._remote and self._path.exists() else [])
    if self._lines and not self._lines[-1].endswith("\n"):
      self._lines[-1] += "\n"
    # A torn last line (a writer killed mid-line) is ended before appending.
    self._newline = not self._remote and _ends_torn(self._path)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    try:
      if self._remote:
        self._lines.append(line)
        self._path.write_text("".join(self._lines))
      else:
        with open(self._path, "a", encoding="utf-8") as f:
          f.write(("\n" if self._newline else "") + line)
        self._newline = False
    except OSError as e:
      if not disk_full(e):
        raise
      raise WorkdirError(
          f"cannot write {self._path} at step {step}: no space left on "
          f"device ({describe_storage(str(self._path))})") from e
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


def _ends_torn(path: epath.Path) -> bool:
  try:
    with open(path, "rb") as f:
      f.seek(0, 2)
      if f.tell() == 0:
        return False
      f.seek(-1, 2)
      return f.read(1) != b"\n"
  except FileNotFoundError:
    return False


def read_records(workdir: str, *, warn: bool = False) -> list[dict]:
  """The records of `workdir/metrics.jsonl` in file order; none when there
  is no file. Torn, non-UTF-8 or non-record lines (a run killed while
  writing) are skipped, with a warning naming `file:line` when `warn`."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  if path.is_dir():
    raise WorkdirError(f"{path} is a folder, not the run's metrics file")
  out = []
  for number, raw in enumerate(path.read_bytes().splitlines(), 1):
    if not raw.strip():
      continue
    try:
      record = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
      problem = str(e)
    else:
      step = record.get("step") if isinstance(record, dict) else None
      problem = (None if isinstance(step, int) and not isinstance(step, bool)
                 else "not a record with an integer step")
    if problem is None:
      out.append(record)
    elif warn:
      warnings.warn(f"{path}:{number}: skipped a bad line ({problem})",
                    stacklevel=2)
  return out


def final_scalars(records: list[dict], step: int) -> dict[str, float]:
  """The newest value of every scalar logged at or before `step`."""
  out: dict[str, float] = {}
  for record in records:
    if record["step"] <= step:
      out.update({k: v for k, v in record.items() if k != "step"})
  return out


def best_eval(records: list[dict], step: int) -> dict | None:
  """The record with the lowest `eval/loss` at or before `step`."""
  evals = {}
  for record in records:  # a step evaluated twice: the later line wins
    if "eval/loss" in record and record["step"] <= step:
      evals[record["step"]] = record
  return min(evals.values(), key=lambda r: r["eval/loss"], default=None)


def summary(records: list[dict], step: int, total_steps: int) -> str:
  """`step 600/600 | train loss 0.1234 | eval loss 0.17 (acc 0.944) at
  step 600 | best eval loss 0.17 at step 600` from the run's records."""
  final = final_scalars(records, step)
  parts = [f"step {step}/{total_steps}"]
  if "train/loss" in final:
    parts.append(f"train loss {final['train/loss']:.4f}")
  evals = [r for r in records if "eval/loss" in r and r["step"] <= step]
  if evals:
    last = evals[-1]
    accuracy = (f" (accuracy {last['eval/accuracy']:.4f})"
                if "eval/accuracy" in last else "")
    parts.append(f"eval loss {last['eval/loss']:.4f}{accuracy} at step "
                 f"{last['step']}")
    best = best_eval(records, step)
    parts.append(f"best eval loss {best['eval/loss']:.4f} at step "
                 f"{best['step']}")
  return " | ".join(parts)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


class Throughput:
  """Tokens/s, MFU and ETA over the steps since the last report.

  Call `resume()` after anything that is not a training step (compilation,
  evaluation, checkpoint saves) to leave it out of the measurement, and
  `report()` right after the device finished the counted steps.
  """

  def __init__(self, total_steps: int, tokens_per_step: int,
               flops_per_step: float, peak_flops: float | None):
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.peak_flops = peak_flops
    self._start = time.perf_counter()
    self._steps = 0
    self._step_time = None

  def resume(self) -> None:
    self._start = time.perf_counter()
    self._steps = 0

  def _flush(self) -> None:
    if self._steps:
      elapsed = time.perf_counter() - self._start
      self._step_time = elapsed / self._steps
    self._start = time.perf_counter()
    self._steps = 0

  def step(self) -> None:
    self._steps += 1

  def report(self, step: int) -> dict[str, float]:
    """Throughput scalars over the steps since the last report."""
    self._flush()
    if self._step_time is None:
      return {}
    out = {
        "perf/step_time_s": self._step_time,
        "perf/tokens_per_s": self.tokens_per_step / self._step_time,
        "perf/eta_s": (self.total_steps - step) * self._step_time,
    }
    if self.peak_flops:
      out["perf/mfu"] = self.flops_per_step / self._step_time / self.peak_flops
    return out


def progress_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
  """`step 120/1000 | loss 1.234 | acc 0.52 | 11.2k tok/s | MFU 3.1% | ETA 2m10s`."""
  parts = [f"step {step}/{total}"]
  if "train/loss" in scalars:
    parts.append(f"loss {scalars['train/loss']:.4f}")
  if "train/accuracy" in scalars:
    parts.append(f"acc {scalars['train/accuracy']:.3f}")
  if "perf/tokens_per_s" in scalars:
    parts.append(f"{_si(scalars['perf/tokens_per_s'])} tok/s")
  mfu = scalars.get("perf/mfu")
  parts.append("MFU n/a" if mfu is None else f"MFU {100 * mfu:.1f}%")
  if "perf/eta_s" in scalars:
    parts.append(f"ETA {format_duration(scalars['perf/eta_s'])}")
  return " | ".join(parts)


def memory_line(stats: list[Mapping[str, int] | None]) -> str | None:
  """`device memory: peak 55.2 GB of 150.1 GB` from the local devices'
  `memory_stats()` (the fullest device's peak), or None where a backend
  does not report them (the CPU)."""
  if not stats or any(not s or "peak_bytes_in_use" not in s for s in stats):
    return None
  fullest = max(stats, key=lambda s: s["peak_bytes_in_use"])
  line = f"device memory: peak {fullest['peak_bytes_in_use'] / 1e9:.1f} GB"
  if fullest.get("bytes_limit"):
    line += f" of {fullest['bytes_limit'] / 1e9:.1f} GB"
  if len(stats) > 1:
    line += f" (the fullest of {len(stats)} local devices)"
  return line


def _si(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  for unit, scale in (("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.1f}{unit}"
  return f"{value:.0f}"


def log(message: str, *, enabled: bool = True) -> None:
  """A line for the user on stdout, ending with the time of day (callers
  pass `enabled` = process 0). The time goes last so that lines still
  start with what they report (`step 120/1000 | ...`)."""
  if enabled:
    print(f"{message}  [{time.strftime('%H:%M:%S')}]", flush=True)
