"""`nn.linear.pad_small_rows`: Dense products of fewer than 16 rows padded
to 16 (a GEMM on XLA:GPU instead of a reduction fusion) compute the same
thing, in float32, bfloat16 and int8, down to a whole decode step and the
sampler's decode loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.nn import linear
from recurrentgemma_jax.nn import quantized
from recurrentgemma_jax.sampling import Sampler


def _dense(dtype, pad=False):
  dense = linear.Dense(48, 40, axes=("embed", "mlp"), dtype=dtype,
                       param_dtype=dtype, rngs=nnx.Rngs(0))
  return linear.pad_small_rows(dense, pad)


def _dots(module, x):
  """Input shapes of the dot_generals `module(x)` traces, through a split
  and merge as jitted steps see it."""
  graphdef, state = nnx.split(module)
  jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
  return [e.invars[0].aval.shape for e in jaxpr.eqns
          if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (3, 1), (2, 5), (15,)])
def test_padded_product_equals_the_plain_one(dtype, lead):
  plain, padded = _dense(dtype), _dense(dtype, pad=True)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(*lead, 48)), dtype)
  assert _dots(padded, x) == [(16, 48)]
  want, got = plain(x), jax.jit(lambda x: padded(x))(x)
  assert got.shape == want.shape and got.dtype == want.dtype
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(want, np.float32), rtol=tol, atol=tol)
  # A float64 oracle of x @ kernel + bias.
  oracle = (np.asarray(x, np.float64)
            @ np.asarray(padded.kernel[...], np.float64)
            + np.asarray(padded.bias[...], np.float64))
  np.testing.assert_allclose(np.asarray(got, np.float64), oracle,
                             rtol=0, atol=3 * tol * np.abs(oracle).max())


def test_only_small_products_of_padding_modules_are_padded():
  plain, padded = _dense(jnp.float32), _dense(jnp.float32, pad=True)
  assert _dots(plain, jnp.ones((1, 48))) == [(1, 48)]  # off by default
  assert _dots(padded, jnp.ones((16, 48))) == [(16, 48)]
  assert _dots(padded, jnp.ones((2, 9, 48))) == [(2, 9, 48)]
  assert _dots(padded, jnp.ones((1, 48))) == [(16, 48)]
  linear.pad_small_rows(padded, False)  # and back
  assert _dots(padded, jnp.ones((1, 48))) == [(1, 48)]
  assert not linear.pads_small_rows(padded)


def test_int8_dense_keeps_and_applies_the_setting():
  qdense = quantized.QuantizedDense(_dense(jnp.bfloat16, pad=True))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 1, 48)),
                  jnp.bfloat16)
  assert _dots(qdense, x) == [(16, 48)]
  got = qdense(x)
  want = linear.pad_small_rows(qdense, False)(x)
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(want, np.float32), rtol=1e-2,
                             atol=1e-2)


def _model():
  config = rg.GriffinConfig(
      vocab_size=64, width=32, mlp_expanded_width=96, num_heads=2,
      block_types=("recurrent", "attention"), attention_window_size=8)
  return rg.Griffin(config, rngs=nnx.Rngs(3))


def test_a_decode_step_gives_the_same_logits_and_cache():
  model = _model()
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 6)), jnp.int32)
  pos = jnp.tile(jnp.arange(6, dtype=jnp.int32), (2, 1))
  _, cache = model(tokens, pos, return_cache=True)
  step = (jnp.asarray([[5], [7]], jnp.int32), jnp.full((2, 1), 6, jnp.int32))
  want, want_cache = model(*step, cache, return_cache=True)
  linear.pad_small_rows(model)
  got, got_cache = model(*step, cache, return_cache=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(got_cache), jax.tree.leaves(want_cache)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_sampler_decodes_padded_with_the_same_tokens():
  model = _model()
  prompts = [[3, 4, 5], [9, 8]]
  want = Sampler(model).generate(prompts, 12).tokens
  sampler = Sampler(linear.pad_small_rows(model))
  # Its one-token decode model (rebuilt for the decode scan) keeps it.
  decode_model = nnx.merge(sampler.decode_graphdef, sampler.params)
  assert linear.pads_small_rows(decode_model)
  assert sampler.generate(prompts, 12).tokens == want


def test_the_sampler_pads_by_its_option_and_leaves_the_model_alone():
  model = _model()
  prompts = [[3, 4, 5], [9, 8]]
  want = Sampler(model, pad_small_rows=False).generate(prompts, 12).tokens
  sampler = Sampler(model, pad_small_rows=True)
  assert not linear.pads_small_rows(model)  # the caller's model unchanged
  for graphdef in (sampler.graphdef, sampler.decode_graphdef):
    assert linear.pads_small_rows(nnx.merge(graphdef, sampler.params))
  assert sampler.generate(prompts, 12).tokens == want
  # The default: padded where the backend is a GPU, or the model pads.
  assert Sampler(model).pad_small_rows == (jax.default_backend() == "gpu")
  assert Sampler(linear.pad_small_rows(model)).pad_small_rows
  with pytest.raises(ValueError, match="pad_small_rows"):
    Sampler(model, pad_small_rows="yes")


def test_small_rows_padding_restores_each_modules_setting():
  model = _model()
  denses = linear._padding_modules(model)  # pylint: disable=protected-access
  denses[0].pad_small_rows = True  # a mixed setting
  with linear.small_rows_padding(model, False):
    assert not linear.pads_small_rows(model)
  assert [m.pad_small_rows for m in denses] == [True] + [False] * (
      len(denses) - 1)
