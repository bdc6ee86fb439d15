"""The dispatch table of `pallas_kernels.api`: every name runs its kernel.

Tiny shapes on CPU (the Pallas kernels in interpret mode); the kernels' own
tests check them at real shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import api
from pallas_kernels import reference
from recurrentgemma_jax import config

B, T, D = 2, 19, 8


def _scan_inputs():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  a = jnp.asarray(rng.uniform(0.5, 1.0, (B, T, D)), jnp.float32)
  h0 = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
  return x, a, h0


def test_config_takes_the_names_from_the_table():
  assert config.SCAN_IMPLS is pallas_kernels.IMPLS
  assert pallas_kernels.IMPLS == ("auto", *api.KERNELS)


def test_unknown_impl_is_rejected_with_the_allowed_names():
  x, a, h0 = _scan_inputs()
  with pytest.raises(ValueError, match=r"impl must be one of \('auto', "):
    pallas_kernels.linear_scan(x, a, h0, impl="triton")


@pytest.mark.parametrize("impl", pallas_kernels.IMPLS)
def test_every_impl_computes_the_scan(impl):
  x, a, h0 = _scan_inputs()
  fn = lambda x, a, h0: pallas_kernels.linear_scan(
      x, a, h0, reverse=True, impl=impl, interpret=True
  )
  y, h_last = fn(x, a, h0)
  want_y, want_h = reference.numpy_scan(x, a, h0, reverse=True)
  assert reference.relative_error(y, want_y) < 1e-5
  assert reference.relative_error(h_last, want_h) < 1e-5
  # The Pallas impls run a kernel, the pure-JAX ones none.
  jaxpr = str(jax.make_jaxpr(fn)(x, a, h0))
  assert ("pallas_call" in jaxpr) == api.resolve_impl(impl).startswith("pallas")


@pytest.mark.parametrize(
    "impl", [n for n, k in api.KERNELS.items() if k.rg_lru is not None]
)
def test_every_fused_rg_lru_is_dispatched(impl):
  rng = np.random.default_rng(1)
  x, gate_x, gate_a = (
      jnp.asarray(rng.standard_normal((1, T, 32)), jnp.float32)
      for _ in range(3)
  )
  a_param = jnp.asarray(rng.standard_normal(32), jnp.float32)
  reset = jnp.asarray(rng.uniform(size=(1, T)) < 0.2)
  args = (x, gate_x, gate_a, a_param, reset)
  assert api.KERNELS[impl].fused_kernel_applies(x.shape, x.dtype)
  fn = lambda *args: pallas_kernels.rg_lru(*args, impl=impl, interpret=True)
  assert "rg_lru_fwd" in str(jax.make_jaxpr(fn)(*args))
  got = fn(*args)
  want = pallas_kernels.rg_lru_reference(*args, impl="sequential")
  for g, w in zip(got, want):
    assert reference.relative_error(g, w) < 2e-5
