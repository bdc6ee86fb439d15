"""Tied input/output token embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import params as params_lib


class Embedder(nnx.Module):
  """Embedding table `[V, D]` used to embed tokens and to produce logits."""

  def __init__(
      self,
      vocab_size: int,
      width: int,
      *,
      scale_by_sqrt_dim: bool,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.width = width
    self.scale_by_sqrt_dim = scale_by_sqrt_dim
    self.dtype = dtype
    self.input_embedding = params_lib.param(
        rngs, params_lib.normal(width ** -0.5), (vocab_size, width),
        ("vocab", "embed"), param_dtype,
    )

  def encode(self, tokens: jax.Array) -> jax.Array:
    """`[B, T]` int tokens -> `[B, T, D]` embeddings.

    Ids are not checked here (this runs under jit): an id >= V embeds as
    NaN and a negative id wraps around (`Griffin.__call__` checks concrete
    ids).
    """
    x = params_lib.cast(jnp.take(self.input_embedding[...], tokens, axis=0),
                        self.dtype)
    if self.scale_by_sqrt_dim:
      # The released checkpoints were trained with sqrt(D) rounded to bf16
      # (sqrt(2560) = 50.596 is applied as 50.5).
      x = x * jnp.sqrt(float(self.width)).astype(jnp.bfloat16).astype(x.dtype)
    return x

  def decode(self, x: jax.Array) -> jax.Array:
    """`[B, T, D]` -> `[B, T, V]` logits."""
    x = params_lib.cast(x, self.dtype)
    return jnp.dot(x, params_lib.cast(self.input_embedding, self.dtype).T)
