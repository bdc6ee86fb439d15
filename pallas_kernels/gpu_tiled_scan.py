"""One-pass Pallas GPU scan over `[block_t, block_d]` tiles, scanned in
parallel along time inside each tile.

    h_t = a_t * h_{t-1} + x_t,   h_{-1} = h0,   y_t = h_t

The walking kernel (`gpu_scan`) gives each thread a few features and walks
all T steps one row at a time; the chunked kernel (`gpu_chunked_scan`) adds
programs by splitting time, at the price of reading x and a twice. Here a
program owns `block_d` features of one batch row and walks time a whole
tile of `block_t` rows per iteration:

1. load the tile's x and a (the next tile's loads are issued before this
   tile is computed, so two tiles per array are in flight);
2. scan the tile along time with the affine combine
   `(A1, b1) then (A2, b2) = (A1 A2, A2 b1 + b2)`, all rows at once: Triton's
   `tt.scan` (warp shuffles and shared memory, `affine_scan` below);
3. fold in the carry, `h_rows = A h_in + b`, store `y`, and take the last
   row as the next carry.

So x and a are read once and y written once (the floor's 3 array passes,
against the chunked kernel's 5), every load is a coalesced `block_d`-wide
row, and the serial chain per tile is one row of FMAs, not `block_t` of
them. The backward pass is the same walk the other way:
`g_t = dy_t + a_{t+1} g_{t+1}` from `g = dh_last`, `dx_t = g_t`,
`da_t = g_t * h_{t-1}` (the forward output y one row back, `h0` before the
first step) and `dh0 = a_0 g_0`: dy, a and y read once, dx and da written
once.

Any B, T >= 1 and D >= 1 work. Tiles are loaded through clipped row
indices: rows past either end of time load as the identity (x = 0, a = 1)
and are not stored. When D is not a multiple of `block_d`, the last feature
block is shifted back to end at D, so it recomputes (and rewrites, with the
same values) a few features of its neighbour instead of masking; nothing
is ever read outside the arrays, in interpret mode too. Accumulation is
float32; results are deterministic (no atomics, a fixed combine order).

`affine_scan` is a primitive of this module: JAX's Pallas Triton lowering
exposes `tt.scan` only through `cumsum`, so its Triton lowering rule is
registered here (on the private lowering table of jax 0.11; the import
fails loudly if that moves). Off the Triton path (interpret mode, any
other backend) it is `lax.associative_scan` with the same combine.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.extend import core as jex_core
from jax.interpreters import mlir

from pallas_kernels import gpu_common

try:  # The Triton lowering table of Pallas (private; jax 0.11).
  from jax._src.lib.mlir import ir
  from jax._src.lib.mlir.dialects import arith as arith_dialect
  from jax._src.lib.triton import dialect as tt_dialect
  from jax._src.pallas.triton import lowering as triton_lowering
except ImportError as e:  # pragma: no cover - depends on the jax version
  raise ImportError(
      "pallas_kernels.gpu_tiled_scan needs jax's Pallas Triton lowering "
      f"(jax._src.pallas.triton.lowering, present in jax 0.11): {e}") from e


# ----------------------------------------------------------------------------
# The affine scan primitive: `tt.scan` with a two-operand combine.
# ----------------------------------------------------------------------------


def _combine(earlier, later):
  """Composes two steps of the recurrence, `earlier` first in walk order."""
  a1, b1 = earlier
  a2, b2 = later
  return a1 * a2, a2 * b1 + b2


def _affine_scan_reference(a, b, *, reverse: bool):
  return lax.associative_scan(_combine, (a, b), reverse=reverse, axis=0)


affine_scan_p = jex_core.Primitive("rg_affine_scan")
affine_scan_p.multiple_results = True
affine_scan_p.def_impl(_affine_scan_reference)
affine_scan_p.def_abstract_eval(
    lambda a, b, *, reverse: (jax.core.ShapedArray(a.shape, a.dtype),
                              jax.core.ShapedArray(b.shape, b.dtype)))
mlir.register_lowering(
    affine_scan_p,
    mlir.lower_fun(_affine_scan_reference, multiple_results=True))


def _affine_scan_triton(ctx, a, b, *, reverse: bool):
  """`tt.scan` along axis 0. Its combine region gets the accumulated
  prefix first and the new row second, in walk order for both directions
  (Triton's reverse scan runs the same combine from the last row; a probe on
  the H200 checked both orders in both directions, and the compiled oracle
  tests of tests/kernels/test_gpu_chunked_scan.py hold it)."""
  del ctx
  elem = [ir.RankedTensorType(v.type).element_type for v in (a, b)]
  scan = tt_dialect.ScanOp([a, b], 0, reverse)
  block = scan.regions[0].blocks.append(*elem, *elem)
  with ir.InsertionPoint.at_block_begin(block):
    a1, b1, a2, b2 = block.arguments
    tt_dialect.scan_return([
        arith_dialect.mulf(a1, a2),
        arith_dialect.addf(arith_dialect.mulf(a2, b1), b2),
    ])
  scan.verify()
  return list(scan.result)


triton_lowering.triton_lowering_rules[affine_scan_p] = _affine_scan_triton


def affine_scan(a: jax.Array, b: jax.Array, *, reverse: bool = False):
  """Inclusive scan of the maps `h -> a_t h + b_t` along axis 0.

  Returns `(A, B)`, both shaped like the inputs: row t maps the state
  before the walk's first row to the state after row t (`reverse` walks
  from the last row). Float32 in, float32 out.
  """
  return affine_scan_p.bind(a, b, reverse=reverse)


# ----------------------------------------------------------------------------
# The kernels.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TiledScanConfig:
  """Tile shape of the one-pass kernels.

  Attributes:
    block_t: time rows per tile (a power of 2).
    block_d: features per program (a power of 2; shrinks to the largest
      power of 2 <= D for narrow arrays).
    bwd_block_t: time rows per tile in the backward kernel, which holds
      three input tiles (dy, a, y) instead of two.
    num_warps: warps per program.
    pipeline: issue the next tile's loads before computing this one.
  """

  block_t: int = 128
  block_d: int = 32
  bwd_block_t: int = 64
  num_warps: int = 4
  pipeline: bool = True

  def __post_init__(self):
    gpu_common.check_powers_of_2(self, ("block_t", "block_d", "bwd_block_t"))
    if self.num_warps < 1:
      raise ValueError(f"num_warps must be positive, got {self.num_warps}")


def fitted_block_d(width: int, block_d: int) -> int:
  """`block_d`, narrowed to the largest power of 2 that is <= D."""
  return min(block_d, 1 << (width.bit_length() - 1))


@dataclasses.dataclass(frozen=True)
class _Walk:
  """Where one program's tiles lie.

  Tile `j` in walk order covers the time rows `[j * rows, (j + 1) *
  rows)` walking forward, or the `rows` before `T - j * rows` walking
  backward in time. The last tile, when T is not a multiple of `rows`, is
  shifted back inside `[0, T)`: its rows that the previous tile already
  covered are not fresh, load as the identity (x = 0, a = 1) and are not
  stored. So every index is in bounds, and no store writes a row twice
  (`rows <= T`).
  """

  length: int
  width: int
  rows: int
  block_d: int
  backward_in_time: bool

  @property
  def n_tiles(self) -> int:
    return pl.cdiv(self.length, self.rows)

  def col_start(self):
    """This program's first feature: the last block ends at D (no
    masking)."""
    return jnp.minimum(pl.program_id(1) * self.block_d,
                       self.width - self.block_d)

  def tile_index(self, loc, times):
    """`ref.at[...]` index of the `[rows, block_d]` tile at rows `times`
    (clipped into [0, T)): integer arrays in both dims, which Pallas'
    interpret mode gathers exactly (it cannot mix them with slices).
    `loc = (b, col_start())`, read once outside the time loop (interpret
    mode binds program ids only there)."""
    b, start = loc
    rows = jnp.clip(times, 0, self.length - 1)[:, None]
    cols = (start + jnp.arange(self.block_d, dtype=jnp.int32))[None, :]
    return b, rows, cols

  def times(self, j):
    """`[rows]` int32 time indices of tile j, all in `[0, T)`."""
    offsets = jnp.arange(self.rows, dtype=jnp.int32)
    if self.backward_in_time:
      return jnp.maximum(self.length - (j + 1) * self.rows, 0) + offsets
    return jnp.minimum(j * self.rows, self.length - self.rows) + offsets

  def fresh(self, j, times):
    """`[rows]` bool: the rows of tile j that no earlier tile covered."""
    if self.backward_in_time:
      return times < self.length - j * self.rows
    return times >= j * self.rows

  def first_row(self):
    """`[rows, 1]` bool: the tile's first row in walk order."""
    first = self.rows - 1 if self.backward_in_time else 0
    return (jnp.arange(self.rows, dtype=jnp.int32) == first)[:, None]

  def last_row(self):
    last = 0 if self.backward_in_time else self.rows - 1
    return (jnp.arange(self.rows, dtype=jnp.int32) == last)[:, None]

  def tile_mask(self, valid):
    return jnp.broadcast_to(valid[:, None], (self.rows, self.block_d))

  def load(self, ref, loc, times, other, valid=None):
    """A float32 `[rows, block_d]` tile of rows `times`, `other` outside
    `[0, T)` (the backward kernel's shifted rows) and where `valid` is
    false (indices are clipped, so nothing is read out of bounds)."""
    in_range = (times >= 0) & (times < self.length)
    valid = in_range if valid is None else in_range & valid
    tile = plgpu.load(ref.at[self.tile_index(loc, times)],
                      mask=self.tile_mask(valid), other=other)
    return gpu_common.f32(tile)

  def store(self, ref, loc, times, value, fresh):
    plgpu.store(ref.at[self.tile_index(loc, times)], value.astype(ref.dtype),
                mask=self.tile_mask(fresh))

  def walk(self, carry, load_tile, compute_tile, pipeline: bool):
    """`carry = compute_tile(j, load_tile(j), carry)` over all tiles."""
    if not pipeline or self.n_tiles == 1:
      return lax.fori_loop(
          0, self.n_tiles, lambda j, c: compute_tile(j, load_tile(j), c),
          carry)

    def body(j, state):
      carry, tiles = state
      upcoming = load_tile(j + 1)
      return compute_tile(j, tiles, carry), upcoming

    state = lax.fori_loop(0, self.n_tiles - 1, body,
                          (carry, load_tile(jnp.int32(0))))
    return compute_tile(jnp.int32(self.n_tiles - 1), state[1], state[0])


