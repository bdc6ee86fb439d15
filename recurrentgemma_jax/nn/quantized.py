"""Int8 weight-only quantization: layers and per-channel scales.

A weight `w` is stored as `q = round(w / s)` in int8, with one float32
scale per output channel, `s = max |w| / 127` over the channel's inputs
(symmetric, so `|w - q * s| <= s / 2`). A layer computes

    y = (x @ q.astype(compute_dtype)) * s

with the product accumulated in float32: the scale multiplies the product,
after the dot, so no dequantized copy of the weight is built (the int8 to
compute-dtype conversion is an operand of the matmul).

- `QuantizedDense` replaces a `Dense` (attention q/k/v/output, the recurrent
  block's x/y/output projections, the MLP's down projection).
- `QuantizedEmbedder` replaces the tied `Embedder`: the per-row scales of
  the `[V, D]` table serve both of its uses, the gather that embeds tokens
  (row v is `q[v] * s[v]`) and the matmul that produces logits (row v of
  the table is output channel v of `x @ table.T`).
- `quantize_mlp` quantizes the `MLPBlock`'s stacked up projection in place
  (a `scale` entry beside `ffw_up.w`, which `MLPBlock` applies).

`recurrentgemma_jax.sampling.quantize` quantizes a whole model.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import params as params_lib
from recurrentgemma_jax.nn.embedding import Embedder
from recurrentgemma_jax.nn.linear import Dense
from recurrentgemma_jax.nn.linear import small_rows_dot

if TYPE_CHECKING:  # `mlp` imports this module (`scaled_einsum`)
  from recurrentgemma_jax.nn.mlp import MLPBlock  # pylint: disable=g-import-not-at-top

INT8_MAX = 127


@functools.partial(jax.jit, static_argnames=("axis",))
def quantize(w: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """Symmetric int8 quantization of `w` with one scale per output channel.

  Args:
    w: a weight (any float dtype).
    axis: the axis reduced for each scale (the weight's input axis).

  Returns:
    `(q, scale)`: int8 `q` of `w`'s shape and float32 `scale` of `w`'s
    shape with `axis` of size 1, such that `|w - q * scale| <= scale / 2`.
    An all-zero channel gets scale 1 (and q = 0).
  """
  w = w.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
  scale = jnp.where(amax > 0, amax / INT8_MAX, 1.0)
  q = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX)
  return q.astype(jnp.int8), scale


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
  """`q * scale` in float32 (`scale` broadcasts against `q`)."""
  return q.astype(jnp.float32) * scale


def scaled_einsum(spec: str, x: jax.Array, q: jax.Array,
                  scale: jax.Array | nnx.Variable) -> jax.Array:
  """`einsum(spec, x, q) * scale` in x's dtype.

  `q` holds the int8 values (in any dtype; they are cast to x's). The
  product is accumulated in float32 (int8-valued products can exceed the
  float16 range) and scaled before the cast back.
  """
  y = jnp.einsum(spec, x, q.astype(x.dtype),
                 preferred_element_type=jnp.float32)
  return (y * params_lib.cast(scale, jnp.float32)).astype(x.dtype)


def _scale_param(value: jax.Array, axes: tuple[str | None, ...] | None
                 ) -> nnx.Param:
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  return variable.get_metadata().get("out_sharding")


class QuantizedDense(nnx.Module):
  """A `Dense` with an int8 kernel: `y = (x @ kernel) * scale + bias`.

  `kernel [in, out]` int8 (the `Dense`'s logical axes), `scale [out]`
  float32, `bias [out]` as in the `Dense`, or None.
  """

  def __init__(self, dense: Dense):
    if dense.lora is not None:
      raise ValueError("a Dense with a LoRA adapter cannot be quantized: "
                       "merge the adapters first (merge_lora)")
    self.dtype = dense.dtype
    q, scale = quantize(dense.kernel[...], axis=0)
    self.kernel = dense.kernel.replace(q)
    axes = _axes(dense.kernel)
    self.scale = _scale_param(scale[0], axes and (axes[1],))
    self.bias = dense.bias
    self.pad_small_rows = dense.pad_small_rows

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., in] -> [..., out]` in the compute dtype."""
    x = params_lib.cast(x, self.dtype)
    y = small_rows_dot(
        x, self.kernel[...], self.pad_small_rows,
        lambda x, q: scaled_einsum("...i,io->...o", x, q, self.scale))
    if self.bias is not None:
      y = y + params_lib.cast(self.bias, self.dtype)
    return y


class QuantizedEmbedder(Embedder):
  """The tied `Embedder` with an int8 table `[V, D]` and per-row float32
  scales `[V]`: embeddings `q[v] * scale[v]`, logits
  `(x @ q.T) * scale`."""

  def __init__(self, embedder: Embedder):  # pylint: disable=super-init-not-called
    # Built from a model's embedder; `Embedder.__init__` would initialise
    # a new table.
    self.width = embedder.width
    self.scale_by_sqrt_dim = embedder.scale_by_sqrt_dim
    self.dtype = embedder.dtype
    q, scale = quantize(embedder.input_embedding[...], axis=1)
    self.input_embedding = embedder.input_embedding.replace(q)
    axes = _axes(embedder.input_embedding)
    self.scale = _scale_param(scale[:, 0], axes and (axes[0],))

  def encode(self, tokens: jax.Array) -> jax.Array:
    """`[B, T]` int tokens -> `[B, T, D]` embeddings."""
    x = super().encode(tokens)  # the int8 rows, sqrt(D)-scaled if set
    row_scale = jnp.take(self.scale[...], tokens, axis=0)
    return (x * row_scale[..., None].astype(jnp.float32)).astype(x.dtype)

  def decode(self, x: jax.Array) -> jax.Array:
    """`[B, T, D]` -> `[B, T, V]` logits."""
    x = params_lib.cast(x, self.dtype)
    return scaled_einsum("...d,vd->...v", x, self.input_embedding[...],
                         self.scale)


def quantize_mlp(mlp: MLPBlock) -> None:
  """Quantizes `mlp.ffw_up.w [2, D, F]` in place: int8 values and a
  `ffw_up.scale [2, 1, 1, F]` (the bias's shape and axes)."""
  if mlp.ffw_up_lora is not None:
    raise ValueError("an MLP with a LoRA adapter cannot be quantized: merge "
                     "the adapters first (merge_lora)")
  w = mlp.ffw_up["w"]
  q, scale = quantize(w[...], axis=1)  # [2, 1, F]
  mlp.ffw_up["w"] = w.replace(q)
  mlp.ffw_up["scale"] = _scale_param(scale[:, :, None, :],
                                     _axes(mlp.ffw_up["b"]))
