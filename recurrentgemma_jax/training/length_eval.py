"""Evaluate a trained checkpoint at several times its training length.

The paper's extrapolation claims (De et al. 2024, Sections 5 and 6) compare
models trained at length T and evaluated at 2T, 4T, ...: the recurrent
models keep working past T, global attention with RoPE does not. This
module rebuilds the run's task at each length, scores the checkpoint, and
optionally averages the loss per position within a document (the x-axis of
the paper's per-token loss plots).

    result = length_eval.evaluate_lengths(config, workdir, (1, 2, 4, 8),
                                          per_position=True)

The result is also written atomically to a file in WORKDIR named by its
settings, `length_eval_step<N>_x<1-2-4-8>_n<examples>[_positions].json`
(`default_result_file`), so that evaluations with other settings never
replace one another; `result_file=` names the file instead (`reproduce run`
writes `length_eval.json`, which its report reads). A named file that holds
a result for other multipliers, examples or per_position is not replaced
(ConfigError, before anything is built); one for the same settings is (a
newer checkpoint, say):
  {"step": int, "train_seq_len": T,
   "settings": {"multipliers": [...], "examples": n, "per_position": bool},
   "lengths": [
     {"multiplier": m, "seq_len": m*T, "batch_size": b, "examples": n,
      "tokens": scored tokens, "loss": nats/token, "accuracy": float,
      "per_position_loss": [mean loss at document position p, ...]?,
      "per_position_tokens": [scored tokens at position p, ...]?}, ...]}
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from recurrentgemma_jax import files
from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import loop
from recurrentgemma_jax.training import metrics as metrics_lib



def default_result_file(step: int, multipliers: Sequence[int], examples: int,
                        per_position: bool) -> str:
  """The file name of a result with these settings (module docstring)."""
  name = (f"length_eval_step{step}_x{'-'.join(map(str, multipliers))}"
          f"_n{examples}")
  return name + ("_positions" if per_position else "") + ".json"


def _check_result_file(workdir: str, result_file: str,
                       settings: dict[str, Any]) -> None:
  """Refuses to replace a result of other settings (module docstring)."""
  if not result_file or os.path.basename(result_file) != result_file:
    raise ConfigError(f"result file {result_file!r}: give a file name (it is "
                      "written in the workdir)")
  path = epath.Path(workdir) / result_file
  try:
    old = json.loads(path.read_text())
  except (OSError, ValueError):  # none yet (or unreadable: rewritten)
    return
  recorded = old.get("settings") if isinstance(old, dict) else None
  if recorded is not None and recorded != settings:
    raise ConfigError(
        f"{path} holds a length evaluation with other settings ({recorded}, "
        f"not {settings}); choose another file (evaluate "
        "--length_eval_file=NAME, or leave it out for a file named by the "
        "settings) or delete it")


def _token_losses(graphdef: nnx.GraphDef):
  """`f(params, batch) -> (loss, correct, mask, segment_pos)`, each the
  global `[B, T]` (loss and correct are 0 where the mask is)."""

  def fn(params, batch):
    model = nnx.merge(graphdef, params)
    logits = model(batch["inputs"], batch["segment_pos"]).astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, batch["targets"][..., None],
                                 axis=-1)[..., 0]
    weights = batch["mask"]
    correct = jnp.argmax(logits, axis=-1) == batch["targets"]
    return (weights * (log_z - target), weights * correct, weights,
            batch["segment_pos"])

  return fn


def length_batch_size(batch_size: int, multiplier: int,
                      data_parallel: int) -> int:
  """Rows per batch at `multiplier` x `seq_len`: about the training batch's
  tokens, at least one row per data-parallel device, and a multiple of it."""
  rows = max(1, batch_size // multiplier)
  return max(data_parallel, rows // data_parallel * data_parallel)


def _config_at(config: ml_collections.ConfigDict, seq_len: int,
               batch_size: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.seq_len = seq_len
  c.batch_size = batch_size
  return c


def evaluate_lengths(
    config: Any,
    workdir: str,
    multipliers: Sequence[int] = (1, 2, 4, 8),
    *,
    step: int | None = None,
    examples: int = 256,
    per_position: bool = False,
    result_file: str | None = None,
) -> dict[str, Any]:
  """Scores a checkpoint of `workdir` at `multipliers` x the training length.

  Args:
    config: the run's config (e.g. `loop.load_workdir_config(workdir)`).
    workdir: the training run's directory.
    multipliers: evaluation lengths as multiples of `config.seq_len`.
    step: checkpoint step; default the newest complete one.
    examples: sequences scored per length (fewer when the eval split is
      smaller, as for a held-out text split at long lengths).
    per_position: also average the loss per position within a document.
    result_file: the file in `workdir` to write; default
      `default_result_file(...)`, named by the settings.

  Returns:
    The dict written to the result file (module docstring).

  Raises:
    ConfigError: bad multipliers, no complete checkpoint, or a named result
      file holding other settings, before any compilation.
  """
  multipliers = list(multipliers)
  bad = [m for m in multipliers
         if not (isinstance(m, numbers.Integral) and not isinstance(m, bool)
                 and m >= 1)]
  if not multipliers or bad:
    raise ConfigError(
        f"length multipliers must be integers >= 1, got {multipliers}")
  multipliers = [int(m) for m in multipliers]
  if examples < 1:
    raise ConfigError(f"examples={examples} must be >= 1")
  settings = {"multipliers": multipliers, "examples": int(examples),
              "per_position": bool(per_position)}
  if result_file is not None:
    _check_result_file(workdir, result_file, settings)
  exp = loop.setup(config, workdir, read_only=True)
  try:
    step = loop.readable_checkpoint(exp, step)
    params = exp.checkpointer.restore(step, exp.spec.abstract)["params"]
  finally:
    exp.checkpointer.close()
  dp = sharding.data_parallel_size(exp.mesh)
  fn = jax.jit(
      loop._with_model_sharding(_token_losses(exp.spec.graphdef), exp.mesh),  # pylint: disable=protected-access
      in_shardings=(exp.spec.param_shardings, exp.batch_sharding),
      out_shardings=sharding.replicated(exp.mesh),
  )
  rows = []
  for m in multipliers:
    seq_len = m * exp.config.seq_len
    batch = length_batch_size(exp.config.batch_size, m, dp)
    start = time.perf_counter()
    row = _score(fn, params, exp,
                 _config_at(exp.config, seq_len, batch), examples,
                 per_position)
    row.update(multiplier=m, seq_len=seq_len, batch_size=batch)
    metrics_lib.log(
        f"length {seq_len} ({m}x): loss {row['loss']:.4f}, accuracy "
        f"{row['accuracy']:.4f} over {row['examples']} sequences "
        f"({time.perf_counter() - start:.1f}s)", enabled=exp.is_main)
    rows.append(row)
  result = {"step": int(step), "train_seq_len": exp.config.seq_len,
            "settings": settings, "lengths": rows}
  if exp.is_main:
    name = result_file or default_result_file(step, multipliers, examples,
                                              per_position)
    path = os.path.join(exp.workdir, name)
    files.write_json_atomic(path, result)
    metrics_lib.log(f"wrote {path}")
  return result


def _score(fn, params, exp: loop.Experiment, config: ml_collections.ConfigDict,
           examples: int, per_position: bool) -> dict[str, Any]:
  """Loss / accuracy sums over up to `examples` eval sequences of `config`."""
  task = pipeline.make_task(config, jax.process_index(), jax.process_count())
  loss_sum = correct_sum = tokens = 0.0
  seen = 0
  pos_loss = np.zeros(config.seq_len, np.float64)
  pos_tokens = np.zeros(config.seq_len, np.float64)
  for local in task.eval():
    if seen >= examples:
      break
    batch = {k: jax.make_array_from_process_local_data(exp.batch_sharding, v)
             for k, v in local.items()}
    loss, correct, mask, pos = jax.device_get(fn(params, batch))
    loss_sum += float(loss.sum())
    correct_sum += float(correct.sum())
    tokens += float(mask.sum())
    seen += loss.shape[0]
    if per_position:
      pos_loss += np.bincount(pos.ravel(), loss.ravel(), config.seq_len)
      pos_tokens += np.bincount(pos.ravel(), mask.ravel(), config.seq_len)
  if tokens == 0:
    raise ConfigError(
        f"evaluation at length {config.seq_len}: the eval split holds less "
        f"than one batch of {config.batch_size} x {config.seq_len} tokens")
  row: dict[str, Any] = {
      "examples": seen,
      "tokens": tokens,
      "loss": loss_sum / tokens,
      "accuracy": correct_sum / tokens,
  }
  if per_position:
    with np.errstate(invalid="ignore", divide="ignore"):
      mean = pos_loss / pos_tokens
    row["per_position_loss"] = [None if not math.isfinite(x) else float(x)
                                for x in mean]
    row["per_position_tokens"] = pos_tokens.tolist()
  return row
