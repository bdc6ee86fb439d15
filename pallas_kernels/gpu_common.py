"""Building blocks shared by the Pallas GPU scan kernels (Triton lowering).

`ScanConfig` and `resolve_config` (the walking kernels' tiles, also used by
the fused RG-LRU), masked loads and stores in float32, the time walk that
keeps `chunk` rows of loads in flight, and `differentiable_scan`, which
gives a variant's forward and backward launchers one custom VJP. The
kernels themselves live in `gpu_scan` (walk), `gpu_chunked_scan`,
`gpu_tiled_scan`, `gpu_lookback_scan` and `gpu_rg_lru`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Fewest programs (each one warp) the default config keeps before narrowing
# its feature blocks: about two resident warps per SM of a 132-SM H100/H200.
_MIN_PROGRAMS = 256


@dataclasses.dataclass(frozen=True)
class ScanConfig:
  """Block shapes of the GPU scan kernels; the defaults were the fastest
  measured on an H200 at B=8, T=4096, D=2560 (docs/benchmarks.md).

  Attributes:
    block_d: features per program (a power of 2); 64 gives each thread of
      a one-warp program two features, so 8-byte (float32) or 4-byte
      (bfloat16) loads.
    chunk: time steps whose loads the forward kernel issues together.
    bwd_chunk: the same for the backward kernel, which streams more arrays.
    pipeline: load the next chunk while computing the current one (register
      double buffering), so that loads stay in flight during the FMA chain.
    num_warps: warps per program (`block_d / (32 * num_warps)` features per
      thread).
    num_stages: Triton software-pipelining depth of the time loop.
  """

  block_d: int = 64
  chunk: int = 32
  bwd_chunk: int = 16
  pipeline: bool = True
  num_warps: int = 1
  num_stages: int = 1

  def __post_init__(self):
    if self.block_d < 1 or self.block_d & (self.block_d - 1):
      raise ValueError(f"block_d must be a power of 2, got {self.block_d}")
    if self.chunk < 1 or self.bwd_chunk < 1:
      raise ValueError(
          f"chunks must be positive, got {self.chunk}, {self.bwd_chunk}"
      )


def check_powers_of_2(config, names) -> None:
  """Raises ValueError naming the first of `names` (fields of `config`)
  that is not a power of 2."""
  for name in names:
    value = getattr(config, name)
    if value < 1 or value & (value - 1):
      raise ValueError(f"{name} must be a power of 2, got {value}")


def resolve_config(
    batch: int, width: int, base: ScanConfig, **overrides
) -> ScanConfig:
  """`base` fitted to a `[batch, *, width]` problem, then `overrides`.

  Blocks narrow (down to one warp's 32 lanes) while there are fewer than
  `_MIN_PROGRAMS` programs, and never exceed the next power of 2 of D.
  Overrides are ScanConfig fields; None values are ignored.
  """
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ScanConfig)}
  if unknown:
    raise TypeError(f"unknown kernel options {sorted(unknown)}")
  block_d = base.block_d
  while block_d > 32 and batch * pl.cdiv(width, block_d) < _MIN_PROGRAMS:
    block_d //= 2
  block_d = min(block_d, pl.next_power_of_2(width))
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return dataclasses.replace(
      dataclasses.replace(base, block_d=block_d), **overrides
  )


# ----------------------------------------------------------------------------
# Building blocks shared with the fused RG-LRU kernels (gpu_rg_lru.py).
# ----------------------------------------------------------------------------


def feature_block(width: int, block_d: int):
  """`(cols, mask)` of this program's features: a `pl.ds` and a `[block_d]`
  bool mask, or None when D is a multiple of block_d (no masking needed)."""
  start = pl.program_id(1) * block_d
  cols = pl.ds(start, block_d)
  if width % block_d == 0:
    return cols, None
  return cols, start + jnp.arange(block_d, dtype=jnp.int32) < width


def load(ref, mask, other=0) -> jax.Array:
  """Loads a `[block_d]` row in the ref's dtype (masked lanes read
  `other`).

  Values stay in their storage dtype until used, so that rows in flight
  take as few registers as possible.
  """
  if mask is None:
    return plgpu.load(ref)
  return plgpu.load(ref, mask=mask, other=other)


def f32(value: jax.Array) -> jax.Array:
  return value.astype(jnp.float32)


def store(ref, value: jax.Array, mask) -> None:
  """Stores a float32 `[block_d]` row in the ref's dtype."""
  plgpu.store(ref, value.astype(ref.dtype), mask=mask)


