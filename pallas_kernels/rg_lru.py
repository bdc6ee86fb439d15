"""The RG-LRU recurrence from gate pre-activations: reference and dispatcher.

Given the block-diagonal gate pre-activations, this computes (per feature d,
time t, all elementwise math in float32):

    i_t   = sigmoid(gate_x_t)                    input gate
    r_t   = sigmoid(gate_a_t)                    recurrence gate
    log a = -8 * r_t * softplus(a_param)
    a_t   = exp(log a),  a_t^2 = exp(2 log a)
    m_t   = sqrt(1 - a_t^2)   (gradient clipped: `sqrt_bound_derivative`)
    reset_t (document start): a_t = 0 and m_t = 1
    h_t   = a_t * h_{t-1} + m_t * (i_t * x_t)

`rg_lru` runs the unfused gate math (`reference.rg_lru_gates`, which holds
`sqrt_bound_derivative`) followed by `linear_scan`; the fused kernel of a
Pallas impl (`api.KERNELS`) does it in one pass. Inside
`pallas_kernels.scan_sharding(...)` either runs per shard (`sharded.py`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array
from jaxtyping import Bool
from jaxtyping import Float
from jaxtyping import Float32

from pallas_kernels import api
from pallas_kernels import reference
from pallas_kernels import sharded


def uses_fused_kernel(name: str, shape: tuple[int, int, int], dtype,
                      fused: bool = True, **kernel_options) -> bool:
  """Whether `rg_lru(..., fused=fused)` runs impl `name`'s fused kernel on
  a local `[B, T, D]` block of `dtype`. Explicit kernel options keep the
  fused kernel (they are its tile sizes)."""
  kernels = api.KERNELS.get(name)
  if not (fused and kernels is not None and kernels.rg_lru is not None):
    return False
  return bool(kernel_options) or kernels.fused_kernel_applies(
      tuple(shape), jnp.dtype(dtype))


def _scan_operands(x, gate_x, gate_a, a_param, reset):
  """`(normalized x in x.dtype, a float32)`, the unfused scan's operands."""
  a, scale = reference.rg_lru_gates(gate_x, gate_a, a_param, reset)
  return (x.astype(jnp.float32) * scale).astype(x.dtype), a


def rg_lru_reference(
    x: Float[Array, "B T D"],
    gate_x: Float[Array, "B T D"],
    gate_a: Float[Array, "B T D"],
    a_param: Float[Array, " D"],
    reset: Bool[Array, "B T"],
    h0: Float[Array, "B D"] | None = None,
    *,
    impl: str = "auto",
    interpret: bool = False,
    **kernel_options,
) -> tuple[Float[Array, "B T D"], Float32[Array, "B D"]]:
  """Unfused RG-LRU: gate math in XLA, then `linear_scan`."""
  normalized_x, a = _scan_operands(x, gate_x, gate_a, a_param, reset)
  return api.linear_scan(
      normalized_x, a, h0, impl=impl, interpret=interpret, **kernel_options
  )


def rg_lru(
    x: Float[Array, "B T D"],
    gate_x: Float[Array, "B T D"],
    gate_a: Float[Array, "B T D"],
    a_param: Float[Array, " D"],
    reset: Bool[Array, "B T"],
    h0: Float[Array, "B D"] | None = None,
    *,
    impl: str = "auto",
    fused: bool = True,
    interpret: bool = False,
    **kernel_options,
) -> tuple[Float[Array, "B T D"], Float32[Array, "B D"]]:
  """The RG-LRU recurrence.

  Args:
    x: `[B, T, D]` input (after the conv), float32 or bfloat16.
    gate_x: `[B, T, D]` input-gate pre-activation.
    gate_a: `[B, T, D]` recurrence-gate pre-activation.
    a_param: `[D]` the Lambda parameter (a = sigmoid(-Lambda)^(8 r)).
    reset: `[B, T]` bool, True at document starts.
    h0: optional `[B, D]` float32 state.
    impl: scan implementation (see `pallas_kernels.IMPLS`).
    fused: use the resolved impl's fused kernel, if it has one and it
      applies at this shape (`uses_fused_kernel`).
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

  kernels = api.KERNELS[name]

  def local_rg_lru(x, gate_x, gate_a, a_param, reset, h0):
    if uses_fused_kernel(name, x.shape, x.dtype, fused, **kernel_options):
      return kernels.rg_lru(
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
  if not (fused and kernels.rg_lru is not None):
    local_rg_lru = api.remat_under_shard_map(name, local_rg_lru)
  return sharded.rg_lru(
      local_rg_lru, reference.rg_lru_gate_product,
      x, gate_x, gate_a, a_param, reset, h0, layout=layout,
  )
