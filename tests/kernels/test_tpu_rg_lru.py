"""The fused RG-LRU TPU kernel against the unfused reference, on CPU.

The reference is `rg_lru_reference` with the sequential scan: gate math in
XLA, then `lax.scan`. Both the outputs and the gradients with respect to x,
both gate pre-activations, Lambda and h0 must agree, including across
document resets in the middle of a sequence and across time blocks.
"""

import chex
import jax
# Private: jax 0.11.2 exposes the race detector's result under no public name.
from jax._src.pallas.mosaic.interpret import interpret_pallas_call
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import reference
from pallas_kernels import rg_lru_reference
from pallas_kernels import tpu_scan

f32, bf16 = jnp.float32, jnp.bfloat16


def _inputs(seed, b, t, d, x_dtype, gate_dtype):
  rng = np.random.default_rng(seed)
  normal = lambda dtype: jnp.asarray(rng.standard_normal((b, t, d)), dtype)
  x, gate_x, gate_a = normal(x_dtype), normal(gate_dtype), normal(gate_dtype)
  # Lambda as initialised (a0^2 uniform in [0.81, 0.998]) and a little wider.
  a0 = np.sqrt(rng.uniform(0.6, 0.999, d))
  a_param = jnp.asarray(-np.log(1.0 / a0 - 1.0), f32)
  # Documents start at t = 0 for some rows and mid-sequence for all.
  reset = rng.uniform(size=(b, t)) < 0.15
  reset[:, 0] = rng.uniform(size=b) < 0.5
  reset[:, t // 2] = True
  h0 = jnp.asarray(rng.standard_normal((b, d)), f32)
  dy = normal(x_dtype)
  dh_last = jnp.asarray(rng.standard_normal((b, d)), f32)
  return (x, gate_x, gate_a, a_param, jnp.asarray(reset), h0), (dy, dh_last)


def _outputs_and_grads(fn, args, cotangents):
  """`(y, h_last)` and the gradients wrt every input but reset."""

  @jax.jit
  def run(args, cotangents):
    x, gate_x, gate_a, a_param, reset, h0 = args
    out, vjp = jax.vjp(
        lambda x, gx, ga, lam, h0: fn(x, gx, ga, lam, reset, h0),
        x, gate_x, gate_a, a_param, h0,
    )
    return out, vjp(cotangents)

  return run(args, cotangents)


def _reference(*args):
  return rg_lru_reference(*args, impl="sequential")


def _fused(interpret, **options):
  def fn(*args):
    return pallas_kernels.rg_lru(
        *args, impl="pallas_tpu", interpret=interpret, **options
    )

  return fn


_NAMES = ("y", "h_last", "dx", "d_gate_x", "d_gate_a", "d_a_param", "dh0")


def _assert_close(got, want, tol):
  """Every output and gradient within `tol` of the reference's max |value|."""
  for name, g, w in zip(_NAMES, jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype, name
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert np.all(np.isfinite(g)), name
    scale = max(np.abs(w).max(), 1e-6)
    chex.assert_trees_all_close(
        g / scale, w / scale, atol=tol, rtol=0, custom_message=name
    )


# (B, T, D, x dtype, gate dtype, kernel options): several time blocks,
# padded T and D, and mixed dtypes. (Several feature blocks: see the TPU
# interpret mode test below.)
CASES = [
    (2, 37, 5, f32, f32, dict(block_t=16)),
    (1, 29, 130, f32, f32, {}),
    (2, 23, 40, bf16, bf16, dict(block_t=16)),
    (1, 17, 24, bf16, f32, {}),
]


@pytest.mark.parametrize("b,t,d,x_dtype,gate_dtype,options", CASES)
def test_fused_matches_reference(b, t, d, x_dtype, gate_dtype, options):
  args, cts = _inputs(b * 100 + t + d, b, t, d, x_dtype, gate_dtype)
  got = _outputs_and_grads(_fused(True, **options), args, cts)
  want = _outputs_and_grads(_reference, args, cts)
  # float32: both accumulate in float32 in different orders. bfloat16: the
  # reference rounds the normalised input to bfloat16 before its scan and
  # the fused kernel does not, and outputs are rounded to bfloat16.
  tol = 2e-5 if x_dtype == gate_dtype == f32 else 2e-2
  _assert_close(got, want, tol)


def _float64_forward(x, gate_x, gate_a, a_param, reset, h0):
  """`(y, h_last)` in float64 NumPy: the gate math, then the scan oracle."""
  f64 = lambda z: np.asarray(z, np.float64)
  sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))
  log_a = -8.0 * sigmoid(f64(gate_a)) * np.logaddexp(0.0, f64(a_param))
  reset = np.asarray(reset)[..., None]
  a = np.where(reset, 0.0, np.exp(log_a))
  multiplier = np.where(reset, 1.0, np.sqrt(1.0 - np.exp(2.0 * log_a)))
  u = f64(x) * sigmoid(f64(gate_x)) * multiplier
  return reference.numpy_scan(u, a, f64(h0))


