"""The Pallas TPU scan kernel (`impl="pallas_tpu"`) against the float64 oracle.

Runs on CPU through two interpreters:
- `interpret=True`, Pallas' plain-JAX interpreter (fast), for the sweep over
  shapes, dtypes, directions and tilings;
- TPU interpret mode, `pltpu.InterpretParams(...)`: simulated VMEM and DMAs,
  uninitialised memory filled with NaN, out-of-bounds reads raise, and the
  "parallel" grid dimensions shuffled and split over two simulated cores;
  with `detect_races=True` it also checks the kernels for data races.
"""

import jax
# Private: jax 0.11.2 exposes the race detector's result under no public name.
from jax._src.pallas.mosaic.interpret import interpret_pallas_call
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import reference
from pallas_kernels import tpu_scan

# TPU interpret mode with both megacore halves and a shuffled parallel grid.
TPU_INTERPRET = pltpu.InterpretParams(num_cores_or_threads=2, random_seed=7)


def _inputs(seed, b, t, d, x_dtype, a_dtype, with_h0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, t, d)), x_dtype)
  # Gates in (0, 1), most of them close to 1 (long memory).
  a = jnp.asarray(rng.uniform(0.05, 0.999, (b, t, d)) ** 0.3, a_dtype)
  h0 = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  h0 = h0 if with_h0 else None
  dy = jnp.asarray(rng.standard_normal((b, t, d)), x_dtype)
  dh_last = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  return x, a, h0, dy, dh_last


def _kernel_and_vjp(x, a, h0, dy, dh_last, **scan_kwargs):
  """`(y, h_last, dx, da, dh0)` of the kernel, one jitted forward+backward."""

  @jax.jit
  def run(x, a, h0, dy, dh_last):
    def scan(x, a, h0):
      return pallas_kernels.linear_scan(
          x, a, h0, impl="pallas_tpu", **scan_kwargs
      )

    if h0 is None:
      (y, h_last), vjp = jax.vjp(lambda x, a: scan(x, a, None), x, a)
      return y, h_last, *vjp((dy, dh_last)), None
    (y, h_last), vjp = jax.vjp(scan, x, a, h0)
    return y, h_last, *vjp((dy, dh_last))

  return run(x, a, h0, dy, dh_last)


def _oracle(x, a, h0, dy, dh_last, reverse):
  f64 = lambda z: None if z is None else np.asarray(z, np.float64)
  y, h_last = reference.numpy_scan(f64(x), f64(a), f64(h0), reverse=reverse)
  dx, da, dh0 = reference.numpy_scan_vjp(
      f64(x), f64(a), f64(h0), f64(dy), f64(dh_last), reverse=reverse
  )
  return y, h_last, dx, da, dh0


def _check(got, want, x_dtype, a_dtype, with_h0):
  """Compares `(y, h_last, dx, da, dh0)` with the oracle's."""
  # float32: a few ulps of O(10) values. bfloat16: y, dx (x's dtype) and da
  # (a's dtype) are rounded to 8 mantissa bits; h_last and dh0 are float32
  # states computed from the same rounded inputs, so they stay tight.
  tol = {jnp.float32: 2e-5, jnp.bfloat16: 1.5e-2}
  tols = [tol[x_dtype], 2e-5, tol[x_dtype], tol[a_dtype], 2e-5]
  names = ["y", "h_last", "dx", "da", "dh0"]
  for name, g, w, t in zip(names, got, want, tols):
    if name == "dh0" and not with_h0:
      assert g is None
      continue
    assert g.dtype == {
        "y": x_dtype, "dx": x_dtype, "da": a_dtype
    }.get(name, jnp.float32), name
    g = np.asarray(g, np.float64)
    assert np.all(np.isfinite(g)), name
    scale = np.abs(w).max()
    np.testing.assert_allclose(g, w, rtol=t, atol=t * scale, err_msg=name)


f32, bf16 = jnp.float32, jnp.bfloat16

