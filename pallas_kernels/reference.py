"""Pure-JAX and NumPy implementations of the diagonal linear scan.

    h_t = a_t * h_{t-1} + x_t,   h_{-1} = h0

All arrays are `[B, T, D]` (batch, time, features); `h0` and `h_last` are
`[B, D]` float32. Accumulation always happens in float32. These are the
oracles for the Pallas kernels and the portable fallbacks of `linear_scan`.

The RG-LRU gate math (`rg_lru_gates`, `MAX_SQRT_GRADIENT`) lives here too:
the fused kernels reimplement it and import its constants from this module,
which imports no kernel, so the dispatch table in `api.py` can import them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _flip_time(x: jax.Array, reverse: bool) -> jax.Array:
  return jnp.flip(x, axis=1) if reverse else x


def sequential_scan(
    x: jax.Array, a: jax.Array, h0: jax.Array, *, reverse: bool = False
) -> tuple[jax.Array, jax.Array]:
  """`lax.scan` over time; O(T) sequential steps, exact in float32.

  Args:
    x: `[B, T, D]` inputs.
    a: `[B, T, D]` decay gates.
    h0: `[B, D]` float32 initial state.
    reverse: scan from the last time step to the first.

  Returns:
    `(y [B, T, D] float32, h_last [B, D] float32)`.
  """

  def step(h, xa):
    x_t, a_t = xa
    h = a_t.astype(jnp.float32) * h + x_t.astype(jnp.float32)
    return h, h

  xs = (jnp.swapaxes(x, 0, 1), jnp.swapaxes(a, 0, 1))
  h_last, ys = jax.lax.scan(step, h0, xs, reverse=reverse, unroll=8)
  return jnp.swapaxes(ys, 0, 1), h_last


def associative_scan(
    x: jax.Array, a: jax.Array, h0: jax.Array, *, reverse: bool = False
) -> tuple[jax.Array, jax.Array]:
  """`lax.associative_scan` over time: O(log T) depth, O(T log T) work.

  Same contract as `sequential_scan`.
  """
  x = _flip_time(x.astype(jnp.float32), reverse)
  a = _flip_time(a.astype(jnp.float32), reverse)
  # Fold h0 into the first input so that no extra time step is needed.
  x = x.at[:, 0].add(a[:, 0] * h0)

  def combine(left, right):
    a_l, x_l = left
    a_r, x_r = right
    return a_l * a_r, a_r * x_l + x_r

  _, y = jax.lax.associative_scan(combine, (a, x), axis=1)
  y = _flip_time(y, reverse)
  h_last = y[:, 0] if reverse else y[:, -1]
  return y, h_last


def numpy_scan(
    x: np.ndarray,
    a: np.ndarray,
    h0: np.ndarray | None = None,
    *,
    reverse: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Float64 NumPy oracle: `(y [B, T, D], h_last [B, D])` in float64."""
  x = np.asarray(x, np.float64)
  a = np.asarray(a, np.float64)
  b, t, d = x.shape
  h = np.zeros((b, d)) if h0 is None else np.asarray(h0, np.float64).copy()
  y = np.empty_like(x)
  steps = range(t - 1, -1, -1) if reverse else range(t)
  for i in steps:
    h = a[:, i] * h + x[:, i]
    y[:, i] = h
  return y, h


def numpy_scan_vjp(
    x: np.ndarray,
    a: np.ndarray,
    h0: np.ndarray | None,
    dy: np.ndarray,
    dh_last: np.ndarray,
    *,
    reverse: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Float64 gradients `(dx, da, dh0)` of `sum(y*dy) + sum(h_last*dh_last)`.

  The backward of a forward scan is a reverse scan of `dy` with the gates
  shifted by one step: `g_t = dy_t + a_{t+1} g_{t+1}`, `dx_t = g_t`,
  `da_t = g_t * h_{t-1}`, `dh0 = a_0 g_0` (in the scan's own direction).
  """
  x = np.asarray(x, np.float64)
  a = np.asarray(a, np.float64)
  dy = np.asarray(dy, np.float64)
  b, t, d = x.shape
  h0 = np.zeros((b, d)) if h0 is None else np.asarray(h0, np.float64)
  if reverse:
    flip = lambda z: z[:, ::-1]
    dx, da, dh0 = numpy_scan_vjp(
        flip(x), flip(a), h0, flip(dy), dh_last, reverse=False
    )
    return flip(dx), flip(da), dh0
  y, _ = numpy_scan(x, a, h0)
  h_prev = np.concatenate([h0[:, None], y[:, :-1]], axis=1)
  g = np.asarray(dh_last, np.float64).copy()
  dx = np.empty_like(x)
  next_a = np.ones((b, d))
  # g accumulates from the end: g_t = dy_t + a_{t+1} g_{t+1}.
  g = np.zeros((b, d)) + g
  for i in range(t - 1, -1, -1):
    if i == t - 1:
      g = dy[:, i] + g  # dh_last flows into the last state directly.
    else:
      g = dy[:, i] + next_a * g
    dx[:, i] = g
    next_a = a[:, i]
  da = dx * h_prev
  dh0 = a[:, 0] * dx[:, 0]
  return dx, da, dh0


def relative_error(got, want) -> float:
  """`|got - want| / |want|` in float64 (Frobenius norms), or inf when
  `got` holds a non-finite value: how kernels are checked against the
  float64 oracles."""
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  if not np.all(np.isfinite(got)):
    return float("inf")
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ----------------------------------------------------------------------------
# The RG-LRU gate math (see `pallas_kernels/rg_lru.py` for the recurrence).

# Largest gradient of sqrt(z) allowed: d sqrt(z)/dz is evaluated at
# max(z, 1 / (4 * MAX_SQRT_GRADIENT^2)), which keeps bfloat16 training finite.
MAX_SQRT_GRADIENT = 1000.0


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
