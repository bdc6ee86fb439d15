"""Pallas GPU (Triton lowering) matrix-vector product for small batches.

    y[m, n] = sum_k x[m, k] w[k, n]  (* scale[n] for int8 weights)

Batch-1 decoding multiplies a few activation rows by every weight of the
model once per token, so it is bound by reading the weights. At that shape
XLA lowers the RecurrentGemma-2B recurrent block's 2560 x 2560 projections
as reduction fusions that read at 0.55 TB/s, an eighth of the H200's copy
bandwidth (docs/benchmarks.md, "Where a batch-1 decode step goes"). This
kernel is built to read `w` once at the copy rate:

* The grid is (feature block of `block_n` outputs, split of K). Each
  program streams its `[K / splits, block_n]` slab of `w` in tiles of
  `block_k` rows, the next tile's loads issued before the current one is
  used, and accumulates `x[m, k] * w[k, n]` elementwise into a float32
  `[block_k, block_n]` register tile per row m: no cross-thread traffic in
  the loop, one reduction over k at the end.
* `splits` partial sums per output (about two programs per SM in all) are
  added in XLA, with the int8 scale, a `[splits, M, N]` float32 array.
* Weights may be float32, bfloat16 or int8 (with a float32 scale per output
  channel, as `recurrentgemma_jax.nn.quantized` stores them): they are
  converted in registers, so int8 reads half the bytes of bfloat16.

Any M <= `MAX_ROWS`, K and N work: rows past K and columns past N are
masked. `interpret=True` runs the same kernel on CPU. Not yet timed on a
GPU, and not yet used by the model (`benchmarks/matvec.py` compares it with
XLA's lowering first).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import gpu_common

# The kernel keeps one [block_k, block_n] float32 accumulator per row.
MAX_ROWS = 4
# Programs `splits=0` aims for: about two per SM of a 132-SM H100/H200.
_TARGET_PROGRAMS = 264


@dataclasses.dataclass(frozen=True)
class MatvecConfig:
  """Tiles of the matrix-vector kernel.

  Attributes:
    block_n: outputs per program (a power of 2).
    block_k: rows of `w` per loop iteration (a power of 2).
    splits: parts K is split into (0: enough for about two programs per
      SM, at most one per `block_k` rows).
    num_warps: warps per program.
    pipeline: load the next tile while accumulating the current one.
  """

  block_n: int = 64
  block_k: int = 128
  splits: int = 0
  num_warps: int = 4
  pipeline: bool = True

  def __post_init__(self):
    gpu_common.check_powers_of_2(self, ("block_n", "block_k"))
    if self.splits < 0 or self.num_warps < 1:
      raise ValueError(f"splits must be >= 0 and num_warps >= 1, got "
                       f"{self.splits}, {self.num_warps}")


def split_k(k: int, n: int, config: MatvecConfig) -> tuple[int, int]:
  """`(splits, rows per split)`: rows a multiple of `block_k`, no split
  empty."""
  n_blocks = pl.cdiv(n, config.block_n)
  tiles = pl.cdiv(k, config.block_k)
  splits = config.splits or pl.cdiv(_TARGET_PROGRAMS, n_blocks)
  splits = max(1, min(splits, tiles))
  rows = config.block_k * pl.cdiv(tiles, splits)
  return pl.cdiv(k, rows), rows


def _kernel(x_ref, w_ref, out_ref, *, rows_per_split: int, config):
  m_rows, k_total = x_ref.shape
  n_total = w_ref.shape[1]
  bk, bn = config.block_k, config.block_n
  n0 = pl.program_id(0) * bn
  k_first = pl.program_id(1) * rows_per_split
  col_ok = n0 + jnp.arange(bn, dtype=jnp.int32) < n_total
  row_offsets = jnp.arange(bk, dtype=jnp.int32)

  def load(i):
    k0 = k_first + i * bk
    row_ok = k0 + row_offsets < k_total
    mask = row_ok[:, None] & col_ok[None, :]
    w = plgpu.load(w_ref.at[pl.ds(k0, bk), pl.ds(n0, bn)], mask=mask,
                   other=0)
    xs = tuple(plgpu.load(x_ref.at[jnp.int32(m), pl.ds(k0, bk)], mask=row_ok, other=0)
               for m in range(m_rows))
    return w, xs

  def accumulate(tiles, accs):
    w, xs = tiles
    w = w.astype(jnp.float32)
    return tuple(acc + x.astype(jnp.float32)[:, None] * w
                 for acc, x in zip(accs, xs))

  n_tiles = rows_per_split // bk
  accs = tuple(jnp.zeros((bk, bn), jnp.float32) for _ in range(m_rows))
  if config.pipeline and n_tiles > 1:

    def body(i, state):
      accs, tiles = state
      upcoming = load(i + 1)
      return accumulate(tiles, accs), upcoming

    accs, tiles = jax.lax.fori_loop(0, n_tiles - 1, body, (accs, load(0)))
    accs = accumulate(tiles, accs)
  else:
    accs = jax.lax.fori_loop(
        0, n_tiles, lambda i, a: accumulate(load(i), a), accs)
  for m, acc in enumerate(accs):
    plgpu.store(out_ref.at[pl.program_id(1), jnp.int32(m), pl.ds(n0, bn)],
                jnp.sum(acc, axis=0), mask=col_ok)


def matvec(x: jax.Array, w: jax.Array, scale: jax.Array | None = None, *,
           interpret: bool = False, config: MatvecConfig = MatvecConfig()
           ) -> jax.Array:
  """`x @ w` (times `scale` per output channel) for a few rows `x`.

  Args:
    x: `[M, K]` activations, M <= MAX_ROWS, any float dtype.
    w: `[K, N]` weights: float32, bfloat16 or int8.
    scale: optional `[N]` (or `[1, N]`) float32 per-output-channel scale.
    interpret: run the Pallas kernel in interpret mode (CPU).
    config: tile shapes.

  Returns:
    `[M, N]` in x's dtype, accumulated in float32.
  """
  if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
    raise ValueError(f"matvec needs x [M, K] and w [K, N], got {x.shape} "
                     f"and {w.shape}")
  m, k = x.shape
  n = w.shape[1]
  if not 1 <= m <= MAX_ROWS:
    raise ValueError(f"matvec takes 1 to {MAX_ROWS} rows, got M={m}")
  if w.dtype not in (jnp.float32, jnp.bfloat16, jnp.int8):
    raise ValueError(f"w must be float32, bfloat16 or int8, got {w.dtype}")
  if scale is not None and scale.size != n:
    raise ValueError(f"scale must have N={n} entries, got {scale.shape}")
  splits, rows = split_k(k, n, config)
  partial = pl.pallas_call(
      functools.partial(_kernel, rows_per_split=rows, config=config),
      out_shape=jax.ShapeDtypeStruct((splits, m, n), jnp.float32),
      grid=(pl.cdiv(n, config.block_n), splits),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=1),
      interpret=interpret,
      name="matvec",
  )(x, w)
  y = jnp.sum(partial, axis=0)
  if scale is not None:
    y = y * jnp.reshape(scale, (n,)).astype(jnp.float32)
  return y.astype(x.dtype)
