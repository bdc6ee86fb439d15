"""What the studies' figures and tables share: a colour and a label per
model family, matplotlib without a display, axis labelling, mean and spread
over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

COLORS = {"hawk": "C0", "griffin": "C1", "mqa": "C2"}
LABELS = {"hawk": "Hawk", "griffin": "Griffin", "mqa": "MQA"}


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
  """(mean, standard deviation; 0 for one value)."""
  mean = statistics.fmean(values)
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return mean, spread


def fmt(mean: float, spread: float, n: int, digits: int = 3) -> str:
  """`mean ± spread`, or the mean alone for one seed."""
  text = f"{mean:.{digits}f}"
  return text + (f" ± {spread:.{digits}f}" if n > 1 else "")


def pyplot():
  """matplotlib's pyplot on the Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def label(ax, *, xlabel: str, ylabel: str, title: str,
          train_len: int | None = None) -> None:
  """Axis labels and legend; with `train_len`, a log2 length axis with the
  training length marked."""
  if train_len:
    ax.axvline(train_len, color="gray", linestyle="--", linewidth=1,
               label="training length")
    ax.set_xscale("log", base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def save(plt, fig, out: str) -> str:
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def finish(plt, fig, ax, out: str, **labels) -> str:
  """`label` for a one-panel figure, then the PNG at `out`."""
  label(ax, **labels)
  return save(plt, fig, out)
