"""The recurrent temporal block of Griffin and Hawk."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn.conv import Conv1D
from recurrentgemma_jax.nn.conv import ConvState
from recurrentgemma_jax.nn.linear import Dense
from recurrentgemma_jax.nn.rg_lru import RGLRU


class RecurrentCache(NamedTuple):
  """Constant-size decoding state of a recurrent block.

  Attributes:
    rg_lru_state: `[B, E]` float32 hidden state.
    conv_state: the convolution's last inputs (`ConvState`).
  """

  rg_lru_state: jax.Array
  conv_state: ConvState


class RecurrentBlock(nnx.Module):
  """`linear_out(rg_lru(conv(linear_x(x))) * gelu_tanh(linear_y(x)))`."""

  def __init__(
      self,
      width: int,
      lru_width: int,
      num_heads: int,
      *,
      conv_width: int = 4,
      final_scale: float = 1.0,
      scan_impl: str = "auto",
      fused: bool = True,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_y = Dense(width, lru_width, axes=("embed", "rnn"), **kw)
    self.linear_x = Dense(width, lru_width, axes=("embed", "rnn"), **kw)
    self.linear_out = Dense(lru_width, width, axes=("rnn", "embed"),
                            scale=final_scale, **kw)
    self.conv_1d = Conv1D(lru_width, conv_width, **kw)
    self.rg_lru = RGLRU(lru_width, num_heads, scan_impl=scan_impl,
                        fused=fused, **kw)

  def init_cache(self, batch_size: int, dtype: jnp.dtype) -> RecurrentCache:
    width = self.rg_lru.a_param.shape[0]
    return RecurrentCache(
        rg_lru_state=jnp.zeros((batch_size, width), jnp.float32),
        conv_state=self.conv_1d.init_state(batch_size, dtype),
    )

  def __call__(
      self,
      x: jax.Array,
      segment_pos: jax.Array,
      cache: RecurrentCache | None = None,
      return_cache: bool = False,
  ) -> tuple[jax.Array, RecurrentCache | None]:
    """`x [B, T, D]`, `segment_pos [B, T]` -> `([B, T, D], cache or None)`."""
    doc_start = segment_pos == 0
    y = jax.nn.gelu(self.linear_y(x), approximate=True)
    h = self.linear_x(x)
    h, conv_state = self.conv_1d(
        h, doc_start, None if cache is None else cache.conv_state
    )
    h, h_last = self.rg_lru(
        h, doc_start, None if cache is None else cache.rg_lru_state
    )
    out = self.linear_out(h * y)
    if not return_cache:
      return out, None
    return out, RecurrentCache(rg_lru_state=h_last, conv_state=conv_state)
