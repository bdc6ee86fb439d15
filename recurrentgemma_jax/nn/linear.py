"""Dense and block-diagonal linear layers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import params as params_lib

# Rows a small product is padded to (`pad_small_rows`): XLA:GPU lowers a
# product of 1-15 rows as a reduction fusion, at 16 rows it calls a GEMM.
GEMM_ROWS = 16


def small_rows_dot(x: jax.Array, kernel: jax.Array, pad: bool,
                   dot: Callable[[jax.Array, jax.Array], jax.Array] = jnp.dot
                   ) -> jax.Array:
  """`dot(x [..., in], kernel [in, out]) -> [..., out]`; with `pad`, x of
  fewer than `GEMM_ROWS` rows is padded to `GEMM_ROWS` rows of zeros, and
  they are sliced off the result."""
  rows = math.prod(x.shape[:-1])
  if not pad or not 0 < rows < GEMM_ROWS:
    return dot(x, kernel)
  flat = jnp.pad(x.reshape(rows, x.shape[-1]), ((0, GEMM_ROWS - rows), (0, 0)))
  y = dot(flat, kernel)[:rows]
  return y.reshape(*x.shape[:-1], y.shape[-1])


def pad_small_rows(model: nnx.Module, enabled: bool = True) -> nnx.Module:
  """Sets, in place, whether every `Dense` (and int8 `QuantizedDense`) of
  `model` pads products of fewer than `GEMM_ROWS` rows (a decode step at
  small batch) to `GEMM_ROWS` rows; returns `model`.

  On an H200 a bfloat16 2560 x 2560 product of one row took 21.4 us as
  XLA's reduction fusion and 9.1 us padded to 16 rows, a GEMM
  (docs/benchmarks.md, "The matrix-vector products alone"), and a whole
  RecurrentGemma-2B decode step at batch 1 went from 3.40 to 2.41 ms
  ("Sampling"); `Sampler` pads on GPU by default. The setting is a static
  attribute, part of the model's graphdef, so jitted functions of the split
  model retrace when it changes; a model split before the change keeps the
  old setting.
  """
  for module in _padding_modules(model):
    module.pad_small_rows = enabled
  return model


@contextlib.contextmanager
def small_rows_padding(model: nnx.Module, enabled: bool
                       ) -> Iterator[nnx.Module]:
  """Within the block every product of `model` pads small row counts (or,
  with `enabled=False`, none does); afterwards each module has its own
  setting back. For splitting a padded graphdef off a shared model."""
  modules = _padding_modules(model)
  before = [m.pad_small_rows for m in modules]
  pad_small_rows(model, enabled)
  try:
    yield model
  finally:
    for module, setting in zip(modules, before):
      module.pad_small_rows = setting


def default_padding(model: nnx.Module) -> bool:
  """Whether a sampler pads small row counts unless told: where JAX's
  default backend is a GPU (measured faster there), or where `model`
  already pads."""
  return jax.default_backend() == "gpu" or pads_small_rows(model)


def pads_small_rows(model: nnx.Module) -> bool:
  """Whether any product of `model` pads small row counts."""
  return any(m.pad_small_rows for m in _padding_modules(model))


def _padding_modules(model: nnx.Module) -> list[nnx.Module]:
  return [m for _, m in nnx.iter_graph(model)
          if isinstance(m, nnx.Module) and hasattr(m, "pad_small_rows")]


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
    self.pad_small_rows = False  # `pad_small_rows(model)` sets it

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., in] -> [..., out]` in the compute dtype."""
    x = params_lib.cast(x, self.dtype)
    kernel = params_lib.cast(self.kernel, self.dtype)
    if self.lora is None:
      y = small_rows_dot(x, kernel, self.pad_small_rows)
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
