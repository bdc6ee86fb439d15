"""`griffin_from_params`: a `Griffin` holding a given parameter tree.

The step that official weights, Hugging Face weights and a training
workdir's checkpoint all end in: the parameters, once in our tree layout
(`nnx.to_pure_dict(nnx.state(model, nnx.Param))`), go into a model built
without initialising anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin


def griffin_from_params(config: GriffinConfig, params: Mapping[str, Any],
                        where: str = "params") -> Griffin:
  """`Griffin(config)` holding `params`, each leaf cast to the model's dtype.

  Args:
    config: the model's config.
    params: nested dicts in the model's layout (block indices as ints, or
      as their strings, as Orbax stores them), array leaves.
    where: what `params` is, for error messages.

  Raises:
    ConfigError: `params` lacks a parameter of the model, holds one it does
      not have, or one of another shape (the first such path is named).
  """
  model = nnx.eval_shape(lambda: Griffin(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  expected = nnx.to_pure_dict(state)
  values = jax.tree.map(lambda e, v: jnp.asarray(v, e.dtype), expected,
                        keyed_like(expected, params, where))
  nnx.replace_by_pure_dict(state, values)
  nnx.update(model, state)
  return model


def keyed_like(expected: Any, got: Any, where: str = "params") -> Any:
  """`got` keyed like `expected` (str keys matched to int ones), after
  checking that both hold the same leaves with the same shapes.

  Raises:
    ConfigError: naming the first path that is missing, unexpected or of
      another shape.
  """
  if isinstance(expected, Mapping):
    if not isinstance(got, Mapping):
      raise ConfigError(f"{where}: expected a dict, got {type(got).__name__}")
    by_name = {str(k): v for k, v in got.items()}
    missing = [k for k in expected if str(k) not in by_name]
    extra = set(by_name) - {str(k) for k in expected}
    if missing or extra:
      raise ConfigError(f"{where}: missing {sorted(map(str, missing))}, "
                        f"unexpected {sorted(extra)}")
    return {k: keyed_like(v, by_name[str(k)], f"{where}/{k}")
            for k, v in expected.items()}
  if tuple(np.shape(got)) != tuple(expected.shape):
    raise ConfigError(f"{where}: shape {np.shape(got)} does not match the "
                      f"model's {tuple(expected.shape)}")
  return got