@pytest.mark.parametrize(
    "t,d,x_dtype,options",
    [
        # Default tiling: 2 feature blocks (one per megacore TensorCore), 7
        # time blocks, T padded.
        (4133, 256, f32, {}),
        (4096, 200, bf16, dict(block_t=64)),  # 64 time blocks.
    ],
)
def test_fused_batch_one_long_sequence(t, d, x_dtype, options):
  tiling = tpu_scan.choose_tiling(t, d, 36, batch=1, **options)
  assert tiling.num_d_blocks == 2 and tiling.num_t_blocks >= 7
  args, cts = _inputs(t + d, 1, t, d, x_dtype, x_dtype)
  got = _outputs_and_grads(_fused(True, **options), args, cts)
  # Forward against the float64 oracle (resets at ~15% of the steps).
  # y is rounded to x's dtype; h_last stays float32.
  y, h_last = _float64_forward(*args)
  y_tol = 1e-6 if x_dtype == f32 else 5e-3
  assert reference.relative_error(got[0][0], y) < y_tol
  assert reference.relative_error(got[0][1], h_last) < 1e-6
  # Gradients (and the forward) against autodiff of the unfused reference.
  want = _outputs_and_grads(_reference, args, cts)
  _assert_close(got, want, 2e-5 if x_dtype == f32 else 2e-2)


def test_fused_tpu_interpret_mode_without_races():
  args, cts = _inputs(5, 2, 21, 130, f32, bf16)
  params = pltpu.InterpretParams(
      detect_races=True, num_cores_or_threads=2, random_seed=3
  )
  got = _outputs_and_grads(
      _fused(params, block_t=16, block_d=128), args, cts
  )
  jax.block_until_ready(got)
  assert not interpret_pallas_call.races.races_found
  _assert_close(got, _outputs_and_grads(_reference, args, cts), 2e-2)


def test_fused_is_dispatched_and_h0_defaults_to_zero():
  args, _ = _inputs(9, 1, 16, 8, f32, f32)
  x, gate_x, gate_a, a_param, reset, _ = args
  zeros = jnp.zeros((1, 8), f32)
  fused = pallas_kernels.rg_lru(
      x, gate_x, gate_a, a_param, reset, impl="pallas_tpu", interpret=True
  )
  want = _reference(x, gate_x, gate_a, a_param, reset, zeros)
  chex.assert_trees_all_close(fused, want, atol=1e-5, rtol=1e-5)
  jaxpr = str(
      jax.make_jaxpr(
          lambda *a: pallas_kernels.rg_lru(
              *a, impl="pallas_tpu", interpret=True
          )
      )(x, gate_x, gate_a, a_param, reset)
  )
  assert "rg_lru_fwd" in jaxpr
