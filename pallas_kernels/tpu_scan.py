"""Pallas Mosaic TPU kernel for the diagonal linear scan, with its custom VJP.

    h_t = a_t * h_{t-1} + x_t,   h_{-1} = h0,   y_t = h_t

Layout: `x, a, y` are `[B, T, D]` in HBM. The grid is `(B, D / block_d,
T / block_t)` with semantics ("parallel", "parallel", "arbitrary"): batch rows
and feature blocks are independent, time blocks run in order and hand the state
to each other through a float32 VMEM scratch `[1, block_d]`.

A megacore chip (v4, v5p) splits the `P = B * D / block_d` parallel programs
over its two TensorCores, `ceil(P / 2)` each (`tpu_inspect`): with an odd
`P` one core spends a program's time on a duplicate, and `P = 1` idles a
core. `choose_tiling` therefore picks the feature block for the batch size:
at B=1, D=2560 it takes 640 features (P=4) rather than 512 (P=5); see
docs/tpu.md, "The TPU scan at batch 1".

Inside a block the kernel walks 16 time rows at a time (one packed bfloat16
tile, two float32 vregs). Each 8-row vreg is scanned in registers with a
3-step Hillis-Steele scan over its sublanes (`pltpu.roll` + select), which
yields the local state `X` and the running gate product `A` of every row; the
state entering the vreg is then applied as `h = X + A * carry`. This keeps
every load, store and VPU op on whole, aligned vregs (no single-row accesses
or sublane-offset layouts) and the serial dependency is one multiply-add and
one sublane broadcast per 8 steps.

Backward (one reverse kernel pass): with `g_t = dL/dh_t`,

    g_t = dy_t + a_{t+1} g_{t+1},   dx_t = g_t,   da_t = g_t * h_{t-1},
    dh0 = a_0 g_0,

i.e. a scan of `dy` in the opposite direction whose gates are shifted by one
step. The carry between vregs is `c = a_first * g_first` (the gradient that
reaches the state before the vreg), so the shifted gates never cross a vreg.
`da` needs `h_{t-1}`. Choice: the forward saves the float32 states rather
than the backward recomputing them. For float32 `x` the states are `y`
itself, so saving is free; for bfloat16 `x` the forward (only when
differentiated) writes one extra float32 array, 4 bytes per element, and keeps
it until the backward. Recomputing would instead add a forward pass over each
time block (reading x and a again) before walking it backwards, and the
states would still have to be held in VMEM for the block. The row before each
time block comes from an extra 8-row BlockSpec on the same states array.

Padding (done here, sliced away on return): `D` to the feature block (a
multiple of 128 lanes) and `T` to the time block, with neutral steps
`x = 0, a = 1` that leave the state unchanged in either direction, so `h_last`
and `dh0` need no special casing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

LANES = 128
SUBLANES = 8
# Rows handled per inner-loop step; time blocks are multiples of it.
TIME_ALIGN = 2 * SUBLANES
MAX_BLOCK_D = 1024
# Among feature blocks that use the cores equally well, the one nearest this
# width: per element, the compiled inner loop's static schedule (v5p) is
# within 7% from 512 to 1280 lanes and 16% longer at 256, and wider blocks
# leave fewer rows to the time block.
PREFERRED_BLOCK_D = 512
MAX_BLOCK_T = 512
# Narrow feature blocks may take more rows, up to this many elements, so that
# a grid step still moves enough bytes to hide its fixed cost (~0.35 us).
MAX_BLOCK_ELEMENTS = 512 * 512
# TensorCores that share the parallel grid of a megacore chip (v4, v5p).
MEGACORE_CORES = 2
# VMEM for the double-buffered [block_t, block_d] blocks of one kernel. The
# smallest default scoped VMEM limit (v4, v5e) is 16 MiB; half of it leaves
# room for Mosaic's internal scratch and the small per-row blocks.
VMEM_BUDGET_BYTES = 8 * 2**20

_f32 = jnp.float32


# ----------------------------------------------------------------------------
# Tiling.


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Block sizes and padded extents of one `[B, T, D]` problem."""

  block_t: int
  block_d: int
  t_pad: int
  d_pad: int

  @property
  def num_t_blocks(self) -> int:
    return self.t_pad // self.block_t

  @property
  def num_d_blocks(self) -> int:
    return self.d_pad // self.block_d


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def core_utilisation(programs: int, num_cores: int = MEGACORE_CORES) -> float:
  """Useful share of the cores' time when `programs` split `ceil(P / n)`."""
  return programs / (num_cores * -(-programs // num_cores))


def _feature_block(d: int, batch: int, num_cores: int) -> int:
  """The feature block that keeps the most cores busy, then the preferred."""
  lane_tiles = -(-d // LANES)

  def score(k):
    programs = batch * (lane_tiles // k)
    return (
        core_utilisation(programs, num_cores),
        -abs(k * LANES - PREFERRED_BLOCK_D),
        k,
    )

  candidates = [
      k for k in range(1, MAX_BLOCK_D // LANES + 1) if lane_tiles % k == 0
  ]
  return LANES * max(candidates, key=score)


def _balanced_units(units: int, max_units: int) -> int:
  """Units (of TIME_ALIGN rows) per time block, avoiding padding if cheap."""
  if units <= max_units:
    return units
  divisor = max(k for k in range(1, max_units + 1) if units % k == 0)
  if 2 * divisor >= max_units:
    return divisor
  # No large divisor (e.g. T/16 prime): pad T a little, evenly split.
  num_blocks = -(-units // max_units)
  return -(-units // num_blocks)


def choose_tiling(
    t: int,
    d: int,
    bytes_per_element: int,
    *,
    batch: int = 1,
    num_cores: int = MEGACORE_CORES,
    block_t: int | None = None,
    block_d: int | None = None,
    vmem_budget_bytes: int = VMEM_BUDGET_BYTES,
) -> Tiling:
  """Picks `(block_t, block_d)` for a `[batch, t, d]` problem.

  The feature block is the divisor of the padded width (up to MAX_BLOCK_D)
  whose `batch * d_pad / block_d` programs split most evenly over
  `num_cores`, nearest PREFERRED_BLOCK_D among those; the time block then
  fills the VMEM budget.

  Args:
    t: sequence length.
    d: feature width.
    bytes_per_element: bytes one `(time, feature)` element costs summed over
      all `[B, T, D]` operands of the heavier kernel (forward or backward).
    batch: batch rows (parallel programs per feature block).
    num_cores: TensorCores sharing the parallel grid (2 on v4 and v5p; on
      a one-core chip the choice only changes the block shape).
    block_t: time block override, a multiple of 16.
    block_d: feature block override, a multiple of 128.
    vmem_budget_bytes: VMEM for the double-buffered blocks.

  Returns:
    The tiling; `t_pad`, `d_pad` are multiples of the blocks.
  """
  if batch < 1 or num_cores < 1:
    raise ValueError(
        f"batch and num_cores must be >= 1, got {batch} and {num_cores}"
    )
  if block_d is None:
    block_d = _feature_block(d, batch, num_cores)
  elif block_d <= 0 or block_d % LANES:
    raise ValueError(f"block_d must be a positive multiple of {LANES}")
  d_pad = _round_up(d, block_d)
  if block_t is None:
    rows = vmem_budget_bytes // (2 * bytes_per_element * block_d)
    max_rows = max(MAX_BLOCK_T, MAX_BLOCK_ELEMENTS // block_d)
    max_units = max(1, min(rows, max_rows) // TIME_ALIGN)
    block_t = TIME_ALIGN * _balanced_units(-(-t // TIME_ALIGN), max_units)
  elif block_t <= 0 or block_t % TIME_ALIGN:
    raise ValueError(f"block_t must be a positive multiple of {TIME_ALIGN}")
  return Tiling(block_t, block_d, _round_up(t, block_t), d_pad)


def pad_btd(z: jax.Array, tiling: Tiling, value: float) -> jax.Array:
  """Pads a `[B, T, D]` array to `[B, t_pad, d_pad]` with `value`."""
  _, t, d = z.shape
  if (t, d) == (tiling.t_pad, tiling.d_pad):
    return z
  pads = ((0, 0), (0, tiling.t_pad - t), (0, tiling.d_pad - d))
  return jnp.pad(z, pads, constant_values=value)


def pad_state(h: jax.Array, tiling: Tiling) -> jax.Array:
  """`[B, D]` float32 -> `[B, 1, d_pad]` (one row per batch for BlockSpecs)."""
  h = h.astype(_f32)[:, None, :]
  return jnp.pad(h, ((0, 0), (0, 0), (0, tiling.d_pad - h.shape[-1])))


def compiler_params() -> pltpu.CompilerParams:
  """Batch and feature blocks are independent; time blocks run in order."""
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "arbitrary")
  )


# ----------------------------------------------------------------------------
# In-register building blocks, shared with the fused RG-LRU kernel. `reverse`
# is the direction of the scan that is being computed.


def _row_ids(shape) -> jax.Array:
  return jax.lax.broadcasted_iota(jnp.int32, shape, 0)


def first_row(v: jax.Array, reverse: bool) -> jax.Array:
  """The `[1, N]` row of an `[8, N]` value that a scan visits first."""
  return v[SUBLANES - 1 :] if reverse else v[:1]


def last_row(v: jax.Array, reverse: bool) -> jax.Array:
  """The `[1, N]` row of an `[8, N]` value that a scan visits last."""
  return v[:1] if reverse else v[SUBLANES - 1 :]


def shift_in(v: jax.Array, fill, reverse: bool) -> jax.Array:
  """Moves the 8 rows of `v` one step along the scan; `fill` enters first.

  Returns `w` with `w_i = v_{i-1}` (`v_{i+1}` when `reverse`) and the row
  the scan visits first set to `fill` (a scalar or a `[1, N]` row).
  """
  rolled = pltpu.roll(v, SUBLANES - 1 if reverse else 1, 0)
  first = SUBLANES - 1 if reverse else 0
  return jnp.where(_row_ids(v.shape) == first, fill, rolled)


def chunk_scan(
    a: jax.Array, x: jax.Array, reverse: bool
) -> tuple[jax.Array, jax.Array]:
  """Scans the 8 rows of one vreg from a zero state (Hillis-Steele).

  Args:
    a: `[8, N]` float32 gates.
    x: `[8, N]` float32 inputs.
    reverse: scan from row 7 to row 0.

  Returns:
    `(A, X)`, both `[8, N]`: `A_i` is the product of the gates from the first
    visited row to row i and `X_i` the state at row i; the state with an
    incoming `carry` is `X + A * carry`.
  """
  rows = _row_ids(a.shape)
  for k in (1, 2, 4):
    if reverse:
      shift, valid = SUBLANES - k, rows < SUBLANES - k
    else:
      shift, valid = k, rows >= k
    a_prev = jnp.where(valid, pltpu.roll(a, shift, 0), 1.0)
    x_prev = jnp.where(valid, pltpu.roll(x, shift, 0), 0.0)
    x = x + a * x_prev
    a = a * a_prev
  return a, x


def _halves(reverse: bool) -> tuple[slice, slice]:
  """The two 8-row halves of a TIME_ALIGN unit in scan order."""
  lo, hi = slice(0, SUBLANES), slice(SUBLANES, TIME_ALIGN)
  return (hi, lo) if reverse else (lo, hi)


def scan_unit(
    a: jax.Array, x: jax.Array, carry: jax.Array, reverse: bool
) -> tuple[jax.Array, jax.Array]:
  """Forward step over one `[16, N]` unit: `(h [16, N], carry [1, N])`."""
  out = {}
  for half in _halves(reverse):
    gates, state = chunk_scan(a[half], x[half], reverse)
    h = state + gates * carry
    out[half.start] = h
    carry = last_row(h, reverse)
  return jnp.concatenate([out[0], out[SUBLANES]], axis=0), carry


def scan_unit_bwd(
    a: jax.Array,
    h: jax.Array,
    dy: jax.Array,
    h_before: jax.Array,
    c: jax.Array,
    reverse: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Backward step over one `[16, N]` unit of a scan in direction `reverse`.

  Args:
    a: `[16, N]` float32 gates of the forward scan.
    h: `[16, N]` float32 forward states.
    dy: `[16, N]` float32 cotangent of the states.
    h_before: `[1, N]` the forward state before this unit.
    c: `[1, N]` gradient reaching the state after this unit from later
      steps (`a_next * g_next`, or `dh_last`).
    reverse: direction of the forward scan.

  Returns:
    `(g, h_prev, c)`: `g = dL/dh [16, N]`, `h_prev [16, N]` the state before
    each step, and the carry for the preceding unit.
  """
  halves = _halves(reverse)
  g_out, prev_out = {}, {}
  for half in reversed(halves):
    a_h = a[half]
    # Gate of the next forward step for every row; the last row's successor
    # lives in the next unit, whose gate is already folded into `c`.
    a_next = shift_in(a_h, 1.0, not reverse)
    gates, grads = chunk_scan(a_next, dy[half], not reverse)
    g = grads + gates * c
    c = first_row(a_h, reverse) * first_row(g, reverse)
    before = h_before if half == halves[0] else last_row(h[halves[0]], reverse)
    g_out[half.start] = g
    prev_out[half.start] = shift_in(h[half], before, reverse)
  cat = lambda d: jnp.concatenate([d[0], d[SUBLANES]], axis=0)
  return cat(g_out), cat(prev_out), c


def unit_start(i, num_units: int, descending: bool):
  """First row of the i-th visited TIME_ALIGN unit of a block."""
  u = num_units - 1 - i if descending else i
  return pl.multiple_of(u * TIME_ALIGN, TIME_ALIGN)


def is_last_time_block() -> jax.Array:
  """Whether this grid step visits the last time block (in visiting order)."""
  return pl.program_id(2) == pl.num_programs(2) - 1


def walk_time_block(
    body, num_rows: int, descending: bool, carry_ref, first_ref, last_ref,
    local=None,
):
  """The walk over one time block that every TPU kernel shares.

  The state carried across time blocks lives in the `[1, bd]` VMEM scratch
  `carry_ref`: at the first time block it is read from `first_ref`, at the
  last it is written to `last_ref`. In between, the block's TIME_ALIGN-row
  units are visited in order (from the last when `descending`), each with
  `body(start, carry, local) -> (carry, local)`, `start` being the unit's
  first row.

  Args:
    body: the step over one unit; `carry` is the `[1, bd]` state.
    num_rows: rows of the time block, a multiple of TIME_ALIGN.
    descending: visit the units from the block's last row to its first.
    carry_ref: the `[1, bd]` float32 VMEM scratch holding the state.
    first_ref: `[1, bd]` ref the state starts from.
    last_ref: `[1, bd]` ref that receives the final state.
    local: initial value of a carry that lives for this block only (e.g. an
      accumulator), or None.

  Returns:
    The final `local`.
  """

  @pl.when(pl.program_id(2) == 0)
  def _():
    carry_ref[...] = first_ref[...]

  num_units = num_rows // TIME_ALIGN

  def step(i, carries):
    return body(unit_start(i, num_units, descending), *carries)

  carry, local = jax.lax.fori_loop(
      0, num_units, step, (carry_ref[...], local)
  )
  carry_ref[...] = carry

  @pl.when(is_last_time_block())
  def _():
    last_ref[...] = carry

  return local


def state_before_unit(h_ref, start, boundary, reverse: bool) -> jax.Array:
  """The forward state just before the unit at `start` (a `[1, N]` row).

  `boundary` is the state before the whole block; inside the block it is the
  last row, in scan order, of the 8 rows of `h_ref` before the unit.
  """
  block_t = h_ref.shape[0]
  if reverse:
    at_edge = start + TIME_ALIGN == block_t
    nb = jnp.minimum(start + TIME_ALIGN, block_t - SUBLANES)
  else:
    at_edge = start == 0
    nb = jnp.maximum(start - SUBLANES, 0)
  rows = h_ref[pl.ds(pl.multiple_of(nb, SUBLANES), SUBLANES), :]
  return jnp.where(at_edge, boundary, last_row(rows, reverse))


class BlockSpecs(NamedTuple):
  """The BlockSpecs of one kernel on the `(B, D / bd, T / bt)` grid."""

  big: pl.BlockSpec  # [bt, bd] blocks of a [B, T, D] array.
  row: pl.BlockSpec  # [1, bd] of a per-batch-row [B, 1, D] state.
  feature: pl.BlockSpec  # [1, bd] of a [1, D] per-feature parameter row.
  column: pl.BlockSpec  # [bt, 1] of a [B, T, 1] per-step column.
  before: pl.BlockSpec  # The 8 rows just before each block in scan order.


def block_specs(tiling: Tiling, reverse: bool, backward: bool) -> BlockSpecs:
  """BlockSpecs visiting time blocks in scan order, or the opposite order.

  Args:
    tiling: the problem's tiling.
    reverse: direction of the forward scan.
    backward: visit the blocks in the backward kernel's order (opposite to
      the forward scan's).
  """
  nt = tiling.num_t_blocks
  eighths = tiling.block_t // SUBLANES
  bt, bd = tiling.block_t, tiling.block_d

  def t_block(k):
    return k if reverse == backward else nt - 1 - k

  def before(k):
    tb = t_block(k)
    if reverse:  # Forward order runs down in time: the block after, clamped.
      return jnp.minimum((tb + 1) * eighths, tiling.t_pad // SUBLANES - 1)
    return jnp.maximum(tb * eighths - 1, 0)

  return BlockSpecs(
      big=pl.BlockSpec((None, bt, bd), lambda b, j, k: (b, t_block(k), j)),
      row=pl.BlockSpec((None, 1, bd), lambda b, j, k: (b, 0, j)),
      feature=pl.BlockSpec((1, bd), lambda b, j, k: (0, j)),
      column=pl.BlockSpec((None, bt, 1), lambda b, j, k: (b, t_block(k), 0)),
      before=pl.BlockSpec(
          (None, SUBLANES, bd), lambda b, j, k: (b, before(k), j)
      ),
  )


def forward_outputs(
    specs: BlockSpecs, tiling: Tiling, batch: int, dtype, save: bool
) -> tuple[list[jax.ShapeDtypeStruct], list[pl.BlockSpec]]:
  """`(out_shape, out_specs)` of a forward kernel: y `[B, T, D]` in `dtype`,
  then (when `save`) the float32 states, then h_last `[B, 1, D]` float32."""
  shape = (batch, tiling.t_pad, tiling.d_pad)
  out_shape = [jax.ShapeDtypeStruct(shape, dtype)]
  out_specs = [specs.big]
  if save:
    out_shape.append(jax.ShapeDtypeStruct(shape, _f32))
    out_specs.append(specs.big)
  out_shape.append(jax.ShapeDtypeStruct((batch, 1, tiling.d_pad), _f32))
  out_specs.append(specs.row)
  return out_shape, out_specs


# ----------------------------------------------------------------------------
# The scan kernels.


def _fwd_kernel(x_ref, a_ref, h0_ref, *refs, reverse: bool, save: bool):
  """Refs: x, a `[bt, bd]`, h0 `[1, bd]` -> y (states) `[bt, bd]`, h_last."""
  if save:
    y_ref, states_ref, h_last_ref, carry_ref = refs
  else:
    (y_ref, h_last_ref, carry_ref), states_ref = refs, None

  def body(start, carry, local):
    rows = pl.ds(start, TIME_ALIGN)
    x = x_ref[rows, :].astype(_f32)
    a = a_ref[rows, :].astype(_f32)
    h, carry = scan_unit(a, x, carry, reverse)
    y_ref[rows, :] = h.astype(y_ref.dtype)
    if states_ref is not None:
      states_ref[rows, :] = h
    return carry, local

  walk_time_block(
      body, x_ref.shape[0], reverse, carry_ref, h0_ref, h_last_ref
  )


def _bwd_kernel(
    a_ref, h_ref, h_before_ref, h0_ref, dy_ref, dh_last_ref,
    dx_ref, da_ref, dh0_ref, c_ref, *, reverse: bool,
):
  """Refs: a, states `[bt, bd]`, the 8 state rows before the block, h0,
  dy `[bt, bd]`, dh_last `[1, bd]` -> dx, da `[bt, bd]`, dh0 `[1, bd]`."""
  # The first block in forward order (visited last) starts from h0.
  boundary = jnp.where(
      is_last_time_block(), h0_ref[...], last_row(h_before_ref[...], reverse)
  )

  def body(start, c, local):
    rows = pl.ds(start, TIME_ALIGN)
    a = a_ref[rows, :].astype(_f32)
    h_before = state_before_unit(h_ref, start, boundary, reverse)
    g, h_prev, c = scan_unit_bwd(
        a, h_ref[rows, :], dy_ref[rows, :].astype(_f32), h_before, c, reverse
    )
    dx_ref[rows, :] = g.astype(dx_ref.dtype)
    da_ref[rows, :] = (g * h_prev).astype(da_ref.dtype)
    return c, local

  walk_time_block(
      body, a_ref.shape[0], not reverse, c_ref, dh_last_ref, dh0_ref
  )


@dataclasses.dataclass(frozen=True)
class _Config:
  reverse: bool
  tiling: Tiling
  interpret: Any


def _forward(x, a, h0, cfg: _Config, save_states: bool):
  """Runs the forward kernel; returns `(y, h_last, (a_pad, states_pad))`."""
  b, t, d = x.shape
  tl = cfg.tiling
  x_p = pad_btd(x, tl, 0.0)
  a_p = pad_btd(a, tl, 1.0)  # Neutral steps: the state passes unchanged.
  # A float32 y already is the states array the backward needs.
  save = save_states and x.dtype != _f32
  specs = block_specs(tl, cfg.reverse, backward=False)
  out_shape, out_specs = forward_outputs(specs, tl, b, x.dtype, save)
  n = b * tl.t_pad * tl.d_pad
  bytes_accessed = n * (x.dtype.itemsize * 2 + a.dtype.itemsize + 4 * save)
  outs = pl.pallas_call(
      functools.partial(_fwd_kernel, reverse=cfg.reverse, save=save),
      grid=(b, tl.num_d_blocks, tl.num_t_blocks),
      in_specs=[specs.big, specs.big, specs.row],
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((1, tl.block_d), _f32)],
      compiler_params=compiler_params(),
      cost_estimate=pl.CostEstimate(
          flops=2 * n, transcendentals=0, bytes_accessed=bytes_accessed
      ),
      interpret=cfg.interpret,
      name="linear_scan_fwd",
  )(x_p, a_p, pad_state(h0, tl))
  y_p, h_last = outs[0], outs[-1]
  states_p = outs[1] if save else y_p
  return y_p[:, :t, :d], h_last[:, 0, :d], (a_p, states_p)


def _backward(a_p, states_p, h0, dy, dh_last, cfg: _Config):
  """Runs the backward kernel; returns `(dx, da, dh0)` unpadded."""
  b, t, d = dy.shape
  tl = cfg.tiling
  specs = block_specs(tl, cfg.reverse, backward=True)
  shape = (b, tl.t_pad, tl.d_pad)
  n = b * tl.t_pad * tl.d_pad
  bytes_accessed = n * (
      a_p.dtype.itemsize * 2 + 4 + dy.dtype.itemsize * 2
  )
  dx, da, dh0 = pl.pallas_call(
      functools.partial(_bwd_kernel, reverse=cfg.reverse),
      grid=(b, tl.num_d_blocks, tl.num_t_blocks),
      in_specs=[
          specs.big,  # a
          specs.big,  # states
          specs.before,  # states
          specs.row,  # h0
          specs.big,  # dy
          specs.row,  # dh_last
      ],
      out_specs=[specs.big, specs.big, specs.row],
      out_shape=[
          jax.ShapeDtypeStruct(shape, dy.dtype),
          jax.ShapeDtypeStruct(shape, a_p.dtype),
          jax.ShapeDtypeStruct((b, 1, tl.d_pad), _f32),
      ],
      scratch_shapes=[pltpu.VMEM((1, tl.block_d), _f32)],
      compiler_params=compiler_params(),
      cost_estimate=pl.CostEstimate(
          flops=4 * n, transcendentals=0, bytes_accessed=bytes_accessed
      ),
      interpret=cfg.interpret,
      name="linear_scan_bwd",
  )(
      a_p,
      states_p,
      states_p,
      pad_state(h0, tl),
      pad_btd(dy, tl, 0.0),
      pad_state(dh_last, tl),
  )
  return dx[:, :t, :d], da[:, :t, :d], dh0[:, 0, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _scan(x, a, h0, cfg: _Config):
  y, h_last, _ = _forward(x, a, h0, cfg, save_states=False)
  return y, h_last


def _scan_fwd(x, a, h0, cfg: _Config):
  y, h_last, (a_p, states_p) = _forward(x, a, h0, cfg, save_states=True)
  return (y, h_last), (a_p, states_p, h0)


def _scan_bwd(cfg: _Config, residuals, cotangents):
  a_p, states_p, h0 = residuals
  dy, dh_last = cotangents
  return _backward(a_p, states_p, h0, dy, dh_last, cfg)


_scan.defvjp(_scan_fwd, _scan_bwd)


def linear_scan(
    x: jax.Array,
    a: jax.Array,
    h0: jax.Array,
    *,
    reverse: bool = False,
    interpret: Any = False,
    block_t: int | None = None,
    block_d: int | None = None,
    vmem_budget_bytes: int = VMEM_BUDGET_BYTES,
) -> tuple[jax.Array, jax.Array]:
  """`h_t = a_t h_{t-1} + x_t` on TPU; differentiable in `x`, `a`, `h0`.

  Args:
    x: `[B, T, D]` float32 or bfloat16 inputs.
    a: `[B, T, D]` float32 or bfloat16 gates.
    h0: `[B, D]` float32 initial state.
    reverse: scan from the last step to the first.
    interpret: False on TPU; True (fast, plain JAX) or
      `pltpu.InterpretParams(...)` (simulated TPU memory) on CPU.
    block_t: time block (multiple of 16); default from the VMEM budget.
    block_d: feature block (multiple of 128); default from the width and
      the batch (`choose_tiling`).
    vmem_budget_bytes: VMEM for the double-buffered blocks.

  Returns:
    `(y [B, T, D] in x.dtype, h_last [B, D] float32)`.
  """
  # The backward streams a, states (f32), dy, dx, da; the forward at most
  # x, a, y and the f32 states: size the blocks for the heavier one.
  bytes_per_element = 2 * a.dtype.itemsize + 2 * x.dtype.itemsize + 4
  tiling = choose_tiling(
      x.shape[1],
      x.shape[2],
      bytes_per_element,
      batch=x.shape[0],
      block_t=block_t,
      block_d=block_d,
      vmem_budget_bytes=vmem_budget_bytes,
  )
  return _scan(x, a, h0.astype(_f32), _Config(reverse, tiling, interpret))
