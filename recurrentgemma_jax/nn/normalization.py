"""RMSNorm with a zero-initialised `(1 + scale)` gain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import params as params_lib


class RMSNorm(nnx.Module):
  """`x * rsqrt(mean(x^2) + eps) * (1 + scale)` over the last axis."""

  def __init__(
      self,
      width: int,
      *,
      eps: float = 1e-6,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.eps = eps
    self.dtype = dtype
    self.scale = params_lib.param(rngs, params_lib.zeros(), (width,),
                                  ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., D] -> [..., D]` in the compute dtype."""
    x = params_lib.cast(x, self.dtype)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    normed = x * jax.lax.rsqrt(var + self.eps)
    return normed * (1 + params_lib.cast(self.scale, self.dtype))
