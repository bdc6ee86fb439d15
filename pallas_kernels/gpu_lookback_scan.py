"""Experimental one-pass time-parallel GPU scan: chunks chained by look-back.

Status (H200, jax 0.11.2, 2026-12-01): correct in interpret mode, but on
the GPU the look-back never sees its predecessors' published statuses: every
waiting program exhausts `max_polls` and writes NaN (docs/benchmarks.md).
It is therefore opt-in (`variant="chunked", lookback=True`) and refuses to
run compiled unless `RG_EXPERIMENTAL_LOOKBACK=1` is set. The two-pass
kernels of `gpu_chunked_scan` are the working time-parallel scan.

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

import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import gpu_chunked_scan as chunked

_AGGREGATE, _INCLUSIVE = 1, 2
# The defaults of this variant: rows held in registers (2 per step and
# feature), so narrower tiles than the two-pass kernels'.
DEFAULTS = dict(block_d=32, chunk=64, bwd_chunk=32)
ENABLE_VARIABLE = "RG_EXPERIMENTAL_LOOKBACK"
MAX_POLLS = 1 << 22  # polls of one pending chunk before giving up (NaN)


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
  a predecessor stays silent for MAX_POLLS polls)."""
  block_d = tile.block_d
  first = (tile.k == 0).astype(jnp.int32)

  def pending(state):
    return (jnp.min(state[3]) == 0) & (state[5] < MAX_POLLS)

  def look_back(state):
    j, s_a, s_b, done, h, polls = state
    index = tile.summary_index(j)
    status = plgpu.atomic_add(flags_ref, index,
                              jnp.zeros((block_d,), jnp.float32))
    ready = jnp.min(status) > 0
    inclusive = plgpu.load(incl_ref.at[index], volatile=True)
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
  _publish(tile, flags_ref, [(agg_a_ref, chunk_a), (agg_b_ref, chunk_b)],
           _AGGREGATE)
  h = _state_entering_chunk(tile, chunked.start_state(tile, inputs, direction),
                            flags_ref, agg_a_ref, agg_b_ref, incl_ref)
  _publish(tile, flags_ref, [(incl_ref, chunk_a * h + chunk_b)], _INCLUSIVE)
  h = chunked.emit_rows(tile, direction, inputs, outputs, steps, xs, gates,
                        h, length)
  chunked.emit_final(tile, direction, inputs, outputs, h,
                     tile.k == pl.cdiv(length, chunk) - 1, length)


def run(direction, inputs: dict, outputs: dict, chunk, interpret, config,
        name):
  """One direction of the scan (`gpu_chunked_scan.forward_io` /
  `backward_io` give `inputs` and `outputs`); returns its outputs."""
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
