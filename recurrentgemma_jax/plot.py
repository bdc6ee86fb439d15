"""Draw loss and accuracy curves of one or more runs into a PNG.

    python -m recurrentgemma_jax.plot WORKDIR [WORKDIR ...] [--out=curves.png]

Reads each workdir's metrics.jsonl: train and eval loss (left), train and
eval accuracy (right), one colour per run, labelled by the workdir's name.
When a resumed run logged a step twice, the later line wins.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from etils import epath

PANELS = (("loss", "loss (nats / token)"), ("accuracy", "accuracy"))


def read_metrics(workdir: str) -> dict[str, dict[int, float]]:
  """`{"train/loss": {step: value}, ...}` from `workdir/metrics.jsonl`."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"no metrics.jsonl in {workdir}")
  series: dict[str, dict[int, float]] = {}
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    record = json.loads(line)
    step = record.pop("step")
    for name, value in record.items():
      series.setdefault(name, {})[step] = value
  return series


def plot(workdirs: Sequence[str], out: str) -> str:
  """Writes the curves of `workdirs` to the PNG `out`; returns its path."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.5))
  for run, workdir in enumerate(workdirs):
    series = read_metrics(workdir)
    label = os.path.basename(os.path.normpath(str(workdir)))
    color = f"C{run % 10}"
    for ax, (metric, _) in zip(axes, PANELS):
      for split, style in (("train", "-"), ("eval", "o--")):
        points = series.get(f"{split}/{metric}")
        if points:
          steps = sorted(points)
          ax.plot(steps, [points[s] for s in steps], style, color=color,
                  label=f"{label} {split}", markersize=3)
  for ax, (_, title) in zip(axes, PANELS):
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def main(argv: Sequence[str] | None = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", help="training workdirs")
  parser.add_argument("--out", default="curves.png", help="output PNG path")
  args = parser.parse_args(argv)
  try:
    print(plot(args.workdirs, args.out))
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
