"""Loss and accuracy curves of one or more runs, drawn into a PNG
(`recurrentgemma plot` is its command line; `recurrentgemma_jax.plot_metrics`
is `plot`).

    plot(["/tmp/sc_hawk", "/tmp/sc_griffin"], "/tmp/sc_curves.png")

Reads each workdir's metrics.jsonl: train and eval loss (left), train and
eval accuracy (right), one colour per run, labelled by the workdir's name.
When a resumed run logged a step twice, the later line wins; a line that is
not a JSON record (a run killed while writing it) is skipped with a
warning. The accuracy panel marks chance (uniform guessing among the
answers) for synthetic tasks, from each workdir's config.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from etils import epath

from recurrentgemma_jax.training import metrics as metrics_lib

PANELS = (("loss", "loss (nats / token)"), ("accuracy", "accuracy"))


def read_metrics(workdir: str) -> dict[str, dict[int, float]]:
  """`{"train/loss": {step: value}, ...}` from `workdir/metrics.jsonl`
  (bad lines skipped with a warning: `metrics.read_records`)."""
  if not (epath.Path(workdir) / metrics_lib.METRICS_FILE).exists():
    raise FileNotFoundError(f"no metrics.jsonl in {workdir}")
  series: dict[str, dict[int, float]] = {}
  for record in metrics_lib.read_records(workdir, warn=True):
    step = record.pop("step")
    for name, value in record.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        series.setdefault(name, {})[step] = value
  return series


def chance_accuracy(workdir: str) -> float | None:
  """Accuracy of uniform guessing on the run's task (synthetic tasks, from
  `workdir/config.json`), or None when unknown."""
  path = epath.Path(workdir) / "config.json"
  try:
    config = json.loads(path.read_text())
    data = dict(config["data"])
    task = data.pop("task")
    from recurrentgemma_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    if task not in synthetic.TASKS:
      return None
    return float(synthetic.TASKS[task](config["seq_len"], config["seed"],
                                       "eval", **data).chance_accuracy)
  except (OSError, ValueError, TypeError, KeyError, AttributeError):
    return None


def figure(workdirs: Sequence[str]):
  """The matplotlib figure of the curves of `workdirs` (close it after)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.5))
  chances = set()
  for run, workdir in enumerate(workdirs):
    series = read_metrics(workdir)
    label = os.path.basename(os.path.normpath(str(workdir)))
    color = f"C{run % 10}"
    for ax, (metric, _) in zip(axes, PANELS):
      for split, style in (("train", "-"), ("eval", "o--")):
        points = series.get(f"{split}/{metric}")
        if points:
          steps = sorted(points)
          # A single point is a marker (a line needs two).
          ax.plot(steps, [points[s] for s in steps],
                  style + ("o" if len(steps) == 1 and "o" not in style
                           else ""),
                  color=color, label=f"{label} {split}", markersize=3)
    chance = chance_accuracy(workdir)
    if chance is not None and series:
      chances.add(chance)
  accuracy = axes[[m for m, _ in PANELS].index("accuracy")]
  for chance in sorted(chances):
    accuracy.axhline(chance, color="gray", linestyle=":", linewidth=1,
                     label=f"chance {chance:.3g}")
  for ax, (_, title) in zip(axes, PANELS):
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def plot(workdirs: Sequence[str], out: str) -> str:
  """Writes the curves of `workdirs` to the PNG `out`; returns its path."""
  fig = figure(workdirs)
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  try:
    fig.savefig(out, dpi=120)
  finally:
    plt.close(fig)
  return out
