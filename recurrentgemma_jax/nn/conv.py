"""Causal depthwise temporal convolution whose taps stop at document starts."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import params as params_lib


class ConvState(NamedTuple):
  """The last `W-1` inputs of the convolution, for decoding.

  Attributes:
    x: `[B, W-1, E]` previous inputs (oldest first).
    starts: `[B, W-1]` bool, True where that input began a document.
  """

  x: jax.Array
  starts: jax.Array


class Conv1D(nnx.Module):
  """`out_t = b + sum_s w[W-1-s] * x_{t-s}` over taps in the same document.

  `w: [W, E]`, `b: [E]`. Init: normal with std `sqrt(0.01 / W)` (0.05 for
  W = 4), bias zeros.
  """

  def __init__(
      self,
      width: int,
      temporal_width: int,
      *,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.temporal_width = temporal_width
    self.dtype = dtype
    self.w = params_lib.param(
        rngs, params_lib.normal((0.01 / temporal_width) ** 0.5),
        (temporal_width, width), ("conv", "rnn"), param_dtype,
    )
    self.b = params_lib.param(rngs, params_lib.zeros(), (width,), ("rnn",),
                              param_dtype)

  def init_state(self, batch_size: int, dtype: jnp.dtype) -> ConvState:
    width = self.w.shape[1]
    w = self.temporal_width - 1
    return ConvState(
        x=jnp.zeros((batch_size, w, width), dtype),
        starts=jnp.ones((batch_size, w), bool),
    )

  def __call__(
      self,
      x: jax.Array,
      doc_start: jax.Array,
      state: ConvState | None = None,
  ) -> tuple[jax.Array, ConvState]:
    """Convolves `x [B, T, E]`; `doc_start [B, T]` marks document starts.

    With `state`, the chunk continues the sequence the state was built from.
    Returns the output `[B, T, E]` and the state after the chunk.
    """
    x = params_lib.cast(x, self.dtype)
    b, t, _ = x.shape
    if state is None:
      state = self.init_state(b, x.dtype)
    width = self.temporal_width
    # Extended sequence: W-1 remembered inputs, then the chunk.
    x_ext = jnp.concatenate([state.x.astype(x.dtype), x], axis=1)
    starts_ext = jnp.concatenate([state.starts, doc_start], axis=1)
    w = params_lib.cast(self.w, self.dtype)
    out = jnp.broadcast_to(params_lib.cast(self.b, self.dtype), x.shape)
    # `visible` is True while no document start lies in (t - shift, t].
    visible = jnp.ones((b, t), bool)
    for shift in range(width):
      if shift:
        start_at = starts_ext[:, width - shift : width - shift + t]
        visible = visible & ~start_at
      tap = x_ext[:, width - 1 - shift : width - 1 - shift + t]
      out = out + jnp.where(visible[..., None], tap, 0) * w[width - 1 - shift]
    new_state = ConvState(
        x=x_ext[:, -(width - 1):], starts=starts_ext[:, -(width - 1):]
    )
    return out, new_state
