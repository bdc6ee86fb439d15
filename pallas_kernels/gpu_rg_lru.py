"""Fused RG-LRU on GPU: gate math and the scan in one Pallas (Triton) pass.

Per feature d and step t (float32 arithmetic, see `rg_lru.py`):

    i_t = sigmoid(gate_x_t),  r_t = sigmoid(gate_a_t)
    a_t = exp(c * r_t)  with  c = -8 * softplus(a_param)   (per feature)
    m_t = sqrt(1 - a_t^2)
    a_t = 0, m_t = 1 where reset_t (document start)
    h_t = a_t h_{t-1} + m_t i_t x_t

The forward pass reads x, gate_x and gate_a once and writes y; the unfused
path also writes and re-reads the float32 gate `a` and the normalized input.
The backward pass is one reverse walk that recomputes the gates, reads
`dy`, `x`, both gate pre-activations and `y` (as `h_{t-1}`), and writes
`dx`, `d gate_x` and `d gate_a`; `dc` is accumulated in registers over T and
reduced over B outside the kernel, and autodiff takes it back to `a_param`
through the softplus.

Unlike `rg_lru_reference`, the normalized input `m_t i_t x_t` stays float32
instead of being rounded to x's dtype before the scan.

Status (H200, B=8, T=4096, D=2560, docs/benchmarks.md): forward+backward
1.2x faster than the unfused path in float32 and 0.9x in bfloat16; the
per-row gate math, not memory, bounds it. Pass `fused=False` to `rg_lru`
where the unfused path is faster.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from pallas_kernels import gpu_common
from pallas_kernels import gpu_scan
from pallas_kernels import reference

# The sqrt's gradient is evaluated at max(1 - a^2, _MIN_SQRT_ARG).
_MIN_SQRT_ARG = 1.0 / (4.0 * reference.MAX_SQRT_GRADIENT**2)
_LOG2_E = 1.4426950408889634

# One feature per thread (as many threads as possible for the per-row gate
# math; measured faster than two), and shorter chunks than the scan: each row
# streams 3 (forward) or 5 (backward) arrays.
DEFAULT_CONFIG = gpu_common.ScanConfig(block_d=32, chunk=16, bwd_chunk=8)


def _sigmoid(z):
  # exp2 maps to one MUFU instruction; the libdevice exp that
  # jax.nn.sigmoid lowers to is several.
  return 1.0 / (1.0 + jnp.exp2(z * -_LOG2_E))


def _gates(gate_x, gate_a, c, reset):
  """Float32 `(i, r, a, z, a_eff, m_eff)` of one `[block_d]` row.

  `c` is this block's `-8 softplus(a_param)`; `z = 1 - a^2`; `a_eff` and
  `m_eff` are a and sqrt(z) after the document start (`reset`, a scalar
  bool) is applied.
  """
  i = _sigmoid(gate_x)
  r = _sigmoid(gate_a)
  a = jnp.exp2((c * _LOG2_E) * r)
  z = 1.0 - a * a
  # sqrt(z) as z * rsqrt(z): one MUFU op instead of an IEEE square root;
  # the floor keeps z = 0 at 0.
  m = z * jax.lax.rsqrt(jnp.maximum(z, 1e-30))
  a_eff = jnp.where(reset, 0.0, a)
  m_eff = jnp.where(reset, 1.0, m)
  return i, r, a, z, a_eff, m_eff


def _rg_lru_fwd_kernel(
    x_ref, gx_ref, ga_ref, c_ref, reset_ref, h0_ref, y_ref, h_last_ref, *,
    config: gpu_common.ScanConfig
):
  """One (batch row, feature block): `y [T, block_d]`, `h_last [block_d]`."""
  _, length, width = x_ref.shape
  b = pl.program_id(0)
  cols, mask = gpu_common.feature_block(width, config.block_d)
  load, f32 = gpu_common.load, gpu_common.f32
  c = f32(load(c_ref.at[cols], mask))

  def load_rows(first, n):
    ts = [first + i for i in range(n)]
    return ([load(x_ref.at[b, t, cols], mask) for t in ts],
            [load(gx_ref.at[b, t, cols], mask) for t in ts],
            [load(ga_ref.at[b, t, cols], mask) for t in ts],
            [reset_ref[b, t] for t in ts])

  def compute_rows(first, rows, h):
    ys = []
    for x, gx, ga, reset in zip(*rows):
      i, _, _, _, a, m = _gates(f32(gx), f32(ga), c, reset != 0)
      h = a * h + m * i * f32(x)
      ys.append(h)
    for i, y in enumerate(ys):
      gpu_common.store(y_ref.at[b, first + i, cols], y, mask)
    return h

  h0 = f32(load(h0_ref.at[b, cols], mask))
  h = gpu_common.walk_time(length, config.chunk, h0, load_rows, compute_rows,
                         pipeline=config.pipeline)
  gpu_common.store(h_last_ref.at[b, cols], h, mask)


def _rg_lru_bwd_kernel(
    x_ref, gx_ref, ga_ref, c_ref, reset_ref, h0_ref, y_ref, dy_ref,
    dh_last_ref, dx_ref, dgx_ref, dga_ref, dc_ref, dh0_ref, *,
    config: gpu_common.ScanConfig
):
  """Reverse walk: `dx, dgx, dga [T, block_d]`, `dc, dh0 [block_d]`."""
  _, length, width = x_ref.shape
  b = pl.program_id(0)
  cols, mask = gpu_common.feature_block(width, config.block_d)
  load, f32 = gpu_common.load, gpu_common.f32
  c = f32(load(c_ref.at[cols], mask))
  h0 = f32(load(h0_ref.at[b, cols], mask))

  def load_rows(first, n):
    ts = [length - 1 - (first + i) for i in range(n)]
    prev_ts = [jnp.maximum(t - 1, 0) for t in ts]
    return ([load(dy_ref.at[b, t, cols], mask) for t in ts],
            [load(x_ref.at[b, t, cols], mask) for t in ts],
            [load(gx_ref.at[b, t, cols], mask) for t in ts],
            [load(ga_ref.at[b, t, cols], mask) for t in ts],
            [load(y_ref.at[b, t, cols], mask) for t in prev_ts],
            [reset_ref[b, t] for t in ts])

  def compute_rows(first, rows, carry):
    g, a_next, dc = carry
    outs = []
    for k, (dy, x, gx, ga, h_prev, reset) in enumerate(zip(*rows)):
      t = length - 1 - (first + k)
      x, reset = f32(x), reset != 0
      h_prev = jnp.where(t == 0, h0, f32(h_prev))
      i, r, a, z, a_eff, m_eff = _gates(f32(gx), f32(ga), c, reset)
      g = a_next * g + f32(dy)
      gx_in = g * x
      dx = g * i * m_eff
      dgx = gx_in * m_eff * i * (1.0 - i)
      # d/dz of the clipped sqrt, then z = 1 - a^2 and a = exp(c r).
      dz = 0.5 * gx_in * i * jax.lax.rsqrt(jnp.maximum(z, _MIN_SQRT_ARG))
      dlog_a = a * (g * h_prev - 2.0 * a * dz)
      # At a document start a and m are constants: no gradient to the gate.
      dlog_a = jnp.where(reset, 0.0, dlog_a)
      dga = dlog_a * c * r * (1.0 - r)
      dc = dc + dlog_a * r
      a_next = a_eff
      outs.append((dx, dgx, dga))
    for k, (dx, dgx, dga) in enumerate(outs):
      t = length - 1 - (first + k)
      gpu_common.store(dx_ref.at[b, t, cols], dx, mask)
      gpu_common.store(dgx_ref.at[b, t, cols], dgx, mask)
      gpu_common.store(dga_ref.at[b, t, cols], dga, mask)
    return g, a_next, dc

  zeros = jnp.zeros((config.block_d,), jnp.float32)
  g0 = f32(load(dh_last_ref.at[b, cols], mask))
  g, a_first, dc = gpu_common.walk_time(
      length, config.bwd_chunk, (g0, zeros + 1.0, zeros), load_rows,
      compute_rows, pipeline=config.pipeline,
  )
  gpu_common.store(dc_ref.at[b, cols], dc, mask)
  gpu_common.store(dh0_ref.at[b, cols], a_first * g, mask)


def _fused_forward(x, gate_x, gate_a, c, reset, h0, interpret, config):
  batch, _, width = x.shape
  kernel = functools.partial(_rg_lru_fwd_kernel, config=config)
  return pl.pallas_call(
      kernel,
      out_shape=(
          jax.ShapeDtypeStruct(x.shape, x.dtype),
          jax.ShapeDtypeStruct((batch, width), jnp.float32),
      ),
      grid=(batch, pl.cdiv(width, config.block_d)),
      compiler_params=gpu_common.compiler_params(config),
      interpret=interpret,
      name="rg_lru_fwd",
  )(x, gate_x, gate_a, c, reset, h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _fused(x, gate_x, gate_a, c, reset, h0, interpret, config):
  return _fused_forward(x, gate_x, gate_a, c, reset, h0, interpret, config)


def _fused_fwd(x, gate_x, gate_a, c, reset, h0, interpret, config):
  y, h_last = _fused_forward(x, gate_x, gate_a, c, reset, h0, interpret,
                             config)
  return (y, h_last), (x, gate_x, gate_a, c, reset, h0, y)


def _fused_bwd(interpret, config, residuals, cotangents):
  x, gate_x, gate_a, c, reset, h0, y = residuals
  dy, dh_last = cotangents
  batch, _, width = x.shape
  kernel = functools.partial(_rg_lru_bwd_kernel, config=config)
  dx, dgx, dga, dc, dh0 = pl.pallas_call(
      kernel,
      out_shape=(
          jax.ShapeDtypeStruct(x.shape, x.dtype),
          jax.ShapeDtypeStruct(x.shape, gate_x.dtype),
          jax.ShapeDtypeStruct(x.shape, gate_a.dtype),
          jax.ShapeDtypeStruct((batch, width), jnp.float32),
          jax.ShapeDtypeStruct((batch, width), jnp.float32),
      ),
      grid=(batch, pl.cdiv(width, config.block_d)),
      compiler_params=gpu_common.compiler_params(config),
      interpret=interpret,
      name="rg_lru_bwd",
  )(x, gate_x, gate_a, c, reset, h0, y, dy.astype(y.dtype),
    dh_last.astype(jnp.float32))
  # reset is an integer input: its cotangent is the float0 zero.
  dreset = np.zeros(reset.shape, jax.dtypes.float0)
  return dx, dgx, dga, dc.sum(axis=0), dreset, dh0


_fused.defvjp(_fused_fwd, _fused_bwd)


def rg_lru(
    x: jax.Array,
    gate_x: jax.Array,
    gate_a: jax.Array,
    a_param: jax.Array,
    reset: jax.Array,
    h0: jax.Array | None = None,
    *,
    interpret: bool = False,
    block_d: int | None = None,
    chunk: int | None = None,
    bwd_chunk: int | None = None,
    pipeline: bool | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Differentiable fused RG-LRU (the `pallas_gpu` fused impl).

  Args:
    x: `[B, T, D]` input, float32 or bfloat16.
    gate_x: `[B, T, D]` input-gate pre-activation.
    gate_a: `[B, T, D]` recurrence-gate pre-activation.
    a_param: `[D]` the Lambda parameter.
    reset: `[B, T]` bool, True at document starts.
    h0: optional `[B, D]` float32 state (zeros when None).
    interpret: run the Pallas kernels in interpret mode (CPU).
    block_d, chunk, bwd_chunk, pipeline, num_warps, num_stages:
      `gpu_common.ScanConfig` overrides (None keeps `DEFAULT_CONFIG`).

  Returns:
    `(y [B, T, D] in x.dtype, h_last [B, D] float32)`.
  """
  batch, _, width = x.shape
  config = gpu_common.resolve_config(
      batch, width, DEFAULT_CONFIG, block_d=block_d, chunk=chunk,
      bwd_chunk=bwd_chunk, pipeline=pipeline, num_warps=num_warps,
      num_stages=num_stages,
  )
  if h0 is None:
    h0 = jnp.zeros((batch, width), jnp.float32)
  # Per-feature log-decay scale; autodiff carries dc back through softplus.
  c = -8.0 * jax.nn.softplus(a_param.astype(jnp.float32))
  return _fused(x, gate_x, gate_a, c, reset.astype(jnp.int32),
                h0.astype(jnp.float32), interpret, config)


def fused_kernel_applies(shape: tuple[int, int, int], dtype) -> bool:
  """Where the fused kernel is the faster RG-LRU on the GPU.

  The fused kernel walks time like `gpu_scan`'s "walk" variant, so where
  `choose_variant` picks the time-parallel scan (too few programs to fill
  the GPU), the gates run in XLA and the scan runs time-parallel instead.
  In bfloat16 the fused kernel also lost at B=8, T=4096, D=2560 on the H200
  (2.00 against 1.59 ms forward+backward, docs/benchmarks.md); in float32
  it won there (1.85 against 2.01 ms). So: float32 at shapes the walk
  fills.
  """
  batch, length, width = shape
  return (jnp.dtype(dtype) == jnp.float32 and gpu_scan.choose_variant(
      batch, length, width, dtype) == "walk")
