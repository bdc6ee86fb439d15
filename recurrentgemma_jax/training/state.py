"""The train state (step, parameters, optimizer state), built sharded.

The model is split once into a static `graphdef` and its parameters as a
pure dict; the jitted steps are pure functions of that dict and merge it back
into a `Griffin` inside the trace (`nnx.merge`), which costs nothing at run
time. Parameters are created directly in their shards: the initialiser is
jitted with `out_shardings` computed from the logical axes of an abstract
(`nnx.eval_shape`) model, so no host ever holds the full model.

    TrainState = {"step": int32 [], "params": pure dict,
                  "opt_state": optax state}

With LoRA (`lora=` in `state_spec`), "params" holds the whole model: the
frozen base (optionally stored in bfloat16) and the adapters; `trainable`
marks the adapters, and the optimizer state covers only them (the base has
none at all).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.nn import lora as lora_lib
from recurrentgemma_jax.training import frozen as frozen_lib

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StateSpec:
  """Everything about the train state except its values.

  Attributes:
    graphdef: the model's static structure (for `nnx.merge`).
    abstract: `TrainState` of ShapeDtypeStructs carrying their shardings.
    shardings: `TrainState` of `NamedSharding`s.
    model_config: the model's config.
    lora: the adapters (None: every parameter is trained).
    trainable: pure-dict tree of bools over "params", True for the trained
      ones (None: all).
  """

  graphdef: nnx.GraphDef
  abstract: TrainState
  shardings: TrainState
  model_config: GriffinConfig
  lora: lora_lib.LoRAConfig | None = None
  trainable: Any | None = None

  @property
  def param_shardings(self) -> Any:
    return self.shardings["params"]

  def trained(self, tree: Any) -> Any:
    """The trained part of a tree shaped like "params"."""
    if self.trainable is None:
      return tree
    return frozen_lib.select(tree, self.trainable)

  def frozen(self, tree: Any) -> Any:
    """The frozen part ({} without LoRA)."""
    if self.trainable is None:
      return {}
    return frozen_lib.select(tree, self.trainable, keep=False)


# Adapters draw from their own stream: the base of a LoRA model equals the
# plain model of the same seed.
_LORA_STREAM = 0x10A


def build_model(model_config: GriffinConfig,
                lora: lora_lib.LoRAConfig | None, seed: int) -> Griffin:
  """The model of the train state, adapters attached when `lora` is set."""
  model = Griffin(model_config, rngs=nnx.Rngs(seed))
  if lora is not None:
    key = jax.random.fold_in(jax.random.key(seed), _LORA_STREAM)
    lora_lib.add_lora(model, lora, rngs=nnx.Rngs(params=key))
  return model


def state_spec(
    model_config: GriffinConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    *,
    lora: lora_lib.LoRAConfig | None = None,
    base_dtype: str | None = None,
) -> StateSpec:
  """Shapes and shardings of the train state; checks the model fits `mesh`.

  Args:
    model_config: the model.
    tx: the optimizer.
    mesh: the device mesh.
    rules: logical-to-mesh rules.
    lora: train only these adapters (None: every parameter).
    base_dtype: with `lora`, the frozen parameters' dtype (None: the
      model's parameter dtype).

  Raises:
    ConfigError: the model does not fit `mesh`, or `lora.targets` names no
      projection.
  """
  abstract_model = nnx.eval_shape(
      lambda: build_model(model_config, lora, 0))
  graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
  axes = sharding.logical_axes(abstract_params)
  trainable = None
  if lora is not None:
    trainable = jax.tree.map(
        lambda v: isinstance(v, nnx.LoRAParam), abstract_params,
        is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()
  abstract_params = abstract_params.to_pure_dict()
  if trainable is not None and base_dtype:
    abstract_params = jax.tree.map(
        lambda a, t: a if t else jax.ShapeDtypeStruct(a.shape,
                                                    jnp.dtype(base_dtype)),
        abstract_params, trainable)
  sharding.check_model_fits_mesh(model_config, abstract_params, axes, mesh,
                                 rules)
  param_shardings = sharding.param_shardings(axes, mesh, rules)
  spec = StateSpec(graphdef, {}, {}, model_config, lora, trainable)
  abstract_opt = jax.eval_shape(tx.init, spec.trained(abstract_params))
  replicated = sharding.replicated(mesh)
  # Moments are sharded like their parameters (ZeRO); counters replicated.
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, spec.trained(param_shardings),
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
  return dataclasses.replace(spec, abstract=abstract, shardings=shardings)


_THREEFRY_KERNEL = "jax_threefry_gpu_kernel_lowering"


@contextlib.contextmanager
def fast_random_lowering(devices: Any) -> Iterator[None]:
  """On one GPU, lowers threefry to JAX's CUDA kernel while tracing inside.

  XLA:GPU otherwise gets the 20 threefry rounds unrolled for every random
  parameter, and the initialiser of a 12-block model took 76 s to compile on
  an H200 against 8 s on a CPU (docs/benchmarks.md). The kernel gives the
  same bits. It stays off on several devices: a custom call does not
  partition, so every device would draw every array whole.

  The switch is JAX's thread-local context for the option, so other
  threads tracing at the same time keep their own setting; where this JAX
  has no such context, the global option is set and restored instead.
  """
  devices = list(devices)
  if not (len(devices) == 1 and devices[0].platform == "gpu"):
    yield
    return
  local = _thread_local_threefry_kernel()
  if local is not None:
    with local(True):
      yield
    return
  previous = getattr(jax.config, _THREEFRY_KERNEL)
  jax.config.update(_THREEFRY_KERNEL, True)
  try:
    yield
  finally:
    jax.config.update(_THREEFRY_KERNEL, previous)


def _thread_local_threefry_kernel():
  """JAX's context manager for the threefry-kernel option (thread-local),
  or None where this JAX version does not have one."""
  try:
    from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  state = getattr(jax_config, _THREEFRY_KERNEL.removeprefix("jax_"), None)
  return state if callable(state) else None


def _random_params(spec: StateSpec, seed: int, part: Any) -> Any:
  """`part(params)` of the seed's initialisation, made shard by shard (only
  that part is computed)."""
  abstract = spec.abstract["params"]
  shardings = part(spec.param_shardings)

  def init():
    model = build_model(spec.model_config, spec.lora, seed)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    return jax.tree.map(lambda p, a: p.astype(a.dtype), part(params),
                        part(abstract))

  leaves = jax.tree.leaves(shardings)
  devices = leaves[0].mesh.devices.flat if leaves else []
  with fast_random_lowering(devices):
    return jax.jit(init, out_shardings=shardings)()


def _placed(params: Any, abstract: Any) -> Any:
  return jax.tree.map(
      lambda p, a: jax.device_put(jnp.asarray(p, a.dtype), a.sharding),
      params, abstract)


def init_base(spec: StateSpec, seed: int, params: Any | None = None) -> Any:
  """A LoRA spec's frozen parameters on their shardings: `params` (pure
  dict of the plain model, e.g. released weights) or the seed's."""
  if params is None:
    return _random_params(spec, seed, spec.frozen)
  return _placed(params, spec.frozen(spec.abstract["params"]))


