"""The jitted train and eval steps: pure functions of (state, batch).

A batch is a dict of `[B, T]` arrays:
  inputs (int32), targets (int32), segment_pos (int32, 0 at each document
  start), mask (float32 loss weights; 0 on padding and untrained tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from recurrentgemma_jax.training import loss as loss_lib
from recurrentgemma_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _stats_fn(graphdef: nnx.GraphDef) -> Callable[[Any, Batch], dict]:
  def stats(params, batch: Batch) -> dict[str, jax.Array]:
    model = nnx.merge(graphdef, params)
    logits = model(batch["inputs"], batch["segment_pos"])
    return loss_lib.token_stats(logits, batch["targets"], batch["mask"])

  return stats


def _micro_batches(batch: Batch, steps: int,
                   sharding: NamedSharding | None) -> Batch:
  """`[B, T]` -> `[steps, B / steps, T]`, micro-batch j = rows j, j+steps, ...

  Interleaving keeps every micro-batch spread over all data-parallel
  devices (each device holds contiguous rows of the global batch).
  """

  def split(x):
    x = x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1)
    if sharding is not None:
      spec = PartitionSpec(None, *sharding.spec)
      x = jax.lax.with_sharding_constraint(
          x, NamedSharding(sharding.mesh, spec))
    return x

  return jax.tree.map(split, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    grad_accum_steps: int = 1,
    z_loss: float = 0.0,
    batch_sharding: NamedSharding | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The (unjitted) train step: one optimizer update per call.

  With `grad_accum_steps > 1` the batch is split into micro-batches whose
  gradients are summed in a `lax.scan`; the loss is averaged over the real
  tokens of the whole batch, so the update equals the one-shot update.

  Returns:
    `train_step(state, batch) -> (new_state, metrics)` where metrics holds
    per-token means (loss, z_loss, accuracy), tokens, grad_norm and the
    learning rate used.
  """
  stats_fn = _stats_fn(graphdef)

  def objective(params, batch):
    stats = stats_fn(params, batch)
    return stats["loss"] + z_loss * stats["z_loss"], stats

  grad_fn = jax.grad(objective, has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    params = state["params"]
    if grad_accum_steps == 1:
      grads, stats = grad_fn(params, batch)
    else:
      micro = _micro_batches(batch, grad_accum_steps, batch_sharding)

      def accumulate(carry, mb):
        grads, stats = grad_fn(params, mb)
        return jax.tree.map(jnp.add, carry, (grads, stats)), None

      zeros = jax.tree.map(jnp.zeros_like, params), {
          k: jnp.zeros((), jnp.float32) for k in loss_lib.STATS}
      (grads, stats), _ = jax.lax.scan(accumulate, zeros, micro)
    # Objective is a sum over tokens: divide once by the batch's real tokens.
    n = jnp.maximum(stats["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / n.astype(g.dtype), grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
        "step": state["step"] + 1,
        "params": optax.apply_updates(params, updates),
        "opt_state": opt_state,
    }
    metrics = loss_lib.summarize(stats)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(schedule(state["step"]),
                                           jnp.float32)
    return new_state, metrics

  return train_step


def make_eval_step(
    graphdef: nnx.GraphDef,
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """`eval_step(params, batch) -> summed token statistics` (see loss.py)."""
  return _stats_fn(graphdef)
