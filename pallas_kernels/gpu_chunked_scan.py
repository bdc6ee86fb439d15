"""Time-parallel Pallas GPU scan: time split into chunks, in two passes.

    h_t = a_t * h_{t-1} + x_t,   h_{-1} = h0,   y_t = h_t

The walking kernel of `gpu_scan` gives each program a whole row of time, so
it has only `B * D / block_d` programs: 40 at B=1, D=2560, far too few to
keep enough loads in flight on 132 SMs (it reaches a quarter of the copy
bandwidth there, docs/benchmarks.md). Here each row of time is also split
into `K` chunks of `L` steps, one program per (chunk, batch row, feature
block), and no program ever waits for another:

1. *summary* pass: each program walks its chunk from zero and stores the
   chunk's affine map `h -> A h + b` (`A` the product of its gates, `b` its
   scan from zero): two `[K, B, D]` float32 arrays.
2. *rescan* pass: each program composes the maps of the chunks before its
   own onto `h0` (at most `K - 1` small loads), then walks its chunk again
   from that state and writes `y`.

The forward pass reads x and a twice and writes y once (5 array passes
against the floor's 3); `K` is chosen so that there are about
`target_programs` programs (at most `max_splits` chunks), so the summaries
and the composition stay small.

The backward pass is the same two-pass scan run the other way over walk
steps: `g_t = dy_t + a_{t+1} g_{t+1}` from `g = dh_last`, writing
`dx_t = g_t`, `da_t = g_t * h_{t-1}` (the forward output `y` as `h_{t-1}`,
`h0` at the scan's first step) and `dh0 = a_0 g_0`.

Any B, T >= 1 and D work: steps past T (the last chunk's tail) load as the
identity (x = 0, a = 1) and are not stored; columns past D are masked.
Accumulation is float32. `interpret=True` runs the same kernels on CPU.
`gpu_lookback_scan` holds a one-pass variant (chunks chained by decoupled
look-back), experimental and opt-in.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import gpu_common


@dataclasses.dataclass(frozen=True)
class ChunkedScanConfig:
  """Shapes of the time-parallel kernels (defaults: not yet tuned on a
  GPU; docs/benchmarks.md says what was measured).

  Attributes:
    block_d: features per program (a power of 2, at least 32).
    chunk: time steps whose loads the forward kernels issue together.
    bwd_chunk: the same for the backward kernels.
    splits: chunks per row of time; 0 picks enough for `target_programs`
      programs, at most `max_splits`.
    target_programs: programs to aim for when `splits` is 0.
    max_splits: the most chunks `splits=0` picks (the rescan composes up
      to this many summaries per program).
    pipeline: load the next rows while computing the current ones.
    num_warps: warps per program.
  """

  block_d: int = 64
  chunk: int = 32
  bwd_chunk: int = 16
  splits: int = 0
  target_programs: int = 1024
  max_splits: int = 32
  pipeline: bool = True
  num_warps: int = 1

  def __post_init__(self):
    if self.block_d < 32 or self.block_d & (self.block_d - 1):
      raise ValueError(
          f"block_d must be a power of 2 >= 32, got {self.block_d}")
    for name in ("chunk", "bwd_chunk", "target_programs", "max_splits"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.splits < 0:
      raise ValueError(f"splits must be >= 0, got {self.splits}")


def split_time(length: int, batch: int, width: int, chunk: int,
               config: ChunkedScanConfig) -> tuple[int, int]:
  """`(K, L)`: chunks per row and steps per chunk (a multiple of `chunk`,
  so that a chunk's walk needs no tail loop); `K * L >= length`."""
  n_dblocks = pl.cdiv(width, config.block_d)
  splits = config.splits or min(
      config.max_splits, pl.cdiv(config.target_programs, batch * n_dblocks))
  steps = chunk * pl.cdiv(pl.cdiv(length, max(1, splits)), chunk)
  return pl.cdiv(length, steps), steps


# ----------------------------------------------------------------------------
# Tiles and rows, shared with gpu_lookback_scan.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tile:
  """One program's work: chunk `k` (in walk order) of batch row `b`, the
  `block_d` features from `start`."""

  k: jax.Array
  b: jax.Array
  start: jax.Array
  block_d: int
  width: int

  @property
  def cols(self):
    return pl.ds(self.start, self.block_d)

  def col_mask(self):
    """`[block_d]` bool mask of real features, or None (no padding)."""
    if self.width % self.block_d == 0:
      return None
    return self.start + jnp.arange(self.block_d, dtype=jnp.int32) < self.width

  def summary_index(self, k=None):
    """Index of this tile's (or chunk `k`'s) row of the `[K, B, D_pad]`
    summary arrays, padded to whole feature blocks (so never masked)."""
    return (self.k if k is None else k, self.b, self.cols)

  def lanes(self, flag) -> jax.Array:
    """A scalar bool broadcast to a `[block_d]` mask."""
    return flag.astype(jnp.int32) + jnp.zeros((self.block_d,), jnp.int32) > 0

  def row_mask(self, step, length: int):
    """`[block_d]` mask: walk step `step` exists and the column is real."""
    lanes = step + jnp.zeros((self.block_d,), jnp.int32)
    return both(self.col_mask(), lanes < length)


def both(mask_a, mask_b):
  """`mask_a & mask_b`, where None means all true."""
  return mask_b if mask_a is None else mask_a & mask_b


load = gpu_common.load
walk_row = functools.partial(gpu_common.time_index, clip=True)


def compose(carry, xs, gates):
  """Applies rows to the map `(A, b)`: `h -> a (A h + b) + x` per row."""
  prod, h = carry
  for x, a in zip(xs, gates):
    a = gpu_common.f32(a)
    h = a * h + gpu_common.f32(x)
    prod = a * prod
  return prod, h


@dataclasses.dataclass(frozen=True)
class Direction:
  """Where one direction of the scan reads its rows and writes its outputs.

  The forward scan walks time as the user asked (`reverse`). The backward
  scan walks it the other way over `dy`, with the gate of walk step s being
  the forward gate of step s - 1 (1 at the walk's first step), starting
  from `dh_last`.

  Attributes:
    forward: the forward scan (else the backward one).
    backward_in_time: the walk runs from T - 1 down to 0.
  """

  forward: bool
  backward_in_time: bool

  @property
  def start_input(self) -> str:
    return "h0" if self.forward else "dh_last"

  def inputs_of(self, tile: Tile, inputs, steps, length):
    """`(xs, gates)`: the scan's inputs at walk steps `steps`."""
    masks = [tile.row_mask(s, length) for s in steps]
    rows = [walk_row(s, length, self.backward_in_time) for s in steps]
    x_ref = inputs["x" if self.forward else "dy"]
    xs = [load(x_ref.at[tile.b, t, tile.cols], m, 0)
          for t, m in zip(rows, masks)]
    if self.forward:
      gates = [load(inputs["a"].at[tile.b, t, tile.cols], m, 1)
               for t, m in zip(rows, masks)]
    else:
      gate_rows = [walk_row(s - 1, length, self.backward_in_time)
                   for s in steps]
      gates = [load(inputs["a"].at[tile.b, t, tile.cols],
                    both(m, tile.lanes(s >= 1)), 1)
               for s, t, m in zip(steps, gate_rows, masks)]
    return xs, gates


def forward_direction(reverse: bool) -> Direction:
  return Direction(forward=True, backward_in_time=reverse)


def backward_direction(reverse: bool) -> Direction:
  return Direction(forward=False, backward_in_time=not reverse)


def start_state(tile: Tile, inputs, direction: Direction):
  """The float32 state entering walk step 0 (`h0` or `dh_last`)."""
  start = inputs[direction.start_input].at[tile.b, tile.cols]
  return gpu_common.f32(load(start, tile.col_mask(), 0))


def forward_h0(tile: Tile, inputs, direction: Direction):
  """The backward pass's `h0` (the state before the scan's first step, the
  walk's last), loaded once per program; None for the forward pass."""
  if direction.forward:
    return None
  return gpu_common.f32(load(inputs["h0"].at[tile.b, tile.cols],
                           tile.col_mask(), 0))


def emit_rows(tile: Tile, direction: Direction, inputs, outputs, steps, xs,
              gates, h, length, h0=None):
  """Rescans rows from state `h`, stores their outputs, returns the state.

  Forward: `y`. Backward: `dx` and `da` (reading `y` one walk step on as
  `h_{t-1}`, and `h0 = forward_h0(...)` at the walk's last step).
  """
  masks = [tile.row_mask(s, length) for s in steps]
  rows = [walk_row(s, length, direction.backward_in_time) for s in steps]
  if direction.forward:
    for x, a, t, m in zip(xs, gates, rows, masks):
      h = gpu_common.f32(a) * h + gpu_common.f32(x)
      gpu_common.store(outputs["y"].at[tile.b, t, tile.cols], h, m)
    return h
  prevs = []
  for s, m in zip(steps, masks):
    has_prev = s + 1 < length
    prev_row = walk_row(s + 1, length, direction.backward_in_time)
    prevs.append((has_prev, load(inputs["y"].at[tile.b, prev_row, tile.cols],
                                 both(m, tile.lanes(has_prev)), 0)))
  for dy, u, t, m, (has_prev, prev) in zip(xs, gates, rows, masks, prevs):
    h = gpu_common.f32(u) * h + gpu_common.f32(dy)
    h_prev = jnp.where(has_prev, gpu_common.f32(prev), h0)
    gpu_common.store(outputs["dx"].at[tile.b, t, tile.cols], h, m)
    gpu_common.store(outputs["da"].at[tile.b, t, tile.cols], h * h_prev, m)
  return h


def emit_final(tile: Tile, direction: Direction, inputs, outputs, h, is_last,
               length):
  """The last chunk's program stores `h_last` (forward) or `dh0 = a_0 g_0`
  (backward); rows past T are the identity, so `h` is final."""
  mask = both(tile.col_mask(), tile.lanes(is_last))
  if direction.forward:
    gpu_common.store(outputs["h_last"].at[tile.b, tile.cols], h, mask)
    return
  first_row = walk_row(length - 1, length, direction.backward_in_time)
  first_gate = load(inputs["a"].at[tile.b, first_row, tile.cols],
                    tile.col_mask(), 0)
  gpu_common.store(outputs["dh0"].at[tile.b, tile.cols],
                 gpu_common.f32(first_gate) * h, mask)


# ----------------------------------------------------------------------------
# The two passes.
# ----------------------------------------------------------------------------


def _grid_tile(width: int, block_d: int) -> Tile:
  return Tile(k=pl.program_id(0), b=pl.program_id(1),
              start=pl.program_id(2) * block_d, block_d=block_d, width=width)


def _walk_chunk(tile, direction, inputs, length, steps_per_chunk, chunk,
                carry, compute, pipeline):
  """Walks this tile's chunk `chunk` rows at a time: `carry = compute(
  steps, xs, gates, carry)`."""
  base = tile.k * steps_per_chunk

  def load_rows(first, n):
    steps = [base + first + i for i in range(n)]
    return direction.inputs_of(tile, inputs, steps, length)

  def compute_rows(first, rows, carry):
    steps = [base + first + i for i in range(len(rows[0]))]
    return compute(steps, *rows, carry)

  return gpu_common.walk_time(steps_per_chunk, chunk, carry, load_rows,
                            compute_rows, pipeline=pipeline)


def _summary_kernel(*refs, direction, in_names, length, steps_per_chunk,
                    chunk, config):
  """Pass 1: the map `(A, b)` of this tile's chunk, from its rows alone."""
  inputs = dict(zip(in_names, refs[:len(in_names)]))
  agg_a_ref, agg_b_ref = refs[len(in_names):]
  tile = _grid_tile(inputs["a"].shape[2], config.block_d)
  ones = jnp.ones((config.block_d,), jnp.float32)
  prod, h = _walk_chunk(
      tile, direction, inputs, length, steps_per_chunk, chunk,
      (ones, jnp.zeros_like(ones)),
      lambda steps, xs, gates, carry: compose(carry, xs, gates),
      config.pipeline)
  plgpu.store(agg_a_ref.at[tile.summary_index()], prod)
  plgpu.store(agg_b_ref.at[tile.summary_index()], h)


def _rescan_kernel(*refs, direction, in_names, out_names, length,
                   steps_per_chunk, chunk, config):
  """Pass 2: compose the earlier chunks' maps onto the start state, then
  rescan this chunk from there and write its outputs."""
  n_in = len(in_names)
  inputs = dict(zip(in_names, refs[:n_in]))
  agg_a_ref, agg_b_ref = refs[n_in:n_in + 2]
  outputs = dict(zip(out_names, refs[n_in + 2:]))
  tile = _grid_tile(inputs["a"].shape[2], config.block_d)

  def enter(j, h):
    index = tile.summary_index(j)
    return plgpu.load(agg_a_ref.at[index]) * h + plgpu.load(
        agg_b_ref.at[index])

  h = jax.lax.fori_loop(0, tile.k, enter, start_state(tile, inputs,
                                                      direction))
  h0 = forward_h0(tile, inputs, direction)
  h = _walk_chunk(
      tile, direction, inputs, length, steps_per_chunk, chunk, h,
      lambda steps, xs, gates, h: emit_rows(
          tile, direction, inputs, outputs, steps, xs, gates, h, length, h0),
      config.pipeline)
  is_last = tile.k == pl.num_programs(0) - 1
  emit_final(tile, direction, inputs, outputs, h, is_last, length)


def _run(direction: Direction, inputs: dict, outputs: dict, chunk: int,
         interpret: bool, config: ChunkedScanConfig, name: str):
  """One direction of the scan over all tiles; returns its outputs."""
  batch, length, width = inputs["a"].shape
  splits, steps_per_chunk = split_time(length, batch, width, chunk, config)
  n_dblocks = pl.cdiv(width, config.block_d)
  summary = jax.ShapeDtypeStruct(
      (splits, batch, n_dblocks * config.block_d), jnp.float32)
  static = dict(direction=direction, in_names=tuple(inputs), length=length,
                steps_per_chunk=steps_per_chunk, chunk=chunk, config=config)
  common = dict(grid=(splits, batch, n_dblocks), interpret=interpret,
                compiler_params=plgpu.CompilerParams(
                    num_warps=config.num_warps, num_stages=1))
  chunk_a, chunk_b = pl.pallas_call(
      functools.partial(_summary_kernel, **static),
      out_shape=(summary, summary), name=name + "_summary", **common,
  )(*inputs.values())
  return pl.pallas_call(
      functools.partial(_rescan_kernel, out_names=tuple(outputs), **static),
      out_shape=tuple(outputs.values()), name=name + "_rescan", **common,
  )(*inputs.values(), chunk_a, chunk_b)


def forward_io(x, a, h0):
  """`(inputs, outputs)` of the forward scan's kernels: input arrays and
  output shapes by name."""
  batch, _, width = x.shape
  return (dict(x=x, a=a, h0=h0),
          dict(y=jax.ShapeDtypeStruct(x.shape, x.dtype),
               h_last=jax.ShapeDtypeStruct((batch, width), jnp.float32)))


def backward_io(a, y, h0, dy, dh_last, x_dtype):
  """`(inputs, outputs)` of the backward scan's kernels."""
  batch, _, width = a.shape
  return (dict(a=a, y=y, h0=h0, dy=dy.astype(y.dtype),
               dh_last=dh_last.astype(jnp.float32)),
          dict(dx=jax.ShapeDtypeStruct(a.shape, x_dtype),
               da=jax.ShapeDtypeStruct(a.shape, a.dtype),
               dh0=jax.ShapeDtypeStruct((batch, width), jnp.float32)))


def _scan_forward(x, a, h0, reverse, interpret, config):
  return _run(forward_direction(reverse), *forward_io(x, a, h0),
              config.chunk, interpret, config, "linear_scan_chunked_fwd")


def _scan_backward(a, y, h0, dy, dh_last, x_dtype, reverse, interpret,
                   config):
  return _run(backward_direction(reverse),
              *backward_io(a, y, h0, dy, dh_last, x_dtype),
              config.bwd_chunk, interpret, config, "linear_scan_chunked_bwd")


# `(y, h_last)` of the scan; `h0` float32 `[B, D]`, config a
# `ChunkedScanConfig`. Differentiable in x, a and h0.
chunked_scan = gpu_common.differentiable_scan(_scan_forward, _scan_backward)
