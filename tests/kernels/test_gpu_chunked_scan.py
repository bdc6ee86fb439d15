"""The GPU scan variants beside the walk against the float64 oracle: the
time-parallel two-pass `variant="chunked"`, the one-pass tiled
`variant="tiled"` and the experimental one-pass `variant="lookback"`.

On CPU the kernels run in Pallas interpret mode, where programs run one
after another in grid order; on a GPU backend (`JAX_PLATFORMS=cuda`) the
same tests run the compiled kernels (the look-back ones only with
RG_EXPERIMENTAL_LOOKBACK=1), and the tiled ones test the Triton lowering of
`gpu_tiled_scan.affine_scan` (`tt.scan` with the affine combine).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import gpu_chunked_scan
from pallas_kernels import gpu_lookback_scan
from pallas_kernels import gpu_tiled_scan
from pallas_kernels import reference

INTERPRET = jax.default_backend() != "gpu"


def _inputs(rng, b, t, d, x_dtype, a_dtype, resets):
  x = jnp.asarray(rng.standard_normal((b, t, d)), x_dtype)
  a = rng.uniform(0.3, 1.02, (b, t, d))
  if resets:  # a = 0 at scattered steps: inside chunks and on their edges
    a[rng.uniform(size=(b, t)) < 0.15] = 0.0
  a = jnp.asarray(a, a_dtype)
  h0 = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((b, t, d)), x_dtype)
  dh_last = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  return x, a, h0, dy, dh_last


def _check_against_oracle(b, t, d, x_dtype, a_dtype, reverse, options,
                          resets=True, seed=0, variant="chunked"):
  rng = np.random.default_rng([b, t, d, reverse, seed])
  x, a, h0, dy, dh_last = _inputs(rng, b, t, d, x_dtype, a_dtype, resets)

  def scan(x, a, h0):
    return pallas_kernels.linear_scan(
        x, a, h0, reverse=reverse, impl="pallas_gpu", interpret=INTERPRET,
        variant=variant, **options)

  (y, h_last), vjp = jax.vjp(scan, x, a, h0)
  dx, da, dh0 = vjp((dy, dh_last))
  assert y.dtype == x_dtype and h_last.dtype == jnp.float32
  assert dx.dtype == x_dtype and da.dtype == a_dtype

  want_y, want_h = reference.numpy_scan(x, a, h0, reverse=reverse)
  want_grads = reference.numpy_scan_vjp(x, a, h0, dy, dh_last,
                                        reverse=reverse)
  tol = 1e-2 if jnp.bfloat16 in (x_dtype, a_dtype) else 2e-6
  assert reference.relative_error(y, want_y) < tol
  assert reference.relative_error(h_last, want_h) < tol
  for got, want in zip((dx, da, dh0), want_grads):
    assert reference.relative_error(got, want) < tol


# (B, T, D, x dtype, a dtype, reverse, options). T is prime or below one
# chunk, so chunks end mid-way and the last chunk is partial; D leaves
# partial feature blocks.
CASES = [
    (2, 37, 100, jnp.float32, jnp.float32, False, dict(chunk=4, bwd_chunk=3)),
    (1, 53, 64, jnp.float32, jnp.float32, True, dict(splits=5, chunk=4)),
    (1, 5, 32, jnp.float32, jnp.float32, False, dict(chunk=8, bwd_chunk=8)),
    (1, 70, 40, jnp.float32, jnp.float32, True,
     dict(splits=1, chunk=8, pipeline=False)),
    (3, 29, 96, jnp.bfloat16, jnp.bfloat16, True, dict(chunk=4, bwd_chunk=2)),
    (2, 19, 33, jnp.bfloat16, jnp.float32, False, dict(splits=4, chunk=2)),
    (1, 41, 64, jnp.float32, jnp.bfloat16, False,
     dict(block_d=32, chunk=4, num_warps=1)),
]


@pytest.mark.parametrize("b,t,d,x_dtype,a_dtype,reverse,options", CASES)
def test_two_pass_matches_float64_oracle(b, t, d, x_dtype, a_dtype, reverse,
                                         options):
  _check_against_oracle(b, t, d, x_dtype, a_dtype, reverse, options)


def test_two_pass_long_row_at_batch_one():
  # B=1 with many chunks: the shape the time split exists for.
  _check_against_oracle(1, 517, 64, jnp.float32, jnp.float32, False,
                        dict(splits=16, chunk=8, bwd_chunk=8))


@pytest.mark.parametrize("reverse", [False, True])
def test_look_back_matches_float64_oracle_in_interpret_mode(
    reverse, monkeypatch):
  if not INTERPRET:
    monkeypatch.setenv(gpu_lookback_scan.ENABLE_VARIABLE, "1")
  _check_against_oracle(2, 37, 100, jnp.float32, jnp.float32, reverse,
                        dict(chunk=8, bwd_chunk=4), variant="lookback")
  _check_against_oracle(1, 29, 64, jnp.bfloat16, jnp.bfloat16, reverse,
                        dict(chunk=4, bwd_chunk=3), variant="lookback")
  # One chunk only (T below a chunk): chunk 0 needs no look-back at all.
  _check_against_oracle(1, 3, 32, jnp.float32, jnp.float32, reverse,
                        dict(chunk=8, bwd_chunk=8), variant="lookback")


# (B, T, D, x dtype, a dtype, reverse, options) of the tiled kernels. T
# prime, below one tile, or 1; D below, at and past a block, so that the
# last time tile and the last feature block are shifted back inside the
# array; both directions and dtype mixes; pipelined or not.
TILED_CASES = [
    (2, 37, 100, jnp.float32, jnp.float32, False, dict(block_t=8, block_d=32)),
    (2, 37, 100, jnp.float32, jnp.float32, True,
     dict(block_t=8, bwd_block_t=4, block_d=32)),
    (1, 131, 20, jnp.float32, jnp.float32, True,
     dict(block_t=16, bwd_block_t=16, block_d=8, pipeline=False)),
    (1, 5, 3, jnp.float32, jnp.float32, False, dict(block_t=8, block_d=32)),
    (3, 1, 40, jnp.float32, jnp.float32, True, dict()),
    (3, 29, 96, jnp.bfloat16, jnp.bfloat16, True, dict(block_t=4)),
    (2, 19, 33, jnp.bfloat16, jnp.float32, False, dict(block_t=8)),
    (1, 300, 64, jnp.float32, jnp.bfloat16, False, dict()),  # the defaults
]


@pytest.mark.parametrize("b,t,d,x_dtype,a_dtype,reverse,options",
                         TILED_CASES)
def test_tiled_matches_float64_oracle(b, t, d, x_dtype, a_dtype, reverse,
                                      options):
  _check_against_oracle(b, t, d, x_dtype, a_dtype, reverse, options,
                        variant="tiled")


def test_tiled_tiles_stay_inside_the_arrays():
  # Tiles never exceed T, feature blocks never exceed D (so no index is
  # ever clipped into a duplicate of a stored row).
  walk = gpu_tiled_scan._walk((1, 37, 20), 64,
                              gpu_tiled_scan.TiledScanConfig(block_d=32),
                              backward_in_time=True)
  assert (walk.rows, walk.block_d, walk.n_tiles) == (32, 16, 2)
  assert gpu_tiled_scan.fitted_block_d(1, 32) == 1
  assert gpu_tiled_scan.fitted_block_d(2560, 32) == 32
  with pytest.raises(ValueError, match="block_t must be a power of 2"):
    gpu_tiled_scan.TiledScanConfig(block_t=48)


def test_affine_scan_composes_in_walk_order():
  # The primitive's own rule (interpret mode and XLA): row t maps the state
  # before the walk to the state after row t, from the last row when
  # reverse. Checked against an explicit loop.
  rng = np.random.default_rng(3)
  a = rng.uniform(0.2, 1.0, (9, 4)).astype(np.float32)
  b = rng.standard_normal((9, 4)).astype(np.float32)
  for reverse in (False, True):
    got_a, got_b = jax.jit(functools.partial(
        gpu_tiled_scan.affine_scan, reverse=reverse))(a, b)
    want_a, want_b = np.ones(4), np.zeros(4)
    rows = range(8, -1, -1) if reverse else range(9)
    for t in rows:
      want_a, want_b = a[t] * want_a, a[t] * want_b + b[t]
      np.testing.assert_allclose(got_a[t], want_a, rtol=1e-6)
      np.testing.assert_allclose(got_b[t], want_b, rtol=1e-5, atol=1e-6)


def test_look_back_refuses_to_compile_unless_enabled(monkeypatch):
  monkeypatch.delenv(gpu_lookback_scan.ENABLE_VARIABLE, raising=False)
  x = jnp.ones((1, 8, 32), jnp.float32)
  with pytest.raises(NotImplementedError, match="RG_EXPERIMENTAL_LOOKBACK"):
    pallas_kernels.linear_scan(x, x, impl="pallas_gpu", interpret=False,
                               variant="lookback")


def test_time_split_covers_the_row_in_whole_load_groups():
  config = gpu_chunked_scan.ChunkedScanConfig()
  for length, batch, width in ((16384, 1, 2560), (4096, 8, 2560), (7, 1, 32),
                               (2049, 16, 4096)):
    splits, steps = gpu_chunked_scan.split_time(length, batch, width, 32,
                                                config)
    assert steps % 32 == 0 and splits * steps >= length
    assert (splits - 1) * steps < length  # no empty chunk
    assert splits <= config.max_splits
  # B=1 at the RecurrentGemma width: 40 feature blocks, 26 chunks of 640.
  assert gpu_chunked_scan.split_time(16384, 1, 2560, 32, config) == (26, 640)


def test_options_are_checked():
  with pytest.raises(ValueError, match="power of 2"):
    gpu_chunked_scan.ChunkedScanConfig(block_d=48)
  with pytest.raises(ValueError, match="splits"):
    gpu_chunked_scan.ChunkedScanConfig(splits=-1)
  x = jnp.ones((1, 8, 32), jnp.float32)
  with pytest.raises(TypeError, match="num_stages.*do not apply"):
    pallas_kernels.linear_scan(x, x, impl="pallas_gpu", interpret=True,
                               variant="chunked", num_stages=2)
  with pytest.raises(TypeError, match="splits.*do not apply"):
    pallas_kernels.linear_scan(x, x, impl="pallas_gpu", interpret=True,
                               variant="lookback", splits=2)
  with pytest.raises(TypeError, match="splits.*do not apply.*walk"):
    pallas_kernels.linear_scan(x, x, impl="pallas_gpu", interpret=True,
                               variant="walk", splits=2)
  with pytest.raises(TypeError, match="block_t.*do not apply.*chunked"):
    pallas_kernels.linear_scan(x, x, impl="pallas_gpu", interpret=True,
                               variant="chunked", block_t=64)
  with pytest.raises(ValueError, match="variant"):
    pallas_kernels.linear_scan(x, x, impl="pallas_gpu", interpret=True,
                               variant="fast")
