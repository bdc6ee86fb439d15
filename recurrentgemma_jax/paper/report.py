"""Figures and tables from the runs of the paper's studies
(`recurrentgemma reproduce run`: OUTDIR/STUDY/RUN).

For each study with finished runs:
- `STUDY_training.png`: the headline eval metric against training steps,
  one colour per model family, a thin line per seed and their mean;
- `STUDY_lengths.png` (studies evaluated at several lengths): the metric
  against evaluation length, mean over seeds with the seeds' range;
- `STUDY_positions.png` (studies with per-position losses): the loss at each
  position within a document at the longest evaluation length, all models;
  `STUDY_positions_by_length.png`: a panel per model with a curve for each
  evaluation length.
A scaling study (`code_scaling`, sizes as variants) has instead
`STUDY_flops.png` and `STUDY_tokens.png` (held-out loss against training
FLOPs and tokens, `scaling.py`) and the largest size's
`STUDY_positions_by_length.png`. The official-model control
(`official_control`) has `STUDY_training.png` and `STUDY_lengths.png` with
our Griffin and the official one.
`summary.md` holds the tables (Markdown) and `summary.json` the numbers.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Sequence
from typing import Any

from recurrentgemma_jax import files
from recurrentgemma_jax import plotting
from recurrentgemma_jax.paper import figures as figures_lib
from recurrentgemma_jax.paper import scaling
from recurrentgemma_jax.paper import studies

COLORS = figures_lib.COLORS
LABELS = figures_lib.LABELS
_mean_spread = figures_lib.mean_spread
_fmt = figures_lib.fmt
_pyplot = figures_lib.pyplot
_label = figures_lib.label
_save = figures_lib.save
_finish = figures_lib.finish


def _num_params(workdir: str) -> float | None:
  """Parameters (millions) from the run's log line `...: 0.27M parameters`."""
  try:
    with open(os.path.join(workdir, "log.txt"), encoding="utf-8") as f:
      match = re.search(r": ([0-9.]+)M parameters", f.read())
  except OSError:
    return None
  return float(match.group(1)) if match else None


def load_runs(outdir: str, study: str) -> list[dict[str, Any]]:
  """Every run of `study` in `outdir` that has metrics (finished or not:
  `record["status"]` says), in directory order."""
  root = os.path.join(outdir, study)
  runs = []
  if not os.path.isdir(root):
    return runs
  for name in sorted(os.listdir(root)):
    workdir = os.path.join(root, name)
    record = studies.read_json(os.path.join(workdir, "run.json"))
    if not record or not os.path.exists(
        os.path.join(workdir, "metrics.jsonl")):
      continue
    lengths_file = (studies.CONTROL_RESULT_FILE
                    if studies.STUDIES[study].tool == "control"
                    else studies.LENGTH_EVAL_FILE)
    runs.append({
        "workdir": workdir,
        "model": record["model"],
        "seed": record["seed"],
        "variant": record.get("variant", ""),
        "record": record,
        "series": plotting.read_metrics(workdir),
        "lengths": studies.read_json(os.path.join(workdir, lengths_file)),
        "params_m": _num_params(workdir),
    })
  return runs


def _by_model(runs):
  out: dict[str, list] = {}
  for run in runs:
    out.setdefault(run["model"], []).append(run)
  return {m: out[m] for m in studies.MODELS if m in out}


def plot_training(runs, study: studies.Study, out: str) -> str:
  """Eval metric against step: a thin line per seed, a thick mean."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  key = f"eval/{study.metric}"
  for model, group in _by_model(runs).items():
    curves = [run["series"].get(key, {}) for run in group]
    for curve in curves:
      steps = sorted(curve)
      ax.plot(steps, [curve[s] for s in steps], color=COLORS[model],
              alpha=0.35, linewidth=0.8)
    common = sorted(set.intersection(*(set(c) for c in curves)))
    ax.plot(common, [statistics.fmean(c[s] for c in curves) for s in common],
            color=COLORS[model], linewidth=2,
            label=f"{LABELS[model]} ({len(curves)} seed"
            f"{'s' if len(curves) > 1 else ''})")
  return _finish(plt, fig, ax, out, xlabel="training step",
                 ylabel=f"eval {study.metric}", title=study.title)


def _length_table(group) -> dict[int, list[float]]:
  """{eval length: [metric per seed]} over the runs that have length evals."""
  table: dict[int, list[float]] = {}
  for run in group:
    for row in (run["lengths"] or {}).get("lengths", []):
      table.setdefault(row["seq_len"], []).append(row)
  return table


def plot_lengths(runs, study: studies.Study, out: str) -> str:
  """Metric against evaluation length (log scale), mean and range of seeds."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  train_len = None
  for model, group in _by_model(runs).items():
    table = _length_table(group)
    if not table:
      continue
    train_len = group[0]["lengths"]["train_seq_len"]
    xs = sorted(table)
    values = [[r[study.metric] for r in table[x]] for x in xs]
    ax.plot(xs, [statistics.fmean(v) for v in values], "o-",
            color=COLORS[model], label=LABELS[model])
    ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values],
                    color=COLORS[model], alpha=0.15)
  return _finish(plt, fig, ax, out, xlabel="evaluation length (tokens)",
                 ylabel=f"eval {study.metric}",
                 title=f"{study.title}: length extrapolation",
                 train_len=train_len)


