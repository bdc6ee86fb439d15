"""The report of a scaling study (`code_scaling`): held-out loss against
training FLOPs and tokens, as the paper's Figure 2.

Each run's cost comes from its saved `config.json`: the model it built
(parameters, non-embedding parameters: the embedding is tied), the training
FLOPs per token (`training/flops.py`, docs/flops.md: three forward passes at
the training length) and the tokens per step (batch x sequence length). An
evaluation at step s has seen `s x tokens per step` tokens and cost that
many times the FLOPs per token.

Figures (`STUDY_flops.png`, `STUDY_tokens.png`): one colour per family, a
thin curve per run (every evaluation), and a thick line through each
size's final held-out loss (mean over seeds), one marker per size.
`report.py` adds `STUDY_positions_by_length.png`: the largest size's loss
by document position at each evaluation length.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
from typing import Any

from recurrentgemma_jax.paper import figures
from recurrentgemma_jax.paper import studies

MARKERS = ("o", "s", "^", "D", "v", "P")
KEY = "eval/loss"


def run_cost(workdir: str) -> dict[str, float]:
  """`{"params", "non_embedding_params", "flops_per_token",
  "tokens_per_step"}` of the run in `workdir` (its config.json).

  Cached by the config's text, not by the path: a workdir reused for
  another run in the same process (a notebook) gets its new cost. The
  imports are deferred: the report of the other studies needs no model or
  JAX."""
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  return dict(_config_cost(loop.read_workdir_config_text(workdir)))


@functools.lru_cache(maxsize=None)
def _config_cost(config_text: str) -> dict[str, float]:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  config = loop.parse_workdir_config(config_text)
  model = config_lib.build_model_config(config.model,
                                        loop.data_vocab_size(config))
  abstract = nnx.eval_shape(lambda: Griffin(model, rngs=nnx.Rngs(0)))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract,
                                                          nnx.Param)))
  return {
      "params": params,
      "non_embedding_params": params - model.vocab_size * model.width,
      "flops_per_token": flops_lib.train_flops_per_token(model,
                                                         config.seq_len),
      "tokens_per_step": config.batch_size * config.seq_len,
  }


def curve(run: dict[str, Any]) -> list[tuple[float, float, float]]:
  """`(tokens, FLOPs, held-out loss)` at each evaluation of `run`."""
  cost = run_cost(run["workdir"])
  losses = run["series"].get(KEY, {})
  return [(step * cost["tokens_per_step"],
           step * cost["tokens_per_step"] * cost["flops_per_token"],
           losses[step]) for step in sorted(losses)]


def final_points(runs, study: studies.Study) -> dict[str, list[dict]]:
  """Per family, one point per size (in `study.variants` order) with
  evaluations: the mean over seeds of the last evaluation's tokens, FLOPs
  and loss, and the seeds' losses."""
  out: dict[str, list[dict]] = {}
  for model in studies.MODELS:
    for variant in study.variants:
      group = [r for r in runs if r["model"] == model
               and r["variant"] == variant and curve(r)]
      if not group:
        continue
      last = [curve(r)[-1] for r in group]
      cost = run_cost(group[0]["workdir"])
      out.setdefault(model, []).append({
          "variant": variant,
          "seeds": [r["seed"] for r in group],
          "status": [r["record"].get("status") for r in group],
          "params": cost["params"],
          "non_embedding_params": cost["non_embedding_params"],
          "steps": [max(r["series"][KEY]) for r in group],
          "tokens": statistics.fmean(t for t, _, _ in last),
          "flops": statistics.fmean(f for _, f, _ in last),
          "losses": [loss for _, _, loss in last],
          "loss": statistics.fmean(loss for _, _, loss in last),
          "train_minutes": statistics.fmean(
              r["record"].get("train_seconds", 0) / 60 for r in group),
      })
  return out


