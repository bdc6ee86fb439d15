"""The Real-Gated Linear Recurrent Unit (RG-LRU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Float32

import pallas_kernels
from recurrentgemma_jax.nn import params as params_lib
from recurrentgemma_jax.nn.linear import BlockDiagonalLinear

MIN_RADIUS = 0.9
MAX_RADIUS = 0.999


def lambda_init(key, shape, dtype=jnp.float32) -> jax.Array:
  """Lambda such that `a0^2 = sigmoid(-Lambda)^2` is uniform in [0.81, 0.998].

  With `a0 = exp(-softplus(Lambda))`, Lambda is the inverse softplus of
  `-log(a0)`.
  """
  unif = jax.random.uniform(key, shape)
  a0_squared = unif * (MAX_RADIUS**2 - MIN_RADIUS**2) + MIN_RADIUS**2
  log_a0 = 0.5 * jnp.log(a0_squared + 1e-8)
  return jnp.log(jnp.expm1(-log_a0)).astype(dtype)


class RGLRU(nnx.Module):
  """`h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)`, gated per feature.

  Parameters: `a_param [E]` (Lambda), `input_gate` and `a_gate`
  (block-diagonal over `num_heads`). The recurrence runs through
  `pallas_kernels.rg_lru`, fused where a kernel exists.
  """

  def __init__(
      self,
      width: int,
      num_heads: int,
      *,
      scan_impl: str = "auto",
      fused: bool = True,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.scan_impl = scan_impl
    self.fused = fused
    self.dtype = dtype
    self.a_param = params_lib.param(rngs, lambda_init, (width,), ("rnn",),
                                    param_dtype)
    self.input_gate = BlockDiagonalLinear(
        width, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.a_gate = BlockDiagonalLinear(
        width, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(
      self,
      x: Float[Array, "B T E"],
      doc_start: Bool[Array, "B T"],
      h0: Float32[Array, "B E"] | None = None,
  ) -> tuple[Float[Array, "B T E"], Float32[Array, "B E"]]:
    """`x [B, T, E]`, `doc_start [B, T]` (True at a document's first token),
    `h0 [B, E]` float32 (the state before the chunk; None: zeros) ->
    `(y [B, T, E], h_last [B, E] float32)`."""
    x = params_lib.cast(x, self.dtype)
    return pallas_kernels.rg_lru(
        x,
        self.input_gate(x),
        self.a_gate(x),
        self.a_param[...],
        doc_start,
        h0,
        impl=self.scan_impl,
        fused=self.fused,
    )
