"""Running the scan kernels on sharded arrays, through `jax.shard_map`.

Pallas kernels are opaque custom calls that XLA cannot partition, so under a
sharded `jit` each device must run the kernel on its own shard. Inside

    with pallas_kernels.scan_sharding(mesh, batch_axes=("data", "fsdp"),
                                      feature_axes="tensor",
                                      sequence_axis="sequence"):
      ...  # trace the model

every `linear_scan` and `rg_lru` call wraps itself in a `shard_map` over the
mesh, with `[B, T, D]` operands split as `P(batch_axes, sequence_axis,
feature_axes)`. The context is read at trace time, so it must surround the
tracing (the first call of a jitted function, or `.lower`), not the call of
an already compiled one.

Batch and feature shards are independent scans and need no communication.
Sequence shards need the state of the shards before them (multi-shard
correction): each shard scans its slice from zero, the shards all-gather
`(h_last, prod_t a_t)`, and each one folds the gathered pairs of the earlier
shards into its incoming state `h_in`. The scan is linear in its initial
state, `y_t(h_in) = y_t(0) + (prod_{s<=t} a_s) h_in`, and we apply that
correction by scanning the slice again from `h_in`, which costs the same as a
pass computing `prod_{s<=t} a_s` and needs no extra arrays (so a sequence
split runs the local scan twice, forward and backward, plus all-gathers of two
`[B, D]` arrays). Gradients come
from differentiating this through `shard_map` and the kernels' custom VJPs:
the transpose of the all-gather carries the correction backwards (the
backward scan's incoming state flows from later shards to earlier ones).

Axis names missing from the mesh are ignored, so one context serves meshes
with and without e.g. a sequence axis; an operand dimension that the axes'
total size does not divide is replicated along them instead of split. Axes
that are already manual (the caller is inside its own `shard_map`) are left
alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

AxisNames = str | Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class ScanSharding:
  """Mesh axes for the `[B, T, D]` dimensions of scan operands."""

  mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None
  batch_axes: tuple[str, ...]
  feature_axes: tuple[str, ...]
  sequence_axes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
  """The resolved partitioning of one call (None: not split)."""

  mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None
  batch: tuple[str, ...] | None
  sequence: tuple[str, ...] | None
  feature: tuple[str, ...] | None

  @property
  def btd(self) -> P:
    return P(self.batch, self.sequence, self.feature)

  @property
  def bd(self) -> P:
    return P(self.batch, self.feature)

  @property
  def bt(self) -> P:
    return P(self.batch, self.sequence)

  @property
  def d(self) -> P:
    return P(self.feature)


_CURRENT: contextvars.ContextVar[ScanSharding | None] = contextvars.ContextVar(
    "pallas_kernels_scan_sharding", default=None
)


def _as_tuple(axes: AxisNames) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


@contextlib.contextmanager
def scan_sharding(
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    batch_axes: AxisNames = ("data", "fsdp"),
    feature_axes: AxisNames = "tensor",
    sequence_axis: AxisNames = "sequence",
) -> Iterator[ScanSharding]:
  """Makes `linear_scan` and `rg_lru` run per shard on `mesh`.

  Args:
    mesh: the device mesh; None uses the mesh set by `jax.set_mesh` at the
      time of each call.
    batch_axes: mesh axes splitting B.
    feature_axes: mesh axes splitting D.
    sequence_axis: the mesh axis splitting T (sequence parallelism); several
      axes split it in their row-major order, as in a PartitionSpec.

  Yields:
    The active `ScanSharding`.
  """
  spec = ScanSharding(
      mesh,
      _as_tuple(batch_axes),
      _as_tuple(feature_axes),
      _as_tuple(sequence_axis),
  )
  token = _CURRENT.set(spec)
  try:
    yield spec
  finally:
    _CURRENT.reset(token)


def active_layout(b: int, t: int, d: int) -> Layout | None:
  """How a `[b, t, d]` call is split under the current context (None: not)."""
  spec = _CURRENT.get()
  if spec is None:
    return None
  mesh = spec.mesh
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      raise ValueError("scan_sharding(mesh=None) needs jax.set_mesh(mesh)")
  manual = set(jax.sharding.get_abstract_mesh().manual_axes)
  sizes = dict(mesh.shape)

  def usable(axes: Sequence[str], dim: int) -> tuple[str, ...] | None:
    axes = tuple(n for n in axes if n in sizes and n not in manual)
    total = 1
    for n in axes:
      total *= sizes[n]
    return axes if total > 1 and dim % total == 0 else None

  layout = Layout(
      spec.mesh,
      usable(spec.batch_axes, b),
      usable(spec.sequence_axes, t),
      usable(spec.feature_axes, d),
  )
  if (layout.batch, layout.sequence, layout.feature) == (None, None, None):
    return None
  return layout


def _shard_map(fn: Callable, layout: Layout, in_specs, out_specs) -> Callable:
  # check_vma=False: Pallas calls carry no varying-axes types. Outputs left
  # unsplit along an axis (h_last along the sequence axis) are computed
  # identically on every shard, which is what shard_map's transpose assumes.
  return jax.shard_map(
      fn,
      mesh=layout.mesh,
      in_specs=in_specs,
      out_specs=out_specs,
      check_vma=False,
  )


def _sequence_parallel(
    run: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    gate_product: jax.Array,
    h0: jax.Array,
    axis: tuple[str, ...],
    reverse: bool,
) -> tuple[jax.Array, jax.Array]:
  """The multi-shard correction, inside `shard_map` over `axis`.

  Args:
    run: `h_in [B, D] -> (y [B, T_shard, D], h_last [B, D])`, the local scan.
    gate_product: `[B, D]` float32 product of this shard's gates.
    h0: `[B, D]` float32 initial state of the whole sequence.
    axis: the sequence mesh axes.
    reverse: the scan runs from the last shard to the first.

  Returns:
    `(y, h_last)`: this shard's outputs and the final state of the whole
    sequence (the same on every shard).
  """
  _, h_local = run(jnp.zeros_like(h0))
  h_all = jax.lax.all_gather(h_local, axis)  # [S, B, D]
  a_all = jax.lax.all_gather(gate_product, axis)
  num_shards = h_all.shape[0]
  incoming = [None] * num_shards
  h = h0
  for s in reversed(range(num_shards)) if reverse else range(num_shards):
    incoming[s] = h
    h = a_all[s] * h + h_all[s]
  h_in = jnp.stack(incoming)[jax.lax.axis_index(axis)]
  y, _ = run(h_in)
  return y, h


def linear_scan(
    local_scan: Callable[..., tuple[jax.Array, jax.Array]],
    x: jax.Array,
    a: jax.Array,
    h0: jax.Array,
    *,
    reverse: bool,
    layout: Layout,
) -> tuple[jax.Array, jax.Array]:
  """`local_scan(x, a, h0) -> (y, h_last)` applied per shard of `layout`.

  Shapes as in `pallas_kernels.linear_scan`; `h0` is float32 `[B, D]`.
  """

  def body(x, a, h0):
    if layout.sequence is None:
      return local_scan(x, a, h0)
    # jnp.prod's VJP is exact with zero gates (no division by a_t).
    gate_product = jnp.prod(a.astype(jnp.float32), axis=1)
    return _sequence_parallel(
        lambda h: local_scan(x, a, h),
        gate_product,
        h0,
        layout.sequence,
        reverse,
    )

  return _shard_map(
      body,
      layout,
      in_specs=(layout.btd, layout.btd, layout.bd),
      out_specs=(layout.btd, layout.bd),
  )(x, a, h0)


def rg_lru(
    local_rg_lru: Callable[..., tuple[jax.Array, jax.Array]],
    gate_product: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    gate_x: jax.Array,
    gate_a: jax.Array,
    a_param: jax.Array,
    reset: jax.Array,
    h0: jax.Array,
    *,
    layout: Layout,
) -> tuple[jax.Array, jax.Array]:
  """`local_rg_lru(x, gate_x, gate_a, a_param, reset, h0)` per shard.

  `gate_product(gate_a, a_param, reset)` gives the `[B, D]` product of a
  shard's gates `a_t` (for the sequence-parallel correction). Shapes as in
  `pallas_kernels.rg_lru`; `h0` is float32 `[B, D]`.
  """

  def body(x, gate_x, gate_a, a_param, reset, h0):
    if layout.sequence is None:
      return local_rg_lru(x, gate_x, gate_a, a_param, reset, h0)
    return _sequence_parallel(
        lambda h: local_rg_lru(x, gate_x, gate_a, a_param, reset, h),
        gate_product(gate_a, a_param, reset),
        h0,
        layout.sequence,
        False,
    )

  return _shard_map(
      body,
      layout,
      in_specs=(
          layout.btd,
          layout.btd,
          layout.btd,
          layout.d,
          layout.bt,
          layout.bd,
      ),
      out_specs=(layout.btd, layout.bd),
  )(x, gate_x, gate_a, a_param, reset, h0)
