"""GeGLU feed-forward block."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.nn import logical
from recurrentgemma_jax.nn import params as params_lib
from recurrentgemma_jax.nn import quantized
from recurrentgemma_jax.nn.linear import Dense


class MLPBlock(nnx.Module):
  """`down(gelu_tanh(x @ w[0] + b[0]) * (x @ w[1] + b[1]))`.

  `ffw_up.w: [2, D, F]`, `ffw_up.b: [2, 1, 1, F]` (the official layout; the
  two up projections are one einsum), `ffw_down: [F, D]`.
  """

  def __init__(
      self,
      width: int,
      expanded_width: int,
      *,
      final_scale: float = 1.0,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.dtype = dtype
    self.ffw_up = nnx.Dict(
        w=params_lib.param(rngs, params_lib.normal(width**-0.5),
                           (2, width, expanded_width),
                           (None, "embed", "mlp"), param_dtype),
        b=params_lib.param(rngs, params_lib.zeros(),
                           (2, 1, 1, expanded_width),
                           (None, None, None, "mlp"), param_dtype),
    )
    self.ffw_down = Dense(
        expanded_width, width, axes=("mlp", "embed"), scale=final_scale,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs,
    )
    # A low-rank adapter of `ffw_up.w` (`nn/lora.py`), or None.
    self.ffw_up_lora = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, T, D] -> [B, T, D]`."""
    x = params_lib.cast(x, self.dtype)
    w = params_lib.cast(self.ffw_up["w"], self.dtype)
    b = params_lib.cast(self.ffw_up["b"], self.dtype)
    # The weight's leading axis is a batch axis of the einsum: written as
    # "btd,cdf->cbtf" (or as two matmuls), XLA transposes the [2, D, F]
    # weight on every call, which cost 22% of a RecurrentGemma-2B decode
    # step on an H200 (docs/benchmarks.md, "Sampling").
    xb = jnp.broadcast_to(x, (w.shape[0], *x.shape))
    # Pinned batch-sharded under `sharding.model_sharding` (no-ops
    # elsewhere): otherwise XLA:TPU computes w's fsdp-split gradient from
    # `xb` and `up` gathered over the whole global batch (RecurrentGemma-9B
    # on v5p-128: 6 GiB per block, docs/tpu.md).
    xb = logical.constrain(xb, logical.MLP_IN_AXES)
    if "scale" in self.ffw_up:  # int8 `w` (`nn/quantized.py`)
      if self.ffw_up_lora is not None:
        raise ValueError("LoRA adapters on int8 weights are not supported")
      up = quantized.scaled_einsum("cbtd,cdf->cbtf", xb, w,
                                   self.ffw_up["scale"]) + b
    elif self.ffw_up_lora is None:
      up = jnp.einsum("cbtd,cdf->cbtf", xb, w) + b
    else:  # the same einsum plus the low-rank update
      up = self.ffw_up_lora.project(
          xb, w, functools.partial(jnp.einsum, "cbtd,cdf->cbtf")) + b
    up = logical.constrain(up, logical.MLP_UP_AXES)
    gate, value = up[0], up[1]
    return self.ffw_down(jax.nn.gelu(gate, approximate=True) * value)
