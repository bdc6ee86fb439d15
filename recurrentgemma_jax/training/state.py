"""The train state (step, parameters, optimizer state), built sharded.

The model is split once into a static `graphdef` and its parameters as a
pure dict; the jitted steps are pure functions of that dict and merge it back
into a `Griffin` inside the trace (`nnx.merge`), which costs nothing at run
time. Parameters are created directly in their shards: the initialiser is
jitted with `out_shardings` computed from the logical axes of an abstract
(`nnx.eval_shape`) model, so no host ever holds the full model.

    TrainState = {"step": int32 [], "params": pure dict,
                  "opt_state": optax state}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StateSpec:
  """Everything about the train state except its values.

  Attributes:
    graphdef: the model's static structure (for `nnx.merge`).
    abstract: `TrainState` of ShapeDtypeStructs carrying their shardings.
    shardings: `TrainState` of `NamedSharding`s.
    model_config: the model's config.
  """

  graphdef: nnx.GraphDef
  abstract: TrainState
  shardings: TrainState
  model_config: GriffinConfig

  @property
  def param_shardings(self) -> Any:
    return self.shardings["params"]


def state_spec(
    model_config: GriffinConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> StateSpec:
  """Shapes and shardings of the train state; checks the model fits `mesh`."""
  abstract_model = nnx.eval_shape(
      lambda: Griffin(model_config, rngs=nnx.Rngs(0))
  )
  graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
  axes = sharding.logical_axes(abstract_params)
  abstract_params = abstract_params.to_pure_dict()
  sharding.check_model_fits_mesh(model_config, abstract_params, axes, mesh,
                                 rules)
  param_shardings = sharding.param_shardings(axes, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = sharding.replicated(mesh)
  # Moments are sharded like their parameters (ZeRO); counters replicated.
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding),
  )
  shardings = {"step": replicated, "params": param_shardings,
               "opt_state": opt_shardings}
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "params": abstract_params, "opt_state": abstract_opt}
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings,
  )
  return StateSpec(graphdef, abstract, shardings, model_config)


def init_train_state(
    spec: StateSpec,
    tx: optax.GradientTransformation,
    seed: int,
    params: Any | None = None,
) -> TrainState:
  """A fresh train state, created shard by shard.

  Args:
    spec: from `state_spec`.
    tx: the optimizer.
    seed: parameter initialisation seed.
    params: optional pure-dict parameters to start from (e.g. released
      weights), placed onto the shardings; otherwise random init.
  """
  if params is None:
    def init():
      model = Griffin(spec.model_config, rngs=nnx.Rngs(seed))
      return nnx.state(model, nnx.Param).to_pure_dict()

    params = jax.jit(init, out_shardings=spec.param_shardings)()
  else:
    params = jax.tree.map(
        lambda p, a: jax.device_put(jnp.asarray(p, a.dtype), a.sharding),
        params, spec.abstract["params"],
    )
  opt_state = jax.jit(
      tx.init, out_shardings=spec.shardings["opt_state"]
  )(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), spec.shardings["step"])
  return {"step": step, "params": params, "opt_state": opt_state}


def num_params(spec: StateSpec) -> int:
  return sum(a.size for a in jax.tree.leaves(spec.abstract["params"]))
