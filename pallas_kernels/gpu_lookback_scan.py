"""Experimental one-pass time-parallel GPU scan: chunks chained by look-back.

Status (H200, jax 0.11.2, 2026-12-02): correct on the GPU (float64 oracle,
relative errors 5e-8 in float32, forward and gradients, `reverse`, T not a
multiple of the chunk), after chunk 0 stopped publishing its map (status 1)
before its inclusive state: a reader that saw status 1 composed it and
walked back to chunk -1, where no status ever appears (the NaNs of the
first version). Two facts keep it opt-in (`variant="lookback"`,
`RG_EXPERIMENTAL_LOOKBACK=1` when compiled):

* Its results vary in the last bit from run to run: whether a program
  composes an earlier chunk's map or finds its inclusive state depends on
  timing, and the two round differently.
* It is no faster than the two-pass `gpu_chunked_scan` (B=1, T=16384,
  D=2560, float32: 0.241 / 0.675 ms forward / forward+backward against
  0.238 / 0.575; docs/benchmarks.md). Its tiles hold a whole chunk in
  registers, so chunks are short (64 steps) and the look-back walks far.

In interpret mode programs run one after another in grid order, so the
tests there cannot exercise the protocol's races.

The idea (the memory floor in one pass): each program owns one tile,
`chunk` time steps of one batch row and `block_d` features, and

1. claims the next tile index from an atomic counter. Tiles are numbered
   chunk-major, so a program only waits for tiles of earlier chunks, which
   were claimed before it and so belong to programs already running: no
   deadlock, whatever order the GPU starts programs in.
2. loads all rows of its chunk into registers and reduces them to the
   chunk's map `h -> A h + b`; publishes `(A, b)` with status 1.
3. walks back over earlier chunks of its row ("decoupled look-back"),
   composing their published maps until it meets one whose inclusive state
   is published (status 2): the state entering its own chunk.
4. publishes its inclusive state (status 2) and rescans its rows from
   registers, writing the outputs.

Status words are per feature, raised by an atomic max after plain stores
(release) and read by an atomic add of 0 before volatile loads (acquire),
so each thread orders only its own accesses.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import gpu_chunked_scan as chunked
from pallas_kernels import gpu_common

_AGGREGATE, _INCLUSIVE = 1, 2
ENABLE_VARIABLE = "RG_EXPERIMENTAL_LOOKBACK"
MAX_POLLS = 1 << 22  # polls of one pending chunk before giving up (NaN)


@dataclasses.dataclass(frozen=True)
class LookbackScanConfig:
  """Tiles of the look-back kernels.

  Attributes:
    block_d: features per program (a power of 2, at least 32).
    chunk: time steps per forward tile, all held in registers (2 values per
      step and feature).
    bwd_chunk: the same for the backward kernel.
    num_warps: warps per program.
  """

  block_d: int = 32
  chunk: int = 64
  bwd_chunk: int = 32
  num_warps: int = 1

  def __post_init__(self):
    if self.block_d < 32 or self.block_d & (self.block_d - 1):
      raise ValueError(
          f"block_d must be a power of 2 >= 32, got {self.block_d}")
    if self.chunk < 1 or self.bwd_chunk < 1:
      raise ValueError(
          f"chunks must be positive, got {self.chunk}, {self.bwd_chunk}")


def _claim_tile(counter_ref, batch: int, width: int,
                block_d: int) -> chunked.Tile:
  """Claims the next tile in chunk-major order."""
  n_dblocks = pl.cdiv(width, block_d)
  tile = plgpu.atomic_add(counter_ref, (jnp.int32(0),), jnp.int32(1))
  per_chunk = batch * n_dblocks
  k = tile // per_chunk
  rest = tile - k * per_chunk
  b = rest // n_dblocks
  return chunked.Tile(k=k, b=b, start=(rest - b * n_dblocks) * block_d,
                      block_d=block_d, width=width)


def _publish(tile, flags_ref, values, status: int):
  """Stores `(ref, [block_d] float32)` pairs, then raises the tile's status
  words to `status` (a max: idempotent should a lane have several threads;
  float32 words: jax 0.11 lowers vector atomics for floats only)."""
  for ref, value in values:
    plgpu.store(ref.at[tile.summary_index()], value)
  plgpu.atomic_max(flags_ref, tile.summary_index(),
                   jnp.full((tile.block_d,), status, jnp.float32))


def _state_entering_chunk(tile, h_start, flags_ref, agg_a_ref, agg_b_ref,
                          incl_ref):
  """The state entering the tile's chunk, by decoupled look-back (NaN if
  a predecessor stays silent for MAX_POLLS polls). Walking past chunk 0
  (which publishes only its inclusive state, so this should not happen)
  ends at `h_start`."""
  block_d = tile.block_d
  first = (tile.k == 0).astype(jnp.int32)

  def pending(state):
    return (jnp.min(state[3]) == 0) & (state[5] < MAX_POLLS)

  def look_back(state):
    j, s_a, s_b, done, h, polls = state
    before_start = j < 0
    index = tile.summary_index(jnp.maximum(j, 0))
    status = plgpu.atomic_add(flags_ref, index,
                              jnp.zeros((block_d,), jnp.float32))
    # Before chunk 0 the state is h_start, "published" from the outset.
    status = jnp.where(before_start, float(_INCLUSIVE), status)
    ready = jnp.min(status) > 0
    inclusive = jnp.where(before_start, h_start,
                          plgpu.load(incl_ref.at[index], volatile=True))
    chunk_a = plgpu.load(agg_a_ref.at[index], volatile=True)
    chunk_b = plgpu.load(agg_b_ref.at[index], volatile=True)
    open_lane = ready & (done == 0)
    finish = open_lane & (status >= _INCLUSIVE)
    compose = open_lane & (status < _INCLUSIVE)
    h = jnp.where(finish, s_a * inclusive + s_b, h)
    s_b = jnp.where(compose, s_a * chunk_b + s_b, s_b)
    s_a = jnp.where(compose, s_a * chunk_a, s_a)
    done = jnp.where(finish, 1, done)
    j = jnp.where(ready, j - 1, j)
    polls = jnp.where(ready, 0, polls + 1)
    return j, s_a, s_b, done, h, polls

  ones = jnp.ones((block_d,), jnp.float32)
  state = (tile.k - 1, ones, jnp.zeros_like(ones),
           first + jnp.zeros((block_d,), jnp.int32), h_start, jnp.int32(0))
  _, _, _, done, h, _ = jax.lax.while_loop(pending, look_back, state)
  return jnp.where(done > 0, h, jnp.nan)


def _kernel(*refs, direction, in_names, out_names, length, chunk, block_d):
  n_in, n_out = len(in_names), len(out_names)
  inputs = dict(zip(in_names, refs[:n_in]))
  # (refs[n_in:n_in + 2] are the zeroed counter and statuses, aliased to
  # the outputs after the real ones.)
  outputs = dict(zip(out_names, refs[n_in + 2:n_in + 2 + n_out]))
  counter_ref, flags_ref, agg_a_ref, agg_b_ref, incl_ref = refs[
      n_in + 2 + n_out:]
  batch, _, width = inputs["a"].shape
  tile = _claim_tile(counter_ref, batch, width, block_d)
  steps = [tile.k * chunk + i for i in range(chunk)]
  xs, gates = direction.inputs_of(tile, inputs, steps, length)
  ones = jnp.ones((block_d,), jnp.float32)
  chunk_a, chunk_b = chunked.compose((ones, jnp.zeros_like(ones)), xs, gates)
  h_start = chunked.start_state(tile, inputs, direction)

  # Chunk 0 knows its inclusive state at once and publishes only that:
  # a reader that composed its map would have to walk on to chunk -1.
  @pl.when(tile.k > 0)
  def _():
    _publish(tile, flags_ref, [(agg_a_ref, chunk_a), (agg_b_ref, chunk_b)],
             _AGGREGATE)

  h = _state_entering_chunk(tile, h_start, flags_ref, agg_a_ref, agg_b_ref,
                            incl_ref)
  _publish(tile, flags_ref, [(incl_ref, chunk_a * h + chunk_b)], _INCLUSIVE)
  h = chunked.emit_rows(tile, direction, inputs, outputs, steps, xs, gates,
                        h, length, chunked.forward_h0(tile, inputs, direction))
  chunked.emit_final(tile, direction, inputs, outputs, h,
                     tile.k == pl.cdiv(length, chunk) - 1, length)


def _run(direction, inputs: dict, outputs: dict, chunk, interpret, config,
         name):
  """One direction of the scan over all tiles; returns its outputs."""
  if not interpret and os.environ.get(ENABLE_VARIABLE) != "1":
    raise NotImplementedError(
        "the look-back scan (lookback=True) does not yet work on GPUs; set "
        f"{ENABLE_VARIABLE}=1 to run it anyway (see gpu_lookback_scan.py)")
  batch, length, width = inputs["a"].shape
  n_chunks = pl.cdiv(length, chunk)
  n_dblocks = pl.cdiv(width, config.block_d)
  padded = (n_chunks, batch, n_dblocks * config.block_d)
  summary = jax.ShapeDtypeStruct(padded, jnp.float32)
  n_in, n_out = len(inputs), len(outputs)
  results = pl.pallas_call(
      functools.partial(_kernel, direction=direction, in_names=tuple(inputs),
                        out_names=tuple(outputs), length=length, chunk=chunk,
                        block_d=config.block_d),
      out_shape=(*outputs.values(), jax.ShapeDtypeStruct((1,), jnp.int32),
                 summary, summary, summary, summary),
      grid=(n_chunks * batch * n_dblocks,),
      input_output_aliases={n_in: n_out, n_in + 1: n_out + 1},
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=1),
      interpret=interpret, name=name,
  )(*inputs.values(), jnp.zeros((1,), jnp.int32), jnp.zeros(padded,
                                                            jnp.float32))
  return results[:n_out]


def _scan_forward(x, a, h0, reverse, interpret, config):
  return _run(chunked.forward_direction(reverse),
              *chunked.forward_io(x, a, h0), config.chunk, interpret, config,
              "linear_scan_lookback_fwd")


def _scan_backward(a, y, h0, dy, dh_last, x_dtype, reverse, interpret,
                   config):
  return _run(chunked.backward_direction(reverse),
              *chunked.backward_io(a, y, h0, dy, dh_last, x_dtype),
              config.bwd_chunk, interpret, config, "linear_scan_lookback_bwd")


# `(y, h_last)` of the scan; `h0` float32 `[B, D]`, config a
# `LookbackScanConfig`. Differentiable in x, a and h0.
lookback_scan = gpu_common.differentiable_scan(_scan_forward, _scan_backward)
