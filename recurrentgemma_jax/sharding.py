"""Device mesh and the logical-axis rules that shard parameters and batches.

Every parameter carries logical axis names (`nn/params.py`); `DEFAULT_RULES`
maps them onto the four mesh axes (`nn.logical.logical_to_mesh`):

- `data`: pure data parallelism (parameters replicated).
- `fsdp`: data parallelism with parameters and optimizer state sharded
  (ZeRO-3 style) along their `embed` dimension.
- `tensor`: Megatron-style tensor parallelism: MLP, RNN and attention widths
  and the vocabulary are split. The RG-LRU gates are block-diagonal over
  `rnn_heads`, so the recurrence itself needs no communication.
- `sequence`: the time axis of activations.

The batch is split over `data x fsdp` (rows) and `sequence` (time).

Activations carry logical names too (`activation_*`, `nn/logical.py`): the
model calls `logical.constrain(x, axes)` on its residual stream and logits.
Under `model_sharding(mesh)` (the context the train and eval steps are
traced in) that pins them to the rules' layout; elsewhere it does nothing.

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 2, "sequence": 1})
    shardings = param_shardings(logical_axes(abstract_state), mesh)
    with model_sharding(mesh):
      step = jax.jit(train_step, ...).lower(...)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import pallas_kernels
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.nn import logical
from recurrentgemma_jax.nn.logical import Rules

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("length", "sequence"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("rnn", "tensor"),
    ("rnn_heads", "tensor"),
    ("q_heads", "tensor"),
    ("kv", None),
    ("norm", None),
    ("conv", None),
    # The inner dimension of LoRA adapters (`nn/lora.py`): A [in, rank] and
    # B [rank, out] follow their weight's input and output axes.
    ("lora_rank", None),
    # Activations: rows over the data-parallel axes, time over `sequence`;
    # the residual stream's width is whole on every device (the parameters'
    # `embed -> fsdp` split is gathered, not copied onto activations).
    ("activation_batch", BATCH_AXES),
    ("activation_length", "sequence"),
    ("activation_embed", None),
    ("activation_vocab", "tensor"),
    ("activation_mlp", "tensor"),
)


def mesh_shape(
    axis_sizes: Mapping[str, int], num_devices: int
) -> tuple[int, ...]:
  """Sizes of `MESH_AXES` with the one `-1` resolved to the remaining devices.

  Raises:
    ConfigError: unknown axes, several `-1`, or sizes whose product is not
      `num_devices`.
  """
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"mesh: unknown axes {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh: axis sizes must be >= 1 or -1, got {sizes}")
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ConfigError(
        f"mesh: only one axis may be -1, got {dict(zip(MESH_AXES, sizes))}"
    )
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"mesh: fixed axes {dict(zip(MESH_AXES, sizes))} multiply to "
          f"{fixed}, which does not divide the {num_devices} devices"
      )
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"mesh: axes {dict(zip(MESH_AXES, sizes))} multiply to {fixed} but "
        f"there are {num_devices} devices"
    )
  return tuple(sizes)


def make_mesh(
    axis_sizes: Mapping[str, int], devices: Sequence[Any] | None = None
) -> Mesh:
  """A mesh over `MESH_AXES` with Auto axis types (Flax-style sharding)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(axis_sizes, len(devices))
  return jax.make_mesh(
      shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4,
      devices=devices,
  )


def logical_axes(state: nnx.State) -> dict[str, Any]:
  """Pure-dict tree of each parameter's logical axes (a tuple per leaf)."""
  axes = jax.tree.map(
      lambda v: tuple(v.get_metadata().get("out_sharding") or
                      (None,) * len(v.shape)),
      state,
      is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  return axes.to_pure_dict() if isinstance(axes, nnx.State) else axes


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str)
                                      for a in x)


def param_shardings(
    axes_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> Any:
  """`NamedSharding`s for a tree of logical-axes tuples."""
  return jax.tree.map(
      lambda axes: NamedSharding(mesh, logical.logical_to_mesh(axes, rules)),
      axes_tree, is_leaf=_is_axes,
  )


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of `[batch, time]` input arrays."""
  return NamedSharding(mesh,
                       logical.logical_to_mesh(("batch", "length"), rules))


def _scan_sharding(mesh: Mesh, rules: Rules):
  """The RG-LRU scans run per shard (`jax.shard_map`) in `rules`' layout."""
  table = dict(rules)
  return pallas_kernels.scan_sharding(
      mesh,
      batch_axes=table.get("batch"),
      feature_axes=table.get("rnn"),
      sequence_axis=table.get("length"),
  )


@contextlib.contextmanager
def model_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES
                   ) -> Iterator[None]:
  """The context the model is traced in on `mesh`: RG-LRU scans per shard
  and activation constraints (`logical.constrain`), both by `rules`. It
  must surround the tracing of the step (not only its call)."""
  with _scan_sharding(mesh, rules), logical.activation_sharding(mesh, rules):
    yield


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways the batch rows are split."""
  spec = logical.logical_to_mesh(("batch",), rules)[0]
  names = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(mesh.shape[n] for n in names)


def check_model_fits_mesh(
    config: GriffinConfig,
    shapes: Any,
    axes_tree: Any,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> None:
  """Raises `ConfigError` if a sharded dimension does not split evenly.

  Args:
    config: the model config (head counts are checked by name).
    shapes: tree of arrays / ShapeDtypeStructs matching `axes_tree`.
    axes_tree: tree of logical-axes tuples (`logical_axes`).
    mesh: the device mesh.
    rules: logical-to-mesh rules.
  """
  tensor = mesh.shape["tensor"]
  heads = [("num_heads", config.num_heads)] if config.has_attention else []
  if config.has_recurrence:
    heads.append(("lru_num_heads", config.lru_num_heads))
  for field, value in heads:
    if value % tensor:
      raise ConfigError(
          f"model.{field}={value} is not divisible by the tensor axis "
          f"({tensor})"
      )
  flat_axes = jax.tree_util.tree_flatten_with_path(axes_tree,
                                                   is_leaf=_is_axes)[0]
  flat_shapes = jax.tree.leaves(shapes)
  for (path, axes), leaf in zip(flat_axes, flat_shapes):
    spec = logical.logical_to_mesh(axes, rules)
    for dim, (size, names) in enumerate(zip(np.shape(leaf), spec)):
      names = (names,) if isinstance(names, str) else tuple(names or ())
      ways = math.prod(mesh.shape[n] for n in names)
      if size % ways:
        raise ConfigError(
            f"parameter {jax.tree_util.keystr(path)} dimension {dim} "
            f"({axes[dim]}={size}) is not divisible by mesh axes {names} "
            f"({ways} devices)"
        )
