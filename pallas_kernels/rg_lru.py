"""The RG-LRU recurrence from gate pre-activations: reference and dispatcher.

Given the block-diagonal gate pre-activations, this computes (per feature d,
time t, all elementwise math in float32):

    i_t   = sigmoid(gate_x_t)                    input gate
    r_t   = sigmoid(gate_a_t)                    recurrence gate
    log a = -8 * r_t * softplus(a_param)
    a_t   = exp(log a),  a_t^2 = exp(2 log a)
    m_t   = sqrt(1 - a_t^2)   (gradient clipped, see `sqrt_bound_derivative`)
    reset_t (document start): a_t = 0 and m_t = 1
    h_t   = a_t * h_{t-1} + m_t * (i_t * x_t)

`rg_lru` runs the unfused math below followed by `linear_scan`; a fused
kernel registered under the same impl names does it in one pass. Inside
`pallas_kernels.scan_sharding(...)` either runs per shard (`sharded.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels import api
from pallas_kernels import sharded

# Largest gradient of sqrt(z) allowed: d sqrt(z)/dz is evaluated at
# max(z, 1 / (4 * MAX_SQRT_GRADIENT^2)), which keeps bfloat16 training finite.
MAX_SQRT_GRADIENT = 1000.0

RgLruFn = Callable[..., tuple[jax.Array, jax.Array]]
# (shape [B, T, D], dtype) -> whether the fused kernel is the faster path.
AppliesFn = Callable[[tuple[int, int, int], jnp.dtype], bool]
_FUSED: dict[str, RgLruFn] = {}
_FUSED_APPLIES: dict[str, AppliesFn] = {}


def register_fused_impl(name: str, fn: RgLruFn,
                        applies: AppliesFn | None = None) -> None:
  """Registers a fused RG-LRU kernel for one of the Pallas impl names.

  `applies(shape, dtype)`, if given, says at which local shapes the fused
  kernel is used; elsewhere `rg_lru` runs the gates in XLA and the impl's
  plain scan, which may then pick a better-suited scan kernel.
  """
  if name not in ("pallas_tpu", "pallas_gpu"):
    raise ValueError(f"fused impl must be pallas_tpu or pallas_gpu, got {name}")
  _FUSED[name] = fn
  if applies is not None:
    _FUSED_APPLIES[name] = applies


def uses_fused_kernel(name: str, shape: tuple[int, int, int], dtype,
                      fused: bool = True, **kernel_options) -> bool:
  """Whether `rg_lru(..., fused=fused)` runs impl `name`'s fused kernel on
  a local `[B, T, D]` block of `dtype`. Explicit kernel options keep the
  fused kernel (they are its tile sizes)."""
  if not (fused and name in _FUSED):
    return False
  applies = _FUSED_APPLIES.get(name)
  return bool(kernel_options) or applies is None or applies(
      tuple(shape), jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(z: jax.Array, max_gradient: float) -> jax.Array:
  """`sqrt(z)` whose derivative is capped at `max_gradient`."""
  del max_gradient
  return jnp.sqrt(z)


def _sqrt_fwd(z, max_gradient):
  del max_gradient
  return jnp.sqrt(z), z


def _sqrt_bwd(max_gradient, z, g):
  z_clipped = jnp.maximum(z, 1.0 / (4.0 * max_gradient**2))
  return (g * 0.5 * jax.lax.rsqrt(z_clipped),)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


def rg_lru_gates(
    gate_x: jax.Array,
    gate_a: jax.Array,
    a_param: jax.Array,
    reset: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Float32 `(a [B, T, D], input_scale [B, T, D])` of the RG-LRU.

  `input_scale = sigmoid(gate_x) * m_t` multiplies x before the scan.
  """
  gate_x = jax.nn.sigmoid(gate_x.astype(jnp.float32))
  gate_a = jax.nn.sigmoid(gate_a.astype(jnp.float32))
  log_a = -8.0 * gate_a * jax.nn.softplus(a_param.astype(jnp.float32))
  a = jnp.exp(log_a)
  a_squared = jnp.exp(2.0 * log_a)
  multiplier = sqrt_bound_derivative(1.0 - a_squared, MAX_SQRT_GRADIENT)
  reset = reset[..., None]
  multiplier = jnp.where(reset, 1.0, multiplier)
  a = jnp.where(reset, 0.0, a)
  return a, gate_x * multiplier


