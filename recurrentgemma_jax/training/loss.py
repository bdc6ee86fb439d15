"""Masked next-token cross-entropy with optional z-loss, as sums over tokens.

Everything is returned as sums so that micro-batches, devices and eval
batches add up exactly; the caller divides by the number of real tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Keys of the statistics dict, all float32 scalars.
STATS = ("loss", "z_loss", "correct", "tokens")


@jax.custom_vjp
def log_z_and_target_logit(
    logits: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """`(log Z, logit of the target)`, both `[B, T]` float32, from `[B, T, V]`
  logits in any float dtype (computed in float32).

  The backward is written out: `d logits = softmax * d log Z + onehot *
  d target_logit`, one elementwise pass that recomputes the softmax from
  the saved log Z and returns the gradient in the logits' dtype. Left to
  autodiff, the float32 cast of the logits is kept for the backward and the
  gather's transpose scatters into a float32 `[B, T, V]` of zeros: two
  more passes over the largest array of a step.
  """
  return _log_z_parts(logits, targets)


def _log_z_parts(logits, targets):
  logits32 = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits32, axis=-1)
  target_logit = jnp.take_along_axis(
      logits32, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return log_z, target_logit


def _log_z_fwd(logits, targets):
  log_z, target_logit = _log_z_parts(logits, targets)
  return (log_z, target_logit), (logits, targets, log_z)


def _log_z_bwd(residuals, cotangents):
  logits, targets, log_z = residuals
  d_log_z, d_target = cotangents
  probs = jnp.exp(logits.astype(jnp.float32) - log_z[..., None])
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  onehot = vocab == targets[..., None].astype(jnp.int32)
  d_logits = (probs * d_log_z[..., None]
              + jnp.where(onehot, d_target[..., None], 0.0))
  # Integer targets get a float0 cotangent (no gradient).
  d_targets = np.zeros(targets.shape, jax.dtypes.float0)
  return d_logits.astype(logits.dtype), d_targets


log_z_and_target_logit.defvjp(_log_z_fwd, _log_z_bwd)


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
  weights = mask.astype(jnp.float32)
  log_z, target_logit = log_z_and_target_logit(logits, targets)
  # No gradient flows through argmax; on the logits' own dtype it picks the
  # same index as on their float32 cast (the cast is exact).
  correct = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1) == targets
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
