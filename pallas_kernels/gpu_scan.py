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

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import gpu_chunked_scan
from pallas_kernels import gpu_common
from pallas_kernels import gpu_lookback_scan
from pallas_kernels import gpu_tiled_scan


# ----------------------------------------------------------------------------
# Scan kernels.
# ----------------------------------------------------------------------------


def _scan_fwd_kernel(
    x_ref, a_ref, h0_ref, y_ref, h_last_ref, *, reverse: bool,
    config: gpu_common.ScanConfig
):
  """One (batch row, feature block): `y [T, block_d]`, `h_last [block_d]`."""
  _, length, width = x_ref.shape
  b = pl.program_id(0)
  cols, mask = gpu_common.feature_block(width, config.block_d)
  row = lambda s: gpu_common.time_index(s, length, reverse)

  def load_rows(first, n):
    ts = [row(first + i) for i in range(n)]
    return ([gpu_common.load(x_ref.at[b, t, cols], mask) for t in ts],
            [gpu_common.load(a_ref.at[b, t, cols], mask) for t in ts])

  def compute_rows(first, rows, h):
    ys = []
    for x, a in zip(*rows):
      h = gpu_common.f32(a) * h + gpu_common.f32(x)
      ys.append(h)
    for i, y in enumerate(ys):
      gpu_common.store(y_ref.at[b, row(first + i), cols], y, mask)
    return h

  h0 = gpu_common.f32(gpu_common.load(h0_ref.at[b, cols], mask))
  h = gpu_common.walk_time(length, config.chunk, h0, load_rows, compute_rows,
                           pipeline=config.pipeline)
  gpu_common.store(h_last_ref.at[b, cols], h, mask)


def _scan_bwd_kernel(
    a_ref, y_ref, h0_ref, dy_ref, dh_last_ref, dx_ref, da_ref, dh0_ref, *,
    reverse: bool, config: gpu_common.ScanConfig
):
  """Reverse walk: `dx, da [T, block_d]` and `dh0 [block_d]` in one pass."""
  _, length, width = a_ref.shape
  b = pl.program_id(0)
  cols, mask = gpu_common.feature_block(width, config.block_d)
  h0 = gpu_common.f32(gpu_common.load(h0_ref.at[b, cols], mask))
  row = lambda s: gpu_common.time_index(s, length, not reverse)
  # The state before step t (in the scan's direction) sits one row back.
  back = 1 if reverse else -1

  def load_rows(first, n):
    ts = [row(first + i) for i in range(n)]
    prev_ts = [jnp.clip(t + back, 0, length - 1) for t in ts]
    return ([gpu_common.load(dy_ref.at[b, t, cols], mask) for t in ts],
            [gpu_common.load(a_ref.at[b, t, cols], mask) for t in ts],
            [gpu_common.load(y_ref.at[b, t, cols], mask) for t in prev_ts])

  def compute_rows(first, rows, carry):
    g, a_next = carry
    dxs, das = [], []
    for i, (dy, a, h_prev) in enumerate(zip(*rows)):
      # The scan's first step (the walk's last) reads h0, not y.
      h_prev = jnp.where(first + i == length - 1, h0, gpu_common.f32(h_prev))
      g = a_next * g + gpu_common.f32(dy)
      dxs.append(g)
      das.append(g * h_prev)
      a_next = gpu_common.f32(a)
    for i, (dx, da) in enumerate(zip(dxs, das)):
      t = row(first + i)
      gpu_common.store(dx_ref.at[b, t, cols], dx, mask)
      gpu_common.store(da_ref.at[b, t, cols], da, mask)
    return g, a_next

  # g starts as dh_last with a "next gate" of 1: g_last = dy_last + dh_last.
  g0 = gpu_common.f32(gpu_common.load(dh_last_ref.at[b, cols], mask))
  ones = jnp.ones((config.block_d,), jnp.float32)
  g, a_first = gpu_common.walk_time(length, config.bwd_chunk, (g0, ones),
                                    load_rows, compute_rows,
                                    pipeline=config.pipeline)
  gpu_common.store(dh0_ref.at[b, cols], a_first * g, mask)


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
      compiler_params=gpu_common.compiler_params(config),
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
      compiler_params=gpu_common.compiler_params(config),
      interpret=interpret,
      name="linear_scan_bwd",
  )(a, y, h0, dy.astype(y.dtype), dh_last.astype(jnp.float32))