def _advance(walk: _Walk, gates, inputs, h):
  """All states of one tile: `h_rows` from the carry `h [block_d]`."""
  inputs = inputs + jnp.where(walk.first_row(), gates * h[None, :], 0.0)
  _, states = affine_scan(gates, inputs, reverse=walk.backward_in_time)
  carry = jnp.sum(jnp.where(walk.last_row(), states, 0.0), axis=0)
  return states, carry


def _fwd_kernel(x_ref, a_ref, h0_ref, y_ref, h_last_ref, *, walk: _Walk,
                pipeline: bool):
  """One (batch row, feature block): `y [T, block_d]`, `h_last`."""
  b, start = pl.program_id(0), walk.col_start()
  loc, cols = (b, start), pl.ds(start, walk.block_d)

  def load_tile(j):
    times = walk.times(j)
    fresh = walk.fresh(j, times)
    return (walk.load(x_ref, loc, times, 0.0, fresh),
            walk.load(a_ref, loc, times, 1.0, fresh))

  def compute_tile(j, tiles, h):
    x, a = tiles
    states, h = _advance(walk, a, x, h)
    times = walk.times(j)
    walk.store(y_ref, loc, times, states, walk.fresh(j, times))
    return h

  h0 = gpu_common.f32(plgpu.load(h0_ref.at[b, cols]))
  h = walk.walk(h0, load_tile, compute_tile, pipeline)
  plgpu.store(h_last_ref.at[b, cols], h)


