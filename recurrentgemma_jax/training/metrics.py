"""What the user sees: metrics.jsonl, TensorBoard events and a progress line.

Only process 0 writes. Each line of `WORKDIR/metrics.jsonl` is one JSON
object `{"step": int, "<split>/<name>": float, ...}` (e.g. `train/loss`,
`eval/accuracy`); a resumed run appends, so a step may appear twice (the
later line wins). `plot.py` reads this file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

from etils import epath


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard event files.

  `workdir` may be local or remote (e.g. `gs://`); remote object stores
  cannot append, so there the file is rewritten with every record.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self._path = epath.Path(workdir) / "metrics.jsonl"
    self._remote = "://" in str(workdir)
    self._lines = (self._path.read_text().splitlines(keepends=True)
                   if self._remote and self._path.exists() else [])
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))
    else:
      with open(self._path, "a", encoding="utf-8") as f:
        f.write(line)
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


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


def _si(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  for unit, scale in (("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.1f}{unit}"
  return f"{value:.0f}"


def log(message: str, *, enabled: bool = True) -> None:
  """A line for the user on stdout (callers pass `enabled` = process 0)."""
  if enabled:
    print(message, flush=True)