def plot_loss_against(runs, study: studies.Study, out: str, axis: str
                      ) -> str:
  """Held-out loss against training "flops" or "tokens" (module
  docstring); log-log axes."""
  index = {"tokens": 0, "flops": 1}[axis]
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for run in runs:
    points = curve(run)
    ax.plot([p[index] for p in points], [p[2] for p in points],
            color=figures.COLORS[run["model"]], alpha=0.25, linewidth=0.8)
  for model, points in final_points(runs, study).items():
    color = figures.COLORS[model]
    ax.plot([p[axis] for p in points], [p["loss"] for p in points], "-",
            color=color, linewidth=2, label=figures.LABELS[model])
    for p in points:
      ax.plot(p[axis], p["loss"], MARKERS[study.variants.index(
          p["variant"]) % len(MARKERS)], color=color, markersize=7)
  present = {r["variant"] for r in runs}
  for i, variant in enumerate(study.variants):  # the size legend
    if variant in present:
      ax.plot([], [], MARKERS[i % len(MARKERS)], color="gray",
              label=f"size {variant}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  figures.finish(
      plt, fig, ax, out,
      xlabel={"flops": "training FLOPs (docs/flops.md)",
              "tokens": "training tokens"}[axis],
      ylabel="held-out loss (nats / token)",
      title=f"{study.title}: loss against training {axis}")
  return out


def compute_matched(points: dict[str, list[dict]], model: str = "griffin",
                    baseline: str = "mqa") -> list[dict[str, Any]]:
  """`model`'s final losses against `baseline`'s at the same training FLOPs
  (log-linear interpolation between the baseline's sizes; a point outside
  the baseline's FLOP range is left out)."""
  base = sorted(points.get(baseline, []), key=lambda p: p["flops"])
  out = []
  for p in points.get(model, []):
    x = math.log(p["flops"])
    for lo, hi in zip(base, base[1:]):
      a, b = math.log(lo["flops"]), math.log(hi["flops"])
      if a <= x <= b:
        t = (x - a) / (b - a) if b > a else 0.0
        loss = lo["loss"] + t * (hi["loss"] - lo["loss"])
        out.append({"variant": p["variant"], "flops": p["flops"],
                    "loss": p["loss"], "baseline_loss": loss,
                    "difference": p["loss"] - loss})
        break
  return out


def markdown(name: str, study: studies.Study, points) -> str:
  """The study's tables as Markdown."""
  lines = [f"### {study.title} (`{name}`)", "",
           "| model | size | non-embedding params | tokens | training FLOPs "
           "| seeds | steps | final held-out loss | train minutes / run |",
           "|---|---|---|---|---|---|---|---|---|"]
  for model, rows in points.items():
    for p in rows:
      mean, spread = figures.mean_spread(p["losses"])
      steps = "/".join(sorted({str(s) for s in p["steps"]}))
      unfinished = "" if set(p["status"]) == {"done"} else " (unfinished)"
      lines.append(
          f"| {figures.LABELS[model]} | {p['variant']} | "
          f"{p['non_embedding_params'] / 1e6:.2f}M | {p['tokens']:.3g} | "
          f"{p['flops']:.3g} | {len(p['losses'])} | {steps}{unfinished} | "
          f"{figures.fmt(mean, spread, len(p['losses']))} | "
          f"{p['train_minutes']:.1f} |")
  matched = compute_matched(points)
  if matched:
    lines += ["", "Griffin against MQA at equal training FLOPs (MQA's loss "
              "interpolated log-linearly between its sizes):", "",
              "| Griffin size | training FLOPs | Griffin loss | MQA loss | "
              "Griffin - MQA |", "|---|---|---|---|---|"]
    for m in matched:
      lines.append(f"| {m['variant']} | {m['flops']:.3g} | {m['loss']:.3f} "
                   f"| {m['baseline_loss']:.3f} | {m['difference']:+.3f} |")
  return "\n".join(lines)


def write(runs, name: str, study: studies.Study, figures_dir: str
          ) -> tuple[list[str], dict[str, Any], str]:
  """The loss-against-FLOPs and -tokens figures of a scaling study into
  `figures_dir`: `(their paths, the numbers for summary.json, the
  Markdown)`."""
  runs = [r for r in runs if curve(r)]
  made = [plot_loss_against(runs, study,
                            os.path.join(figures_dir, f"{name}_{axis}.png"),
                            axis)
          for axis in ("flops", "tokens")] if runs else []
  points = final_points(runs, study)
  numbers = {"points": points, "compute_matched": compute_matched(points)}
  return made, numbers, markdown(name, study, points)