def smoothed_positions(row: dict[str, Any], bins: int = 48
                       ) -> tuple[list[float], list[float]]:
  """Per-position loss averaged (token-weighted) within log-spaced bins.

  Returns:
    (bin centre positions, mean loss per bin), empty bins left out.
  """
  losses = row["per_position_loss"]
  tokens = row["per_position_tokens"]
  n = len(losses)
  edges = sorted({0, *(int(round(math.exp(math.log(n) * i / bins)))
                       for i in range(1, bins + 1))})
  xs, ys = [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    weight = sum(tokens[lo:hi])
    if weight <= 0:
      continue
    total = sum(l * t for l, t in zip(losses[lo:hi], tokens[lo:hi])
                if l is not None)
    xs.append((lo + hi - 1) / 2 + 1)
    ys.append(total / weight)
  return xs, ys


def _pool_positions(rows: Sequence[dict[str, Any]]) -> dict[str, list]:
  """Seeds' per-position losses pooled token-weighted, position by position."""
  n = min(len(r["per_position_loss"]) for r in rows)
  loss, tokens = [0.0] * n, [0.0] * n
  for row in rows:
    for p in range(n):
      value, count = row["per_position_loss"][p], row["per_position_tokens"][p]
      if value is not None and count > 0:
        loss[p] += value * count
        tokens[p] += count
  return {"per_position_loss": [l / t if t else None
                                for l, t in zip(loss, tokens)],
          "per_position_tokens": tokens}


def plot_positions(runs, study: studies.Study, out: str) -> str:
  """Loss per document position at the longest evaluation length."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  train_len = None
  for model, group in _by_model(runs).items():
    rows = [max(run["lengths"]["lengths"], key=lambda r: r["seq_len"])
            for run in group if run["lengths"]]
    rows = [r for r in rows if "per_position_loss" in r]
    if not rows:
      continue
    train_len = group[0]["lengths"]["train_seq_len"]
    xs, ys = smoothed_positions(_pool_positions(rows))
    ax.plot(xs, ys, color=COLORS[model],
            label=f"{LABELS[model]} (eval length {rows[0]['seq_len']}, "
            f"{len(rows)} seed{'s' if len(rows) > 1 else ''})")
  return _finish(plt, fig, ax, out, xlabel="position in document (tokens)",
                 ylabel="mean loss (nats / token)",
                 title=f"{study.title}: loss by position",
                 train_len=train_len)


def plot_positions_by_length(runs, study: studies.Study, out: str,
                             title: str = "") -> str:
  """One panel per model: the loss at each document position for every
  evaluation length (1x, 2x, ...), seeds pooled; `title` (default the
  study's) heads the figure."""
  plt = _pyplot()
  groups = _by_model(runs)
  fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.8),
                           sharey=True, squeeze=False)
  for ax, (model, group) in zip(axes[0], groups.items()):
    by_length: dict[int, list] = {}
    for run in group:
      for row in (run["lengths"] or {}).get("lengths", []):
        if "per_position_loss" in row:
          by_length.setdefault(row["multiplier"], []).append(row)
    for i, (m, rows) in enumerate(sorted(by_length.items())):
      xs, ys = smoothed_positions(_pool_positions(rows))
      ax.plot(xs, ys, color=f"C{i}",
              label=f"eval at {m}x ({rows[0]['seq_len']})")
    train_len = group[0]["lengths"]["train_seq_len"] if by_length else None
    _label(ax, xlabel="position in document (tokens)",
           ylabel="mean loss (nats / token)", title=LABELS[model],
           train_len=train_len)
  fig.suptitle(f"{title or study.title}: loss by position at each "
               "evaluation length")
  return _save(plt, fig, out)