# (B, T, D, x dtype, a dtype, reverse, h0, kernel options). Prime T and odd D
# exercise the padding; block_t=16 forces several time blocks so the VMEM
# state carry and the backward's neighbouring-row block are exercised.
SCAN_CASES = [
    (2, 37, 5, f32, f32, False, True, dict(block_t=16)),
    (1, 13, 130, f32, f32, True, True, {}),
    (3, 1, 7, f32, f32, False, False, {}),
    (1, 37, 130, f32, f32, True, False, dict(block_t=16, block_d=128)),
    (1, 64, 256, f32, f32, False, True, dict(block_t=32, block_d=128)),
    (2, 29, 96, bf16, bf16, False, True, dict(block_t=16)),
    (1, 11, 160, bf16, f32, True, True, {}),
    (2, 19, 40, f32, bf16, True, True, dict(block_t=16)),
]


@pytest.mark.parametrize(
    "b,t,d,x_dtype,a_dtype,reverse,with_h0,options", SCAN_CASES
)
def test_scan_matches_oracle(
    b, t, d, x_dtype, a_dtype, reverse, with_h0, options
):
  args = _inputs(b * 1000 + t * 10 + d, b, t, d, x_dtype, a_dtype, with_h0)
  got = _kernel_and_vjp(*args, reverse=reverse, interpret=True, **options)
  _check(got, _oracle(*args, reverse), x_dtype, a_dtype, with_h0)


@pytest.mark.parametrize(
    "b,t,d,x_dtype,a_dtype,reverse,options",
    [
        (2, 37, 130, f32, f32, False, dict(block_t=16, block_d=128)),
        (1, 13, 5, bf16, bf16, True, {}),
    ],
)
def test_scan_tpu_interpret_mode(b, t, d, x_dtype, a_dtype, reverse, options):
  args = _inputs(7 + t, b, t, d, x_dtype, a_dtype, True)
  got = _kernel_and_vjp(
      *args, reverse=reverse, interpret=TPU_INTERPRET, **options
  )
  _check(got, _oracle(*args, reverse), x_dtype, a_dtype, True)