def time_index(step, length: int, backward: bool, clip: bool = False):
  """Time row of walk step `step` (walking from T-1 down when `backward`);
  with `clip`, kept inside [0, T) for steps past either end (whose loads
  and stores are masked)."""
  row = length - 1 - step if backward else step
  return jnp.clip(row, 0, length - 1) if clip else row


def walk_time(
    length: int,
    chunk: int,
    carry: Any,
    load_rows: Callable[[Any, int], Any],
    compute_rows: Callable[[Any, Any, Any], Any],
    *,
    pipeline: bool,
) -> Any:
  """Walks steps [0, length): `carry = compute_rows(first, rows, carry)`.

  `rows = load_rows(first, n)` holds the loaded rows of steps
  [first, first + n). Full chunks of `chunk` rows run in one loop (with
  `pipeline`, chunk k + 1 is loaded before chunk k is computed); the
  `length % chunk` last steps run one row per iteration, so no row needs a
  mask and no load is wasted.
  """
  n_full, tail = divmod(length, chunk)
  if n_full and pipeline:

    def body(k, state):
      carry, rows = state
      upcoming = load_rows((k + 1) * chunk, chunk)
      return compute_rows(k * chunk, rows, carry), upcoming

    # Steps are traced int32 everywhere (ref indexing wants arrays).
    state = (carry, load_rows(jnp.int32(0), chunk))
    if n_full > 1:
      state = jax.lax.fori_loop(0, n_full - 1, body, state)
    carry = compute_rows(jnp.int32((n_full - 1) * chunk), state[1], state[0])
  elif n_full:
    carry = jax.lax.fori_loop(
        0, n_full,
        lambda k, c: compute_rows(k * chunk, load_rows(k * chunk, chunk), c),
        carry,
    )
  if tail:
    carry = jax.lax.fori_loop(
        n_full * chunk, length,
        lambda s, c: compute_rows(s, load_rows(s, 1), c),
        carry,
    )
  return carry


def compiler_params(config: ScanConfig) -> plgpu.CompilerParams:
  return plgpu.CompilerParams(
      num_warps=config.num_warps, num_stages=config.num_stages
  )


def differentiable_scan(scan_forward, scan_backward):
  """`scan(x, a, h0, reverse, interpret, config) -> (y, h_last)` with a
  custom VJP, from the kernel launchers of one variant:
  `scan_forward(x, a, h0, reverse, interpret, config)` and
  `scan_backward(a, y, h0, dy, dh_last, x_dtype, reverse, interpret,
  config) -> (dx, da, dh0)`. The forward output y doubles as the saved
  state h_{t-1} of the backward pass."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
  def scan(x, a, h0, reverse, interpret, config):
    return scan_forward(x, a, h0, reverse, interpret, config)

  def scan_fwd(x, a, h0, reverse, interpret, config):
    y, h_last = scan_forward(x, a, h0, reverse, interpret, config)
    return (y, h_last), (a, y, h0)

  def scan_bwd(reverse, interpret, config, residuals, cotangents):
    a, y, h0 = residuals
    dy, dh_last = cotangents
    return scan_backward(a, y, h0, dy, dh_last, y.dtype, reverse, interpret,
                         config)

  scan.defvjp(scan_fwd, scan_bwd)
  return scan
