"""Logical axis names, and pinning activations to them (MaxText style).

Parameters (`nn/params.py`) and activations name their dimensions with
logical axes; rules (`recurrentgemma_jax.sharding.DEFAULT_RULES`) map the
names onto mesh axes (`logical_to_mesh`). The layers pin the activations
they produce with `constrain(x, axes)`: inside `activation_sharding(mesh,
rules)` (entered by `sharding.model_sharding`, the context the train and
eval steps are traced in) that is a sharding constraint in the rules'
layout; elsewhere it does nothing. Without the pins XLA's propagation is
free to copy the parameters' `embed -> fsdp` sharding onto the residual
stream, which leaves the batch whole on every chip (docs/tpu.md, row 3).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recurrentgemma_jax.config import ConfigError

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Logical axes of the activations the model pins (`constrain`).
RESIDUAL_AXES = ("activation_batch", "activation_length", "activation_embed")
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")
# The MLP's input broadcast to its two up projections, [2, B, T, D], and
# their outputs, [2, B, T, F].
MLP_IN_AXES = (None, *RESIDUAL_AXES)
MLP_UP_AXES = (None, "activation_batch", "activation_length", "activation_mlp")


def logical_to_mesh(axes: Sequence[str | None], rules: Rules
                    ) -> PartitionSpec:
  """Logical axis names -> a `PartitionSpec` of mesh axes by `rules`.

  A mesh axis is used at most once per array: a later dimension that maps to
  an axis already taken stays replicated.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in axes:
    if name is not None and name not in table:
      raise ConfigError(f"sharding: no rule for logical axis {name!r}")
    target = table.get(name) if name is not None else None
    names = (target,) if isinstance(target, str) else tuple(target or ())
    names = tuple(n for n in names if n not in used)
    used.update(names)
    out.append(names[0] if len(names) == 1 else (names or None))
  return PartitionSpec(*out)


# (mesh, rules) of the innermost `activation_sharding`; None outside one.
_ACTIVATIONS: contextvars.ContextVar[tuple[Mesh, Rules] | None] = (
    contextvars.ContextVar("activation_sharding", default=None))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes `constrain` pin activations to `mesh` by `rules` while tracing."""
  token = _ACTIVATIONS.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)


def _fitting_spec(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh
                  ) -> PartitionSpec:
  """`spec` without the mesh axes a dimension cannot use: axes that are
  manual here (inside a `shard_map`) or do not divide it (e.g. T = 1 when
  decoding under a `sequence` axis)."""
  manual = set(jax.sharding.get_abstract_mesh().manual_axes)
  out = []
  for size, names in zip(shape, spec):
    names = (names,) if isinstance(names, str) else tuple(names or ())
    names = tuple(n for n in names if n not in manual)
    if size % math.prod(mesh.shape[n] for n in names):
      names = ()
    out.append(names[0] if len(names) == 1 else (names or None))
  return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`x` pinned to the layout of its logical `axes` under
  `activation_sharding` (or `sharding.model_sharding`); `x` itself (nothing
  traced) outside them or on a one-device mesh.

  Args:
    x: an activation, e.g. the residual stream `[B, T, D]` or the logits
      `[B, T, V]`.
    axes: one logical name (or None) per dimension of `x`, e.g.
      `RESIDUAL_AXES`.
  """
  active = _ACTIVATIONS.get()
  if active is None:
    return x
  mesh, rules = active
  if mesh.size == 1:
    return x
  spec = _fitting_spec(x.shape, logical_to_mesh(axes, rules), mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