_scan = gpu_common.differentiable_scan(_scan_forward, _scan_backward)

# The variants with their own modules: name -> (config type, scan).
_OTHER_VARIANTS = {
    "chunked": (gpu_chunked_scan.ChunkedScanConfig,
                gpu_chunked_scan.chunked_scan),
    "tiled": (gpu_tiled_scan.TiledScanConfig, gpu_tiled_scan.tiled_scan),
    "lookback": (gpu_lookback_scan.LookbackScanConfig,
                 gpu_lookback_scan.lookback_scan),
}


VARIANTS = ("auto", "walk", "chunked", "tiled", "lookback")


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
  name = jnp.dtype(dtype).name
  limit = CHUNKED_MAX_WALK_PROGRAMS.get(name, CHUNKED_MAX_WALK_PROGRAMS[
      "float32"])
  if batch * pl.cdiv(width, gpu_common.ScanConfig.block_d) > limit:
    return "walk"
  config = gpu_chunked_scan.ChunkedScanConfig()
  splits, _ = gpu_chunked_scan.split_time(length, batch, width,
                                          config.chunk, config)
  return "chunked" if splits >= 2 else "walk"


def linear_scan(
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
    block_t: int | None = None,
    bwd_block_t: int | None = None,
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
      `gpu_chunked_scan`), "tiled" (one pass over `[block_t, block_d]`
      tiles scanned in parallel along time, `gpu_tiled_scan`), "lookback"
      (one pass, experimental, `gpu_lookback_scan`) or "auto"
      (`choose_variant`).
    block_d, chunk, bwd_chunk, num_warps: overrides of the chosen
      variant's config (`ScanConfig`, `ChunkedScanConfig` or
      `LookbackScanConfig`; None keeps the default).
    pipeline: override for "walk" and "chunked".
    num_stages: override for "walk"; splits, target_programs, max_splits:
      for "chunked"; block_t, bwd_block_t: for "tiled".

  Returns:
    `(y [B, T, D] in x.dtype, h_last [B, D] float32)`.
  """
  batch, length, width = x.shape
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  if variant == "auto":
    variant = choose_variant(batch, length, width, x.dtype)
  h0 = h0.astype(jnp.float32)
  given = {k: v for k, v in dict(
      block_d=block_d, chunk=chunk, bwd_chunk=bwd_chunk, num_warps=num_warps,
      pipeline=pipeline, num_stages=num_stages, splits=splits,
      target_programs=target_programs, max_splits=max_splits,
      block_t=block_t, bwd_block_t=bwd_block_t).items()
            if v is not None}
  if variant != "walk":
    config_type, scan = _OTHER_VARIANTS[variant]
    fields = {f.name for f in dataclasses.fields(config_type)}
    if set(given) - fields:
      raise TypeError(f"{sorted(set(given) - fields)} do not apply to "
                      f"variant={variant!r} (its options: {sorted(fields)})")
    return scan(x, a, h0, reverse, interpret, config_type(**given))
  walk_fields = {f.name for f in dataclasses.fields(gpu_common.ScanConfig)}
  if set(given) - walk_fields:
    raise TypeError(f"{sorted(set(given) - walk_fields)} do not apply to "
                    f"variant='walk' (its options: {sorted(walk_fields)})")
  config = gpu_common.resolve_config(
      batch, width, gpu_common.ScanConfig(), block_d=block_d,
      chunk=chunk, bwd_chunk=bwd_chunk, pipeline=pipeline,
      num_warps=num_warps, num_stages=num_stages,
  )
  return _scan(x, a, h0, reverse, interpret, config)
