"""The GPU (Pallas Triton) scan and fused RG-LRU kernels against oracles.

On CPU the kernels run in Pallas interpret mode; on a GPU backend
(`JAX_PLATFORMS=cuda`) the same tests run the compiled kernels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import gpu_rg_lru
from pallas_kernels import gpu_common
from pallas_kernels import gpu_scan
from pallas_kernels import reference
from pallas_kernels.rg_lru import uses_fused_kernel
from pallas_kernels.rg_lru import rg_lru
from pallas_kernels.rg_lru import rg_lru_reference

INTERPRET = jax.default_backend() != "gpu"


def _tolerance(*dtypes) -> float:
  # float32: rounding of a few hundred FMAs. bfloat16: y (the saved state)
  # and every output are rounded to 8 mantissa bits.
  return 1e-2 if jnp.bfloat16 in dtypes else 2e-6


def _scan_inputs(rng, b, t, d, x_dtype, a_dtype, with_h0):
  x = jnp.asarray(rng.standard_normal((b, t, d)), x_dtype)
  # Gates spread over (0.3, 1.02): long memory, and a few that grow.
  a = jnp.asarray(rng.uniform(0.3, 1.02, (b, t, d)), a_dtype)
  h0 = jnp.asarray(rng.standard_normal((b, d)), jnp.float32) if with_h0 else None
  dy = jnp.asarray(rng.standard_normal((b, t, d)), x_dtype)
  dh_last = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  return x, a, h0, dy, dh_last


# (B, T, D, x dtype, a dtype, reverse, h0, kernel options). T values are
# prime or below the chunk so both the chunked loop and the tail loop run;
# D values leave partial feature blocks.
SCAN_CASES = [
    (2, 37, 100, jnp.float32, jnp.float32, False, True,
     dict(chunk=8, bwd_chunk=4)),
    (1, 13, 33, jnp.float32, jnp.float32, True, True,
     dict(block_d=64, chunk=4, bwd_chunk=3)),
    (3, 16, 64, jnp.float32, jnp.float32, True, False,
     dict(chunk=4, bwd_chunk=8, pipeline=False)),
    (1, 1, 7, jnp.float32, jnp.float32, False, True, dict(chunk=4)),
    (2, 29, 96, jnp.bfloat16, jnp.bfloat16, False, True,
     dict(chunk=8, bwd_chunk=4)),
    (1, 11, 160, jnp.bfloat16, jnp.bfloat16, True, False,
     dict(block_d=128, pipeline=False)),
    (2, 19, 40, jnp.bfloat16, jnp.float32, False, True, dict(chunk=4)),
    (1, 70, 48, jnp.float32, jnp.bfloat16, True, True, {}),
    # The next sweep's configurations (docs/benchmarks.md, "Next sweep"):
    # the walk handed to Triton's software pipelining, and the one-pass
    # tiled kernel with one warp and small tiles.
    (2, 37, 100, jnp.float32, jnp.float32, False, True,
     dict(variant="walk", pipeline=False, num_stages=3, chunk=8)),
    (1, 29, 96, jnp.bfloat16, jnp.bfloat16, True, True,
     dict(variant="walk", pipeline=False, num_stages=4, chunk=16)),
    (1, 70, 40, jnp.float32, jnp.float32, False, True,
     dict(variant="tiled", block_t=32, block_d=8, num_warps=1,
          bwd_block_t=32)),
    (2, 45, 48, jnp.bfloat16, jnp.bfloat16, True, True,
     dict(variant="tiled", block_t=64, block_d=16, num_warps=1)),
]


@pytest.mark.parametrize(
    "b,t,d,x_dtype,a_dtype,reverse,with_h0,options", SCAN_CASES
)
def test_scan_matches_float64_oracle(
    b, t, d, x_dtype, a_dtype, reverse, with_h0, options
):
  rng = np.random.default_rng([b, t, d, reverse])
  x, a, h0, dy, dh_last = _scan_inputs(
      rng, b, t, d, x_dtype, a_dtype, with_h0
  )

  def scan(x, a, h0):
    return pallas_kernels.linear_scan(
        x, a, h0, reverse=reverse, impl="pallas_gpu", interpret=INTERPRET,
        **options,
    )

  h0_arg = jnp.zeros((b, d), jnp.float32) if h0 is None else h0
  (y, h_last), vjp = jax.vjp(scan, x, a, h0_arg)
  dx, da, dh0 = vjp((dy, dh_last))
  assert y.dtype == x_dtype and h_last.dtype == jnp.float32
  assert dx.dtype == x_dtype and da.dtype == a_dtype

  want_y, want_h = reference.numpy_scan(x, a, h0_arg, reverse=reverse)
  want_grads = reference.numpy_scan_vjp(
      x, a, h0_arg, dy, dh_last, reverse=reverse
  )
  tol = _tolerance(x_dtype, a_dtype)
  assert reference.relative_error(y, want_y) < tol
  assert reference.relative_error(h_last, want_h) < tol
  for got, want in zip((dx, da, dh0), want_grads):
    assert reference.relative_error(got, want) < tol


def test_scan_without_h0_under_jit():
  rng = np.random.default_rng(7)
  x, a, _, dy, _ = _scan_inputs(rng, 2, 21, 64, jnp.float32, jnp.float32, False)

  @jax.jit
  def loss_and_grads(x, a):
    def loss(x, a):
      y, _ = pallas_kernels.linear_scan(
          x, a, impl="pallas_gpu", interpret=INTERPRET, chunk=8
      )
      return jnp.sum(y * dy)

    return jax.value_and_grad(loss, argnums=(0, 1))(x, a)

  value, (dx, da) = loss_and_grads(x, a)
  want_y, _ = reference.numpy_scan(x, a)
  want_dx, want_da, _ = reference.numpy_scan_vjp(
      x, a, None, dy, np.zeros((2, 64))
  )
  np.testing.assert_allclose(
      value, np.sum(want_y * np.asarray(dy, np.float64)), rtol=1e-5
  )
  assert reference.relative_error(dx, want_dx) < 2e-6
  assert reference.relative_error(da, want_da) < 2e-6


def _rg_lru_inputs(rng, b, t, d, dtype):
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  x, gate_x, gate_a = normal(b, t, d), normal(b, t, d), normal(b, t, d)
  # Lambda such that a0 = sigmoid(-Lambda) spans [0.3, 0.999]: some units
  # sit where the sqrt gradient clip is active.
  a0 = rng.uniform(0.3, 0.999, d)
  a_param = jnp.asarray(np.log(1.0 / a0 - 1.0), jnp.float32)
  reset = rng.uniform(size=(b, t)) < 0.15
  reset[:, 0] = True
  reset[0, 0] = False  # one row continues from h0
  h0 = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  dy = normal(b, t, d)
  dh_last = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  return x, gate_x, gate_a, a_param, jnp.asarray(reset), h0, dy, dh_last


@pytest.mark.parametrize(
    "b,t,d,dtype,options",
    [
        (2, 23, 100, jnp.float32, dict(chunk=4, bwd_chunk=4)),
        (1, 18, 64, jnp.bfloat16, dict(block_d=64, chunk=4, bwd_chunk=3)),
        (2, 12, 40, jnp.float32, dict(chunk=4, bwd_chunk=4, pipeline=False)),
    ],
)
def test_fused_rg_lru_matches_reference(b, t, d, dtype, options):
  rng = np.random.default_rng([b, t, d])
  x, gx, ga, a_param, reset, h0, dy, dh_last = _rg_lru_inputs(
      rng, b, t, d, dtype
  )

  def fused(x, gx, ga, a_param, h0):
    return gpu_rg_lru.rg_lru(
        x, gx, ga, a_param, reset, h0, interpret=INTERPRET, **options
    )

  def unfused(x, gx, ga, a_param, h0):
    # Float32 gate math and lax.scan: the oracle for both dtypes.
    f32 = lambda z: z.astype(jnp.float32)
    return rg_lru_reference(
        f32(x), f32(gx), f32(ga), a_param, reset, h0, impl="sequential"
    )

  args = (x, gx, ga, a_param, h0)
  got, got_vjp = jax.vjp(fused, *args)
  want, want_vjp = jax.vjp(unfused, *args)
  got_grads = got_vjp((dy, dh_last))
  want_grads = want_vjp((dy.astype(jnp.float32), dh_last))
  assert got[0].dtype == dtype
  assert [g.dtype for g in got_grads] == [a.dtype for a in args]
  tol = 2e-5 if dtype == jnp.float32 else 1e-2
  for g, w in zip(got, want):
    assert reference.relative_error(g, w) < tol
  for g, w in zip(got_grads, want_grads):
    assert reference.relative_error(g, w) < tol


def test_rg_lru_dispatches_to_fused_kernel():
  rng = np.random.default_rng(3)
  x, gx, ga, a_param, reset, _, _, _ = _rg_lru_inputs(
      rng, 1, 9, 32, jnp.float32
  )
  y, h_last = rg_lru(
      x, gx, ga, a_param, reset, impl="pallas_gpu", interpret=INTERPRET
  )
  want_y, want_h = rg_lru_reference(
      x, gx, ga, a_param, reset, impl="sequential"
  )
  assert reference.relative_error(y, want_y) < 2e-5
  assert reference.relative_error(h_last, want_h) < 2e-5


def test_auto_picks_pallas_gpu_only_on_gpu():
  assert pallas_kernels.resolve_impl("auto", backend="gpu") == "pallas_gpu"
  assert pallas_kernels.resolve_impl("auto", backend="cuda") == "pallas_gpu"
  assert pallas_kernels.resolve_impl("auto", backend="cpu") == "associative"


def test_config_defaults_fit_the_problem_and_respect_overrides():
  default = gpu_common.ScanConfig()
  # 8 * 2560 / 64 = 320 one-warp programs: enough to fill 132 SMs.
  assert gpu_common.resolve_config(8, 2560, default).block_d == 64
  assert gpu_common.resolve_config(1, 2560, default).block_d == 32
  assert gpu_common.resolve_config(1, 7, default).block_d == 8
  config = gpu_common.resolve_config(
      8, 2560, default, chunk=16, block_d=None, pipeline=False
  )
  assert (config.chunk, config.block_d, config.pipeline) == (16, 64, False)
  with pytest.raises(TypeError, match="unknown kernel options"):
    gpu_common.resolve_config(8, 2560, default, block_t=16)
  with pytest.raises(ValueError, match="power of 2"):
    gpu_common.ScanConfig(block_d=48)


@pytest.mark.parametrize("batch,length,width,dtype,want", [
    # The measured points behind CHUNKED_MAX_WALK_PROGRAMS (H200).
    (1, 16384, 2560, jnp.float32, "chunked"),
    (2, 8192, 4096, jnp.float32, "chunked"),
    (4, 4096, 2560, jnp.float32, "walk"),
    (4, 4096, 2560, jnp.bfloat16, "chunked"),
    (4, 4096, 4096, jnp.bfloat16, "chunked"),
    (8, 4096, 2560, jnp.bfloat16, "walk"),
    (16, 2048, 4096, jnp.float32, "walk"),
    # Too short to split into two chunks: the walk, whatever the batch.
    (1, 20, 2560, jnp.float32, "walk"),
])
def test_auto_variant_follows_the_measured_thresholds(batch, length, width,
                                                      dtype, want):
  assert gpu_scan.choose_variant(batch, length, width, dtype) == want


def test_auto_variant_runs_the_chosen_kernel():
  # B=1, D=64: one walking program, so "auto" runs the two-pass kernels;
  # their result must equal the oracle like any other variant's.
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.standard_normal((1, 300, 64)), jnp.float32)
  a = jnp.asarray(rng.uniform(0.5, 1.0, (1, 300, 64)), jnp.float32)
  h0 = jnp.asarray(rng.standard_normal((1, 64)), jnp.float32)
  assert gpu_scan.choose_variant(1, 300, 64) == "chunked"
  y, h = gpu_scan.linear_scan(x, a, h0, interpret=INTERPRET)
  want_y, want_h = reference.numpy_scan(x, a, h0)
  assert reference.relative_error(y, want_y) < 1e-5
  assert reference.relative_error(h, want_h) < 1e-5


def test_fused_rg_lru_only_where_it_was_faster():
  uses = uses_fused_kernel
  assert uses("pallas_gpu", (8, 4096, 2560), jnp.float32)
  assert not uses("pallas_gpu", (8, 4096, 2560), jnp.bfloat16)
  assert not uses("pallas_gpu", (1, 16384, 2560), jnp.float32)
  assert not uses("pallas_gpu", (8, 4096, 2560), jnp.float32, fused=False)
  # Explicit tile sizes are the fused kernel's: they keep it.
  assert uses("pallas_gpu", (1, 16384, 2560), jnp.bfloat16, block_d=32)


def test_rg_lru_where_the_fused_kernel_declines_matches_reference():
  rng = np.random.default_rng(4)
  x, gx, ga, a_param, reset, _, _, _ = _rg_lru_inputs(
      rng, 1, 300, 64, jnp.bfloat16)
  assert not uses_fused_kernel("pallas_gpu", x.shape, x.dtype)
  y, h_last = rg_lru(x, gx, ga, a_param, reset, impl="pallas_gpu",
                     interpret=INTERPRET)
  want_y, want_h = rg_lru_reference(x, gx, ga, a_param, reset,
                                    impl="sequential")
  assert reference.relative_error(y, want_y) < 1e-2
  assert reference.relative_error(h_last, want_h) < 1e-5