def init_train_state(
    spec: StateSpec,
    tx: optax.GradientTransformation,
    seed: int,
    params: Any | None = None,
    base: Any | None = None,
) -> TrainState:
  """A fresh train state, created shard by shard.

  Args:
    spec: from `state_spec`.
    tx: the optimizer.
    seed: parameter initialisation seed.
    params: optional pure-dict parameters to start from (e.g. released
      weights), placed onto the shardings; otherwise random init. With
      LoRA these are the plain model's (the base); the adapters are new.
    base: with LoRA, the frozen parameters already on their shardings
      (`init_base`); `params` is then not read.
  """
  if spec.trainable is None:
    if params is None:
      params = _random_params(spec, seed, lambda tree: tree)
    else:
      params = _placed(params, spec.abstract["params"])
  else:
    if base is None:
      base = init_base(spec, seed, params)
    params = frozen_lib.combine(base, _random_params(spec, seed,
                                                     spec.trained))
  opt_state = jax.jit(
      tx.init, out_shardings=spec.shardings["opt_state"]
  )(spec.trained(params))
  step = jax.device_put(jnp.zeros((), jnp.int32), spec.shardings["step"])
  return {"step": step, "params": params, "opt_state": opt_state}


def num_params(spec: StateSpec) -> int:
  return sum(a.size for a in jax.tree.leaves(spec.abstract["params"]))


def num_trained(spec: StateSpec) -> int:
  """Parameters the optimizer updates (all of them without LoRA)."""
  return sum(a.size for a in
             jax.tree.leaves(spec.trained(spec.abstract["params"])))
