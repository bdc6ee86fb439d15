"""The jitted train and eval steps: pure functions of (state, batch).

A batch is a dict of `[B, T]` arrays (`data.batch.BATCH_DTYPES`):
  inputs (int32), targets (int32), segment_pos (int32, 0 at each document
  start), mask (float32 loss weights; 0 on padding and untrained tokens).

With a `trainable` mask (LoRA) only the marked parameters are
differentiated and updated; the others pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from recurrentgemma_jax.nn import lora as lora_lib
from recurrentgemma_jax.training import frozen as frozen_lib
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
    trainable: Any | None = None,
    dropout_seed: int | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The (unjitted) train step: one optimizer update per call.

  With `grad_accum_steps > 1` the batch is split into micro-batches whose
  gradients are summed in a `lax.scan`; the loss is averaged over the real
  tokens of the whole batch, so the update equals the one-shot update.

  Args:
    graphdef: the model's structure.
    tx: the optimizer (its state covers the trained parameters only).
    schedule: the learning rate, for the metrics.
    grad_accum_steps: micro-batches per update.
    z_loss: weight of the z-loss.
    batch_sharding: the batch's sharding (keeps micro-batches spread).
    trainable: pure-dict tree of bools over the parameters, True for the
      trained ones (LoRA adapters); None trains all.
    dropout_seed: LoRA dropout masks come from this seed, the step and the
      micro-batch (a resumed run draws the same ones); None: no dropout.

  Returns:
    `train_step(state, batch) -> (new_state, metrics)` where metrics holds
    per-token means (loss, z_loss, accuracy), tokens, grad_norm and the
    learning rate used.
  """
  stats_fn = _stats_fn(graphdef)

  def objective(trained, frozen, batch, key):
    params = frozen_lib.combine(frozen, trained) if frozen else trained
    with lora_lib.dropout_rng(key):
      stats = stats_fn(params, batch)
    return stats["loss"] + z_loss * stats["z_loss"], stats

  grad_fn = jax.grad(objective, has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    params = state["params"]
    if trainable is None:
      trained, frozen = params, {}
    else:
      trained = frozen_lib.select(params, trainable)
      frozen = frozen_lib.select(params, trainable, keep=False)
    key = None
    if dropout_seed is not None:
      key = jax.random.fold_in(jax.random.key(dropout_seed), state["step"])
    if grad_accum_steps == 1:
      grads, stats = grad_fn(trained, frozen, batch, key)
    else:
      micro = _micro_batches(batch, grad_accum_steps, batch_sharding)

      def accumulate(carry, xs):
        mb, j = xs
        mb_key = None if key is None else jax.random.fold_in(key, j)
        grads, stats = grad_fn(trained, frozen, mb, mb_key)
        return jax.tree.map(jnp.add, carry, (grads, stats)), None

      zeros = jax.tree.map(jnp.zeros_like, trained), {
          k: jnp.zeros((), jnp.float32) for k in loss_lib.STATS}
      (grads, stats), _ = jax.lax.scan(
          accumulate, zeros, (micro, jnp.arange(grad_accum_steps)))
    # Objective is a sum over tokens: divide once by the batch's real tokens.
    n = jnp.maximum(stats["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / n.astype(g.dtype), grads)
    updates, opt_state = tx.update(grads, state["opt_state"], trained)
    trained = optax.apply_updates(trained, updates)
    new_state = {
        "step": state["step"] + 1,
        "params": frozen_lib.combine(frozen, trained) if frozen else trained,
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
