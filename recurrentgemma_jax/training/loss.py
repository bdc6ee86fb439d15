"""Masked next-token cross-entropy with optional z-loss, as sums over tokens.

Everything is returned as sums so that micro-batches, devices and eval
batches add up exactly; the caller divides by the number of real tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Keys of the statistics dict, all float32 scalars.
STATS = ("loss", "z_loss", "correct", "tokens")


def token_stats(
    logits: jax.Array, targets: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
  """Sums of per-token statistics over the tokens where `mask` is nonzero.

  Args:
    logits: `[B, T, V]` in any float dtype (computed in float32).
    targets: `[B, T]` int token ids.
    mask: `[B, T]` loss weights (0 on padding, prompts and other tokens that
      are not trained on).

  Returns:
    `{"loss": sum(w * -log p(target)), "z_loss": sum(w * log(Z)^2),
      "correct": sum(w * [argmax == target]), "tokens": sum(w)}`.
  """
  logits = logits.astype(jnp.float32)
  weights = mask.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(
      logits, targets[..., None].astype(jnp.int32), axis=-1
  )[..., 0]
  correct = jnp.argmax(logits, axis=-1) == targets
  return {
      "loss": jnp.sum(weights * (log_z - target_logit)),
      "z_loss": jnp.sum(weights * jnp.square(log_z)),
      "correct": jnp.sum(weights * correct),
      "tokens": jnp.sum(weights),
  }


def summarize(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-token means from summed statistics: loss, z_loss, accuracy."""
  n = jnp.maximum(stats["tokens"], 1.0)
  return {
      "loss": stats["loss"] / n,
      "z_loss": stats["z_loss"] / n,
      "accuracy": stats["correct"] / n,
      "tokens": stats["tokens"],
  }
