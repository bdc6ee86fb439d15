"""Parameter creation with logical sharding axes.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds logical
axis names (see `recurrentgemma_jax.sharding`); eager sharding is off so that
models build without a mesh and are sharded later by the rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def normal(std: float) -> jax.nn.initializers.Initializer:
  """Untruncated normal with standard deviation `std`."""
  return jax.nn.initializers.normal(stddev=std)


def zeros() -> jax.nn.initializers.Initializer:
  return jax.nn.initializers.zeros


def param(
    rngs: nnx.Rngs,
    init: jax.nn.initializers.Initializer,
    shape: Sequence[int],
    axes: Axes,
    dtype: jnp.dtype,
) -> nnx.Param:
  """An `nnx.Param` of `shape`, initialised by `init`, with logical `axes`."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
  value = init(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def cast(value: jax.Array | nnx.Param, dtype: jnp.dtype) -> jax.Array:
  """The parameter's value in the compute dtype."""
  if isinstance(value, nnx.Variable):
    value = value[...]
  return jnp.asarray(value, dtype)
