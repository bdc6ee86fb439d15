"""Dense and block-diagonal linear layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import params as params_lib


class Dense(nnx.Module):
  """`y = x @ kernel + bias` with kernel `[in, out]` (the official layout).

  Init: normal with std `sqrt(scale / in_features)` (fan-in), bias zeros.
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      axes: params_lib.Axes,
      use_bias: bool = True,
      scale: float = 1.0,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.dtype = dtype
    self.kernel = params_lib.param(
        rngs, params_lib.normal((scale / in_features) ** 0.5),
        (in_features, out_features), axes, param_dtype,
    )
    self.bias = (
        params_lib.param(rngs, params_lib.zeros(), (out_features,),
                         (axes[1],), param_dtype)
        if use_bias else None
    )
    # A low-rank adapter (`nn/lora.py`, attached by `add_lora`), or None.
    self.lora = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., in] -> [..., out]` in the compute dtype."""
    x = params_lib.cast(x, self.dtype)
    kernel = params_lib.cast(self.kernel, self.dtype)
    if self.lora is None:
      y = jnp.dot(x, kernel)
    else:  # x @ kernel plus the low-rank update
      y = self.lora.project(x, kernel, jnp.dot)
    if self.bias is not None:
      y = y + params_lib.cast(self.bias, self.dtype)
    return y


class BlockDiagonalLinear(nnx.Module):
  """Linear map that is block-diagonal over `num_blocks` heads.

  `w: [H, D/H, D/H]`, `b: [H, D/H]`. Because blocks never mix heads, sharding
  the head axis keeps the RG-LRU gates free of communication.
  Init: normal with std `1/sqrt(D/H)` (the fan-in of one block).
  """

  def __init__(
      self,
      width: int,
      num_blocks: int,
      *,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    block = width // num_blocks
    self.num_blocks = num_blocks
    self.dtype = dtype
    self.w = params_lib.param(
        rngs, params_lib.normal(block ** -0.5), (num_blocks, block, block),
        ("rnn_heads", None, None), param_dtype,
    )
    self.b = params_lib.param(
        rngs, params_lib.zeros(), (num_blocks, block), ("rnn_heads", None),
        param_dtype,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., D] -> [..., D]`."""
    x = params_lib.cast(x, self.dtype)
    x = x.reshape(*x.shape[:-1], self.num_blocks, -1)
    y = jnp.einsum("...hi,hij->...hj", x, params_lib.cast(self.w, self.dtype))
    y = y + params_lib.cast(self.b, self.dtype)
    return y.reshape(*y.shape[:-2], -1)
