"""Pallas GPU (Triton lowering) kernels for the diagonal linear scan.

    h_t = a_t * h_{t-1} + x_t,   h_{-1} = h0,   y_t = h_t

Arrays are `[B, T, D]` with D contiguous. The scan is memory-bound (one FMA
per 12 bytes in float32), so the kernels are built around moving bytes:

* One program per (batch row, block of `block_d` features), one warp each.
  Each thread owns a few features and walks all T steps itself, so the
  recurrence needs no communication and every row load of a program is one
  coalesced `block_d`-wide access. B * D / block_d programs (320 for the
  RecurrentGemma-2B width at B=8) spread over all SMs; blocks narrow when
  B * D is small.
* Time advances `chunk` rows per loop iteration: the loads of all rows of a
  chunk are issued before the first FMA, and with `pipeline` the next chunk
  is loaded before the current one is computed, so `chunk` rows per array
  stay in flight per warp (the latency of HBM, not the FMA chain, limits a
  sequential walk; the FMA chain costs about 4 cycles per step).
* The backward pass is one reverse walk that reads `dy`, `a` and the forward
  output `y` (as the state `h_{t-1}`) and writes `dx` and `da` together:
  `g_t = dy_t + a_{t+1} g_{t+1}`, `dx_t = g_t`, `da_t = g_t * h_{t-1}`,
  `dh0 = a_0 g_0` (in the scan's own direction).

Any B, T >= 1 and D work: columns past D are masked, and the T % chunk
last steps run one row per iteration. Accumulation is float32; `y`,
`dx` and `da` are stored in the dtypes of `x`, `x` and `a`.

The Triton lowering of Pallas is deprecated in jax 0.11 (Mosaic GPU is its
successor) but still supported; `interpret=True` runs the same kernels on CPU.
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

from pallas_kernels import api

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


# ----------------------------------------------------------------------------
# Scan kernels.
# ----------------------------------------------------------------------------


def _scan_fwd_kernel(
    x_ref, a_ref, h0_ref, y_ref, h_last_ref, *, reverse: bool,
    config: ScanConfig
):
  """One (batch row, feature block): `y [T, block_d]`, `h_last [block_d]`."""
  _, length, width = x_ref.shape
  b = pl.program_id(0)
  cols, mask = feature_block(width, config.block_d)
  row = lambda s: time_index(s, length, reverse)

  def load_rows(first, n):
    ts = [row(first + i) for i in range(n)]
    return ([load(x_ref.at[b, t, cols], mask) for t in ts],
            [load(a_ref.at[b, t, cols], mask) for t in ts])

  def compute_rows(first, rows, h):
    ys = []
    for x, a in zip(*rows):
      h = f32(a) * h + f32(x)
      ys.append(h)
    for i, y in enumerate(ys):
      store(y_ref.at[b, row(first + i), cols], y, mask)
    return h

  h0 = f32(load(h0_ref.at[b, cols], mask))
  h = walk_time(length, config.chunk, h0, load_rows, compute_rows,
                pipeline=config.pipeline)
  store(h_last_ref.at[b, cols], h, mask)


def _scan_bwd_kernel(
    a_ref, y_ref, h0_ref, dy_ref, dh_last_ref, dx_ref, da_ref, dh0_ref, *,
    reverse: bool, config: ScanConfig
):
  """Reverse walk: `dx, da [T, block_d]` and `dh0 [block_d]` in one pass."""
  _, length, width = a_ref.shape
  b = pl.program_id(0)
  cols, mask = feature_block(width, config.block_d)
  h0 = f32(load(h0_ref.at[b, cols], mask))
  row = lambda s: time_index(s, length, not reverse)
  # The state before step t (in the scan's direction) sits one row back.
  back = 1 if reverse else -1

  def load_rows(first, n):
    ts = [row(first + i) for i in range(n)]
    prev_ts = [jnp.clip(t + back, 0, length - 1) for t in ts]
    return ([load(dy_ref.at[b, t, cols], mask) for t in ts],
            [load(a_ref.at[b, t, cols], mask) for t in ts],
            [load(y_ref.at[b, t, cols], mask) for t in prev_ts])

  def compute_rows(first, rows, carry):
    g, a_next = carry
    dxs, das = [], []
    for i, (dy, a, h_prev) in enumerate(zip(*rows)):
      # The scan's first step (the walk's last) reads h0, not y.
      h_prev = jnp.where(first + i == length - 1, h0, f32(h_prev))
      g = a_next * g + f32(dy)
      dxs.append(g)
      das.append(g * h_prev)
      a_next = f32(a)
    for i, (dx, da) in enumerate(zip(dxs, das)):
      t = row(first + i)
      store(dx_ref.at[b, t, cols], dx, mask)
      store(da_ref.at[b, t, cols], da, mask)
    return g, a_next

  # g starts as dh_last with a "next gate" of 1: g_last = dy_last + dh_last.
  g0 = f32(load(dh_last_ref.at[b, cols], mask))
  ones = jnp.ones((config.block_d,), jnp.float32)
  g, a_first = walk_time(length, config.bwd_chunk, (g0, ones), load_rows,
                         compute_rows, pipeline=config.pipeline)
  store(dh0_ref.at[b, cols], a_first * g, mask)


def _scan_forward(x, a, h0, reverse, interpret, config):
  batch, _, width = x.shape
  kernel = functools.partial(_scan_fwd_kernel, reverse=reverse, config=config)
  return pl.pallas_call(
      kernel,
      out_shape=(
          jax.ShapeDtypeStruct(x.shape, x.dtype),
          jax.ShapeDtypeStruct((batch, width), jnp.float32),
      ),
      grid=(batch, pl.cdiv(width, config.block_d)),
      compiler_params=compiler_params(config),
      interpret=interpret,
      name="linear_scan_fwd",
  )(x, a, h0)


def _scan_backward(a, y, h0, dy, dh_last, x_dtype, reverse, interpret, config):
  batch, _, width = a.shape
  kernel = functools.partial(_scan_bwd_kernel, reverse=reverse, config=config)
  return pl.pallas_call(
      kernel,
      out_shape=(
          jax.ShapeDtypeStruct(a.shape, x_dtype),
          jax.ShapeDtypeStruct(a.shape, a.dtype),
          jax.ShapeDtypeStruct((batch, width), jnp.float32),
      ),
      grid=(batch, pl.cdiv(width, config.block_d)),
      compiler_params=compiler_params(config),
      interpret=interpret,
      name="linear_scan_bwd",
  )(a, y, h0, dy.astype(y.dtype), dh_last.astype(jnp.float32))


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


_scan = differentiable_scan(_scan_forward, _scan_backward)


VARIANTS = ("auto", "walk", "chunked", "lookback")


# `choose_variant`'s thresholds, measured on the H200 (docs/benchmarks.md,
# "Time-parallel kernels at small batch", 2026-12-02): the largest
# `B * ceil(D / 64)` (the walking kernel's programs at its default
# `ScanConfig.block_d`) at which the two-pass
# time-parallel kernel was faster, forward and forward+backward. Float32:
# chunked at 40 and 128, walk at 160, 256 and 320. Bfloat16: chunked at 40,
# 128, 160 and 256, walk at 320 (the walk's 128-byte bfloat16 rows use the
# memory system worse, so it needs more programs to catch up).
CHUNKED_MAX_WALK_PROGRAMS = {"float32": 128, "bfloat16": 256}


def choose_variant(batch: int, length: int, width: int,
                   dtype=jnp.float32) -> str:
  """The kernel `variant="auto"` runs for a `[batch, length, width]` scan.

  "chunked" when the walking kernel would have too few programs to fill
  the GPU (`CHUNKED_MAX_WALK_PROGRAMS`, measured on an H200; on other GPUs
  the same counts are a guess) and T is long enough to split into at least
  two chunks; otherwise "walk". The one-pass "lookback" is never chosen:
  on the H200 it was no faster than "chunked" and its results vary in the
  last bit from run to run.
  """
  # pylint: disable=g-import-not-at-top
  from pallas_kernels import gpu_chunked_scan

  name = jnp.dtype(dtype).name
  limit = CHUNKED_MAX_WALK_PROGRAMS.get(name, CHUNKED_MAX_WALK_PROGRAMS[
      "float32"])
  if batch * pl.cdiv(width, ScanConfig.block_d) > limit:
    return "walk"
  config = gpu_chunked_scan.ChunkedScanConfig()
  splits, _ = gpu_chunked_scan.split_time(length, batch, width,
                                          config.chunk, config)
  return "chunked" if splits >= 2 else "walk"


def pallas_gpu_scan(
    x: jax.Array,
    a: jax.Array,
    h0: jax.Array,
    *,
    reverse: bool = False,
    interpret: bool = False,
    variant: str = "auto",
    block_d: int | None = None,
    chunk: int | None = None,
    bwd_chunk: int | None = None,
    pipeline: bool | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    splits: int | None = None,
    target_programs: int | None = None,
    max_splits: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Differentiable linear scan on GPU (the `pallas_gpu` impl).

  Args:
    x: `[B, T, D]` inputs, float32 or bfloat16.
    a: `[B, T, D]` gates, float32 or bfloat16.
    h0: `[B, D]` float32 initial state.
    reverse: scan from the last time step to the first.
    interpret: run the Pallas kernels in interpret mode (CPU).
    variant: "walk" (one program walks all T steps of its features, this
      module), "chunked" (time split into chunks too, two passes,
      `gpu_chunked_scan`), "lookback" (one pass, experimental,
      `gpu_lookback_scan`) or "auto" (`choose_variant`).
    block_d, chunk, bwd_chunk, num_warps: overrides of the chosen
      variant's config (`ScanConfig`, `ChunkedScanConfig` or
      `LookbackScanConfig`; None keeps the default).
    pipeline: override for "walk" and "chunked".
    num_stages: override for "walk"; splits, target_programs, max_splits:
      for "chunked".

  Returns:
    `(y [B, T, D] in x.dtype, h_last [B, D] float32)`.
  """
  # pylint: disable=g-import-not-at-top
  from pallas_kernels import gpu_chunked_scan
  from pallas_kernels import gpu_lookback_scan

  batch, length, width = x.shape
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  if variant == "auto":
    variant = choose_variant(batch, length, width, x.dtype)
  h0 = h0.astype(jnp.float32)
  given = {k: v for k, v in dict(
      block_d=block_d, chunk=chunk, bwd_chunk=bwd_chunk, num_warps=num_warps,
      pipeline=pipeline, num_stages=num_stages, splits=splits,
      target_programs=target_programs, max_splits=max_splits).items()
            if v is not None}
  if variant != "walk":
    configs = {"chunked": gpu_chunked_scan.ChunkedScanConfig,
               "lookback": gpu_lookback_scan.LookbackScanConfig}
    fields = {f.name for f in dataclasses.fields(configs[variant])}
    if set(given) - fields:
      raise TypeError(f"{sorted(set(given) - fields)} do not apply to "
                      f"variant={variant!r} (its options: {sorted(fields)})")
    config = configs[variant](**given)
    scan = (gpu_chunked_scan.chunked_scan if variant == "chunked"
            else gpu_lookback_scan.lookback_scan)
    return scan(x, a, h0, reverse, interpret, config)
  chunked_only = {k for k in ("splits", "target_programs", "max_splits")
                  if k in given}
  if chunked_only:
    raise TypeError(f"{sorted(chunked_only)} apply to variant='chunked' only")
  config = resolve_config(
      batch, width, ScanConfig(), block_d=block_d,
      chunk=chunk, bwd_chunk=bwd_chunk, pipeline=pipeline,
      num_warps=num_warps, num_stages=num_stages,
  )
  return _scan(x, a, h0, reverse, interpret, config)


api.register_impl("pallas_gpu", pallas_gpu_scan)