def _scan_operands(x, gate_x, gate_a, a_param, reset):
  """`(normalized x in x.dtype, a float32)`, the unfused scan's operands."""
  a, scale = rg_lru_gates(gate_x, gate_a, a_param, reset)
  return (x.astype(jnp.float32) * scale).astype(x.dtype), a


def rg_lru_gate_product(
    gate_a: jax.Array, a_param: jax.Array, reset: jax.Array
) -> jax.Array:
  """Float32 `[B, D]` product over time of the gates `a_t`.

  Computed in log space, `prod_t a_t = exp(-8 softplus(Lambda) sum_t r_t)`,
  and 0 where a document starts in the span (the reset sets `a_t = 0`).
  """
  rec_gate = jax.nn.sigmoid(gate_a.astype(jnp.float32))
  log_a = -8.0 * jnp.sum(rec_gate, axis=1) * jax.nn.softplus(
      a_param.astype(jnp.float32)
  )
  return jnp.where(jnp.any(reset, axis=1)[:, None], 0.0, jnp.exp(log_a))


def rg_lru_reference(
    x: jax.Array,
    gate_x: jax.Array,
    gate_a: jax.Array,
    a_param: jax.Array,
    reset: jax.Array,
    h0: jax.Array | None = None,
    *,
    impl: str = "auto",
    interpret: bool = False,
    **kernel_options,
) -> tuple[jax.Array, jax.Array]:
  """Unfused RG-LRU: gate math in XLA, then `linear_scan`."""
  normalized_x, a = _scan_operands(x, gate_x, gate_a, a_param, reset)
  return api.linear_scan(
      normalized_x, a, h0, impl=impl, interpret=interpret, **kernel_options
  )


def rg_lru(
    x: jax.Array,
    gate_x: jax.Array,
    gate_a: jax.Array,
    a_param: jax.Array,
    reset: jax.Array,
    h0: jax.Array | None = None,
    *,
    impl: str = "auto",
    fused: bool = True,
    interpret: bool = False,
    **kernel_options,
) -> tuple[jax.Array, jax.Array]:
  """The RG-LRU recurrence.

  Args:
    x: `[B, T, D]` input (after the conv), float32 or bfloat16.
    gate_x: `[B, T, D]` input-gate pre-activation.
    gate_a: `[B, T, D]` recurrence-gate pre-activation.
    a_param: `[D]` the Lambda parameter (a = sigmoid(-Lambda)^(8 r)).
    reset: `[B, T]` bool, True at document starts.
    h0: optional `[B, D]` float32 state.
    impl: scan implementation (see `pallas_kernels.IMPLS`).
    fused: use a fused kernel when one is registered for the resolved impl
      and applies at this shape (`uses_fused_kernel`).
    interpret: run Pallas kernels in interpret mode.
    **kernel_options: block-size overrides forwarded to the Pallas kernel.

  Returns:
    `(y [B, T, D] in x.dtype, h_last [B, D] float32)`.
  """
  name = api.resolve_impl(impl)
  b, t, d = x.shape
  if h0 is None:
    h0 = jnp.zeros((b, d), jnp.float32)
  h0 = jnp.asarray(h0, jnp.float32)

  def local_rg_lru(x, gate_x, gate_a, a_param, reset, h0):
    if uses_fused_kernel(name, x.shape, x.dtype, fused, **kernel_options):
      return _FUSED[name](
          x, gate_x, gate_a, a_param, reset, h0,
          interpret=interpret, **kernel_options,
      )
    normalized_x, a = _scan_operands(x, gate_x, gate_a, a_param, reset)
    return api.run_impl(
        name, normalized_x, a, h0, interpret=interpret, **kernel_options
    )

  layout = sharded.active_layout(b, t, d)
  if layout is None:
    return local_rg_lru(x, gate_x, gate_a, a_param, reset, h0)
  if not (fused and name in _FUSED):
    local_rg_lru = api.remat_under_shard_map(name, local_rg_lru)
  return sharded.rg_lru(
      local_rg_lru, rg_lru_gate_product,
      x, gate_x, gate_a, a_param, reset, h0, layout=layout,
  )