def summarize(runs, study: studies.Study) -> dict[str, Any]:
  """Final metrics per model: mean and spread over seeds, plus lengths."""
  out = {}
  for model, group in _by_model(runs).items():
    key = f"eval/{study.metric}"
    finals = [run["series"][key][max(run["series"][key])] for run in group
              if run["series"].get(key)]
    steps = [max(run["series"][key]) for run in group
             if run["series"].get(key)]
    entry: dict[str, Any] = {
        "seeds": [run["seed"] for run in group],
        "params_m": group[0]["params_m"],
        "steps": steps,
        "final": finals,
        "train_minutes": [run["record"].get("train_seconds", 0) / 60
                          for run in group],
        "status": [run["record"].get("status") for run in group],
        "command": group[0]["record"].get("train_command"),
        "eval_command": group[0]["record"].get("eval_command"),
        "device": group[0]["record"].get("device"),
    }
    table = _length_table(group)
    entry["lengths"] = {str(length): [r[study.metric] for r in rows]
                        for length, rows in sorted(table.items())}
    out[model] = entry
  return out


def markdown(name: str, study: studies.Study, summary) -> str:
  """The study's tables as Markdown."""
  lines = [f"### {study.title} (`{name}`)", "",
           f"| model | parameters | seeds | steps | final eval "
           f"{study.metric} | train minutes / run |",
           "|---|---|---|---|---|---|"]
  for model, s in summary.items():
    if not s["final"]:
      continue
    mean, spread = _mean_spread(s["final"])
    params = f"{s['params_m']:.2f}M" if s["params_m"] else "?"
    steps = "/".join(sorted({str(x) for x in s["steps"]}))
    minutes = statistics.fmean(s["train_minutes"])
    lines.append(f"| {LABELS[model]} | {params} | {len(s['final'])} | "
                 f"{steps} | {_fmt(mean, spread, len(s['final']))} | "
                 f"{minutes:.1f} |")
  lengths = sorted({int(k) for s in summary.values() for k in s["lengths"]})
  if len(lengths) > 1:
    lines += ["", f"Eval {study.metric} by evaluation length (mean over "
              "seeds):", "",
              "| model | " + " | ".join(map(str, lengths)) + " |",
              "|---|" + "---|" * len(lengths)]
    for model, s in summary.items():
      cells = []
      for length in lengths:
        values = s["lengths"].get(str(length))
        cells.append(f"{statistics.fmean(values):.3f}" if values else "-")
      lines.append(f"| {LABELS[model]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_report(outdir: str, figures: str) -> str:
  """Figures into `figures`, summary.md / summary.json into `outdir`.

  Returns:
    The Markdown summary.

  Raises:
    FileNotFoundError: `outdir` holds no run with metrics.
  """
  os.makedirs(figures, exist_ok=True)
  sections, numbers = [], {}
  for name, study in studies.STUDIES.items():
    runs = load_runs(outdir, name)
    if not runs:
      continue
    if study.variants:
      made, numbers[name], text = _scaling_section(runs, name, study, figures)
    elif study.tool == "control":
      made, numbers[name], text = _control_section(runs, name, study, figures)
    else:
      made, numbers[name], text = _study_section(runs, name, study, figures)
    sections.append(text + "\n\nFigures: "
                    + ", ".join(os.path.basename(p) for p in made))
  if not sections:
    raise FileNotFoundError(f"no finished runs under {outdir}")
  text = "\n\n".join(sections) + "\n"
  # Aside and renamed: an interrupted report keeps the last whole summary.
  files.write_text_atomic(os.path.join(outdir, "summary.md"), text)
  files.write_json_atomic(os.path.join(outdir, "summary.json"), numbers)
  return text


def _study_section(runs, name: str, study: studies.Study, figures: str):
  """A study's figures, numbers and Markdown: `(paths, numbers, text)`."""
  made = [plot_training(runs, study,
                        os.path.join(figures, f"{name}_training.png"))]
  if len(study.multipliers) > 1 and any(r["lengths"] for r in runs):
    made.append(plot_lengths(runs, study,
                             os.path.join(figures, f"{name}_lengths.png")))
  if study.per_position and any(r["lengths"] for r in runs):
    made.append(plot_positions(
        runs, study, os.path.join(figures, f"{name}_positions.png")))
    made.append(plot_positions_by_length(
        runs, study,
        os.path.join(figures, f"{name}_positions_by_length.png")))
  summary = summarize(runs, study)
  return made, summary, markdown(name, study, summary)


def _scaling_section(runs, name: str, study: studies.Study, figures: str):
  """A scaling study (`scaling.py`), plus the loss by position of its
  largest size with length evaluations: `(paths, numbers, text)`."""
  made, numbers, text = scaling.write(runs, name, study, figures)
  largest = next((v for v in reversed(study.variants)
                  if any(r["variant"] == v and r["lengths"] for r in runs)),
                 None)
  if largest is not None:
    made.append(plot_positions_by_length(
        [r for r in runs if r["variant"] == largest and r["lengths"]], study,
        os.path.join(figures, f"{name}_positions_by_length.png"),
        title=f"{study.title}, size {largest}"))
  return made, numbers, text


# The official-model control's two models (official_control.MODELS), their
# labels and their metrics.jsonl prefixes.
CONTROL_LABELS = {"ours": "Griffin (ours)", "official": "Griffin (official)"}
CONTROL_PREFIX = {"ours": "", "official": "official_"}
CONTROL_COLORS = {"ours": COLORS["griffin"], "official": "C4"}


def _control_rows(runs) -> dict[str, dict[int, list[float]]]:
  """{"ours"/"official": {eval length: [accuracy per seed]}} over the
  control runs with a result."""
  out: dict[str, dict[int, list[float]]] = {m: {} for m in CONTROL_LABELS}
  for run in runs:
    for row in (run["lengths"] or {}).get("lengths", []):
      for model, table in out.items():
        table.setdefault(row["seq_len"], []).append(row[model]["accuracy"])
  return out


def _control_section(runs, name: str, study: studies.Study, figures: str):
  """The official-model control: eval accuracy against step and against
  evaluation length for both models, and the table by length:
  `(paths, numbers, text)`."""
  plt = _pyplot()
  made = []
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for model in CONTROL_LABELS:
    for j, run in enumerate(runs):
      curve = run["series"].get(f"{CONTROL_PREFIX[model]}eval/accuracy", {})
      steps = sorted(curve)
      ax.plot(steps, [curve[s] for s in steps], color=CONTROL_COLORS[model],
              linestyle="-" if model == "ours" else "--",
              label=CONTROL_LABELS[model] if j == 0 else None)
  made.append(_finish(plt, fig, ax,
                      os.path.join(figures, f"{name}_training.png"),
                      xlabel="training step", ylabel="eval accuracy",
                      title=study.title))
  rows = _control_rows(runs)
  train_len = next((r["lengths"]["train_seq_len"] for r in runs
                    if r["lengths"]), None)
  if train_len:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model in CONTROL_LABELS:
      xs = sorted(rows[model])
      values = [rows[model][x] for x in xs]
      ax.plot(xs, [statistics.fmean(v) for v in values], "o-",
              color=CONTROL_COLORS[model], label=CONTROL_LABELS[model])
      ax.fill_between(xs, [min(v) for v in values],
                      [max(v) for v in values], color=CONTROL_COLORS[model],
                      alpha=0.15)
    made.append(_finish(plt, fig, ax,
                        os.path.join(figures, f"{name}_lengths.png"),
                        xlabel="evaluation length (tokens)",
                        ylabel="eval accuracy",
                        title=f"{study.title}: length extrapolation",
                        train_len=train_len))
  steps = [max(r["series"]["eval/accuracy"]) for r in runs
           if r["series"].get("eval/accuracy")]
  numbers = {
      "seeds": [r["seed"] for r in runs],
      "status": [r["record"].get("status") for r in runs],
      "steps": steps,
      "train_minutes": [r["record"].get("train_seconds", 0) / 60
                        for r in runs],
      "command": runs[0]["record"].get("train_command"),
      "eval_command": runs[0]["record"].get("eval_command"),
      "lengths": {m: {str(k): v for k, v in sorted(table.items())}
                  for m, table in rows.items()},
  }
  lines = [f"### {study.title} (`{name}`)", "",
           f"{len(runs)} seed(s), steps "
           f"{'/'.join(sorted({str(s) for s in steps})) or '-'}; eval "
           "accuracy by evaluation length (mean over seeds):", ""]
  lengths = sorted(rows["ours"])
  if lengths:
    lines += ["| model | " + " | ".join(map(str, lengths)) + " |",
              "|---|" + "---|" * len(lengths)]
    for model, label in CONTROL_LABELS.items():
      lines.append(f"| {label} | " + " | ".join(
          f"{statistics.fmean(rows[model][x]):.3f}" for x in lengths) + " |")
  else:
    lines.append("(no length evaluation yet)")
  return made, numbers, "\n".join(lines)
