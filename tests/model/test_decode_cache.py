"""Decoding with the cache computes exactly what one forward pass computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg


def _model(window, blocks=("recurrent", "attention", "recurrent")):
  config = rg.GriffinConfig(
      vocab_size=61, width=24, mlp_expanded_width=48, num_heads=3,
      lru_width=30, block_types=blocks, attention_window_size=window,
      logits_soft_cap=10.0,
  )
  model = rg.Griffin(config, rngs=nnx.Rngs(3))
  # Perturb every parameter (norm scales and biases start at zero).
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  leaves = [l + 0.05 * jax.random.normal(k, l.shape) for l, k in
            zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def _data(length, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 61, (2, length)).astype(np.int32)
  seg = np.zeros((2, length), np.int32)
  # Row 0: one document; row 1: documents start at 9 and at 17.
  seg[0] = np.arange(length)
  seg[1] = np.concatenate([np.arange(9), np.arange(8), np.arange(length - 17)])
  return tokens, seg


def _forward(model, tokens, seg):
  return nnx.jit(lambda m, t, s: m(t, s))(model, tokens, seg)


def _chunked(model, tokens, seg, chunks, cache_length=None):
  """Runs the sequence through the cache in the given chunk sizes."""
  step = nnx.jit(lambda m, t, s, c: m(t, s, c, return_cache=True))
  cache = model.init_cache(tokens.shape[0], cache_length)
  outs, i = [], 0
  for size in chunks:
    logits, cache = step(model, tokens[:, i:i + size], seg[:, i:i + size],
                         cache)
    outs.append(logits)
    i += size
  assert i == tokens.shape[1]
  return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("window", [4, 7])
def test_token_by_token_equals_forward(window):
  model = _model(window)
  tokens, seg = _data(26)  # several windows long, crosses document starts
  full = _forward(model, tokens, seg)
  decoded, cache = _chunked(model, tokens, seg, [1] * 26)
  np.testing.assert_allclose(decoded, full, atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(cache.num_tokens, [26, 26])
  np.testing.assert_array_equal(cache.doc_id, [1, 3])


def test_chunked_prefill_then_decode_equals_forward():
  model = _model(5)
  tokens, seg = _data(30, seed=1)
  full = _forward(model, tokens, seg)
  chunked, _ = _chunked(model, tokens, seg, [11, 3, 1, 8, 1, 6])
  np.testing.assert_allclose(chunked, full, atol=2e-5, rtol=1e-5)


def test_prefill_cache_continues_like_forward():
  """The cache returned by a cache-less forward continues the sequence."""
  model = _model(6)
  tokens, seg = _data(20, seed=2)
  full = _forward(model, tokens, seg)
  _, cache = nnx.jit(lambda m, t, s: m(t, s, return_cache=True))(
      model, tokens[:, :13], seg[:, :13])
  step = nnx.jit(lambda m, t, s, c: m(t, s, c, return_cache=True))
  for i in range(13, 20):
    logits, cache = step(model, tokens[:, i:i + 1], seg[:, i:i + 1], cache)
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=2e-5, rtol=1e-5)


def test_global_attention_decoding():
  model = _model(None, blocks=("attention", "recurrent"))
  tokens, seg = _data(18, seed=3)
  full = _forward(model, tokens, seg)
  decoded, _ = _chunked(model, tokens, seg, [5] + [1] * 13, cache_length=18)
  np.testing.assert_allclose(decoded, full, atol=2e-5, rtol=1e-5)


def test_cache_size_is_constant():
  model = _model(4)
  cache = model.init_cache(2)
  tokens, seg = _data(20)
  _, after = _chunked(model, tokens, seg, [20])
  shapes = lambda c: [x.shape for x in jax.tree.leaves(c)]
  assert shapes(cache) == shapes(after)