def _reset_gates(a, block_t, seed):
  """`a` with zero gates (state resets) at random steps, and on the first,
  second and last row of a time block."""
  t = a.shape[1]
  steps = np.random.default_rng(seed).choice(t, size=max(1, t // 64))
  edges = [k for k in (block_t, block_t + 1, 2 * block_t - 1) if k < t]
  a = np.array(a, np.float32)
  a[:, np.concatenate([steps, edges])] = 0.0
  return jnp.asarray(a, jnp.float32)


# B=1 with a long T: the default tiling must give 2 feature blocks (one per
# TensorCore of a megacore chip) and several time blocks, so the VMEM carry
# crosses many block boundaries; T not a multiple of the time block; zero
# gates inside and at the edges of blocks; both directions.
LONG_CASES = [
    (4133, 256, f32, False, {}),
    (4133, 256, f32, True, {}),
    (4096, 200, f32, False, dict(block_t=64)),
    (4000, 130, f32, True, dict(block_t=48)),
    (4096, 256, bf16, True, {}),
]


@pytest.mark.parametrize("t,d,dtype,reverse,options", LONG_CASES)
def test_batch_one_long_sequence_matches_oracle(t, d, dtype, reverse, options):
  tiling = tpu_scan.choose_tiling(t, d, 20, batch=1, **options)
  if not options:
    assert tiling.num_d_blocks == 2 and tiling.t_pad >= t
  assert tiling.num_t_blocks >= 3
  x, a, h0, dy, dh_last = _inputs(t + d, 1, t, d, dtype, dtype, True)
  a = _reset_gates(a, tiling.block_t, t).astype(dtype)
  args = (x, a, h0, dy, dh_last)
  got = _kernel_and_vjp(*args, reverse=reverse, interpret=True, **options)
  want = _oracle(*args, reverse)
  _check(got, want, dtype, dtype, True)
  if dtype == f32:
    for g, w in zip(got, want):
      assert reference.relative_error(g, w) < 1e-6


def test_batch_one_tpu_interpret_mode_two_cores():
  # Both simulated cores take one of the two feature blocks, in a shuffled
  # order; 9 time blocks each, reset gates on block edges.
  x, a, h0, dy, dh_last = _inputs(11, 1, 520, 256, f32, f32, True)
  args = (x, _reset_gates(a, 64, 11), h0, dy, dh_last)
  got = _kernel_and_vjp(
      *args, reverse=False, interpret=TPU_INTERPRET, block_t=64
  )
  _check(got, _oracle(*args, False), f32, f32, True)


def test_scan_has_no_races():
  args = _inputs(3, 2, 20, 130, f32, bf16, True)
  params = pltpu.InterpretParams(
      detect_races=True, num_cores_or_threads=2, random_seed=1
  )
  got = _kernel_and_vjp(
      *args, reverse=False, interpret=params, block_t=16, block_d=128
  )
  jax.block_until_ready(got)
  assert interpret_pallas_call.races is not None
  assert not interpret_pallas_call.races.races_found
  _check(got, _oracle(*args, False), f32, bf16, True)


def test_impl_dispatches_to_the_tpu_kernel():
  x = jnp.ones((1, 16, 8), f32)
  jaxpr = str(
      jax.make_jaxpr(
          lambda x: pallas_kernels.linear_scan(
              x, 0.5 * x, impl="pallas_tpu", interpret=True
          )
      )(x)
  )
  assert "linear_scan_fwd" in jaxpr


def test_default_tiling_fits_and_avoids_padding():
  # RecurrentGemma-2B width, float32 backward (5 streams of 4 bytes).
  for batch, block_d in [(8, 512), (1, 640)]:
    tiling = tpu_scan.choose_tiling(4096, 2560, 20, batch=batch)
    assert (tiling.block_d, tiling.d_pad, tiling.t_pad) == (block_d, 2560, 4096)
    assert tiling.block_t % tpu_scan.TIME_ALIGN == 0
    assert (
        2 * 20 * tiling.block_t * tiling.block_d <= tpu_scan.VMEM_BUDGET_BYTES
    )
  # T / 16 prime: no good divisor, so T is padded a little, not to 16 rows.
  tiling = tpu_scan.choose_tiling(16 * 251, 128, 20)
  assert tiling.block_t >= 256
  assert tiling.t_pad - 16 * 251 < tiling.t_pad // tiling.block_t * 16
  # Short and narrow inputs pad to one aligned block.
  assert tpu_scan.choose_tiling(13, 5, 20) == tpu_scan.Tiling(16, 128, 16, 128)


@pytest.mark.parametrize(
    "batch,d,block_d,programs",
    [
        # RecurrentGemma-2B at B=1: 5 blocks of 512 would leave one of a
        # megacore chip's two cores recomputing a program; 4 of 640 do not.
        (1, 2560, 640, 4),
        (3, 2560, 640, 12),
        (2, 2560, 512, 10),
        (1, 4096, 512, 8),  # RecurrentGemma-9B: already even.
        (1, 512, 256, 2),  # One block of 512 would idle a core.
        (1, 384, 128, 3),  # 3 programs (one core 2/3 busy) beat 1 (idle).
        (1, 128, 128, 1),  # One lane tile: nothing to split.
    ],
)
def test_feature_block_keeps_both_cores_busy(batch, d, block_d, programs):
  tiling = tpu_scan.choose_tiling(16384, d, 20, batch=batch)
  assert tiling.block_d == block_d
  assert batch * tiling.num_d_blocks == programs
  # No divisor of the width would split the programs more evenly.
  lane_tiles = tiling.d_pad // tpu_scan.LANES
  best = max(
      tpu_scan.core_utilisation(batch * lane_tiles // k)
      for k in range(1, tpu_scan.MAX_BLOCK_D // tpu_scan.LANES + 1)
      if lane_tiles % k == 0
  )
  assert tpu_scan.core_utilisation(programs) == best
  assert 2 * 20 * tiling.block_t * tiling.block_d <= tpu_scan.VMEM_BUDGET_BYTES


def test_narrow_feature_blocks_take_longer_time_blocks():
  # A grid step must still move enough bytes to hide its fixed cost.
  tiling = tpu_scan.choose_tiling(16384, 128, 12, batch=1)
  assert tiling.block_t * tiling.block_d == tpu_scan.MAX_BLOCK_ELEMENTS


def test_tiling_overrides_are_validated():
  tiling = tpu_scan.choose_tiling(100, 300, 20, block_t=32, block_d=256)
  assert tiling == tpu_scan.Tiling(32, 256, 128, 512)
  with pytest.raises(ValueError, match="block_t"):
    tpu_scan.choose_tiling(100, 300, 20, block_t=24)
  with pytest.raises(ValueError, match="block_d"):
    tpu_scan.choose_tiling(100, 300, 20, block_d=200)
  with pytest.raises(ValueError, match="batch"):
    tpu_scan.choose_tiling(100, 300, 20, batch=0)