def _bwd_kernel(a_ref, y_ref, h0_ref, dy_ref, dh_last_ref, dx_ref, da_ref,
                dh0_ref, *, walk: _Walk, pipeline: bool):
  """The reverse walk: `dx, da [T, block_d]` and `dh0` in one pass.

  `walk.backward_in_time` is the opposite of the forward scan's
  direction; `step` is +1 when the forward scan runs forward in time. The
  gate of row t is the forward gate one forward step on (`a_{t+step}`, 1
  past the end) and the state before row t is `y_{t-step}` (`h0` before
  the first forward step).
  """
  b, start = pl.program_id(0), walk.col_start()
  loc, cols = (b, start), pl.ds(start, walk.block_d)
  step = 1 if walk.backward_in_time else -1
  h0 = gpu_common.f32(plgpu.load(h0_ref.at[b, cols]))

  def load_tile(j):
    times = walk.times(j)
    fresh = walk.fresh(j, times)
    return (walk.load(dy_ref, loc, times, 0.0, fresh),
            walk.load(a_ref, loc, times + step, 1.0, fresh),
            walk.load(y_ref, loc, times - step, 0.0))

  def compute_tile(j, tiles, g):
    dy, gates, y_prev = tiles
    times = walk.times(j)
    grads, g = _advance(walk, gates, dy, g)
    before_start = (times - step < 0) | (times - step >= walk.length)
    h_prev = jnp.where(walk.tile_mask(before_start), h0[None, :], y_prev)
    fresh = walk.fresh(j, times)
    walk.store(dx_ref, loc, times, grads, fresh)
    walk.store(da_ref, loc, times, grads * h_prev, fresh)
    return g

  g = walk.walk(gpu_common.f32(plgpu.load(dh_last_ref.at[b, cols])),
                load_tile, compute_tile, pipeline)
  first = 0 if walk.backward_in_time else walk.length - 1
  a_first = gpu_common.f32(plgpu.load(a_ref.at[b, jnp.int32(first), cols]))
  plgpu.store(dh0_ref.at[b, cols], a_first * g)


def _launch(kernel, inputs, out_shape, walk: _Walk, batch: int,
            config: TiledScanConfig, interpret: bool, name: str):
  return pl.pallas_call(
      functools.partial(kernel, walk=walk, pipeline=config.pipeline),
      out_shape=out_shape,
      grid=(batch, pl.cdiv(walk.width, walk.block_d)),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=1),
      interpret=interpret,
      name=name,
  )(*inputs)


def _walk(shape, rows, config, backward_in_time) -> _Walk:
  _, length, width = shape
  return _Walk(length=length, width=width,
               rows=min(rows, 1 << (length.bit_length() - 1)),
               block_d=fitted_block_d(width, config.block_d),
               backward_in_time=backward_in_time)


def _scan_forward(x, a, h0, reverse, interpret, config):
  batch, _, width = x.shape
  walk = _walk(x.shape, config.block_t, config, backward_in_time=reverse)
  return _launch(
      _fwd_kernel, (x, a, h0),
      (jax.ShapeDtypeStruct(x.shape, x.dtype),
       jax.ShapeDtypeStruct((batch, width), jnp.float32)),
      walk, batch, config, interpret, "linear_scan_tiled_fwd")


def _scan_backward(a, y, h0, dy, dh_last, x_dtype, reverse, interpret,
                   config):
  batch, _, width = a.shape
  walk = _walk(a.shape, config.bwd_block_t, config,
               backward_in_time=not reverse)
  return _launch(
      _bwd_kernel,
      (a, y, h0, dy.astype(y.dtype), dh_last.astype(jnp.float32)),
      (jax.ShapeDtypeStruct(a.shape, x_dtype),
       jax.ShapeDtypeStruct(a.shape, a.dtype),
       jax.ShapeDtypeStruct((batch, width), jnp.float32)),
      walk, batch, config, interpret, "linear_scan_tiled_bwd")


# `(y, h_last)` of the scan; `h0` float32 `[B, D]`, config a
# `TiledScanConfig`. Differentiable in x, a and h0.
tiled_scan = gpu_common.differentiable_scan(_scan_forward, _scan_backward)
