"""Temperature, top-k, top-p and greedy choice on hand-made logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrentgemma_jax.sampling import logits as L


def _draw(logits, mode, n=4000, temperature=1.0, top_p=1.0, seed=0):
  """`n` samples of one row of logits -> counts per token."""
  logits = jnp.broadcast_to(jnp.asarray(logits, jnp.float32),
                            (n, len(logits)))
  keys = jax.random.split(jax.random.key(seed), n)
  sample = jax.jit(L.sample_tokens, static_argnums=2)
  tokens = np.asarray(sample(logits, keys, mode, temperature, top_p))
  return np.bincount(tokens, minlength=logits.shape[1])


LOGITS = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))


def test_greedy_is_argmax():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 33)).astype(np.float32)
  got = L.sample_tokens(jnp.asarray(logits), None, L.SamplingMode())
  np.testing.assert_array_equal(got, logits.argmax(-1))
  assert got.dtype == jnp.int32


def test_temperature_one_matches_softmax():
  counts = _draw(LOGITS, L.SamplingMode(greedy=False))
  freq = counts / counts.sum()
  np.testing.assert_allclose(freq, np.exp(LOGITS), atol=0.03)


def test_temperature_sharpens_and_flattens():
  cold = _draw(LOGITS, L.SamplingMode(greedy=False), temperature=0.25)
  hot = _draw(LOGITS, L.SamplingMode(greedy=False), temperature=4.0)
  expected_cold = np.exp(LOGITS / 0.25) / np.exp(LOGITS / 0.25).sum()
  expected_hot = np.exp(LOGITS / 4.0) / np.exp(LOGITS / 4.0).sum()
  np.testing.assert_allclose(cold / cold.sum(), expected_cold, atol=0.03)
  np.testing.assert_allclose(hot / hot.sum(), expected_hot, atol=0.03)


def test_top_k_samples_only_the_k_best_in_proportion():
  counts = _draw(LOGITS, L.SamplingMode(greedy=False, top_k=3))
  assert counts[3:].sum() == 0
  expected = np.exp(LOGITS[:3]) / np.exp(LOGITS[:3]).sum()
  np.testing.assert_allclose(counts[:3] / counts.sum(), expected, atol=0.03)


def test_top_k_one_is_greedy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(64, 50)).astype(np.float32)
  keys = jax.random.split(jax.random.key(3), 64)
  got = L.sample_tokens(jnp.asarray(logits), keys,
                        L.SamplingMode(greedy=False, top_k=1))
  np.testing.assert_array_equal(got, logits.argmax(-1))


@pytest.mark.parametrize("top_k", [None, 5])
def test_top_p_keeps_the_nucleus(top_k):
  # Cumulative: 0.4, 0.65, 0.8, 0.9 -> top_p = 0.7 keeps the first three.
  counts = _draw(LOGITS, L.SamplingMode(greedy=False, top_k=top_k,
                                        top_p=True), top_p=0.7)
  assert counts[3:].sum() == 0
  expected = np.exp(LOGITS[:3]) / np.exp(LOGITS[:3]).sum()
  np.testing.assert_allclose(counts[:3] / counts.sum(), expected, atol=0.03)


def test_top_p_tiny_keeps_the_best_token():
  counts = _draw(LOGITS[::-1], L.SamplingMode(greedy=False, top_p=True),
                 n=200, top_p=1e-6)
  assert counts[-1] == 200


def test_token_logprobs_is_log_softmax():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 11)).astype(np.float32)
  tokens = np.array([0, 3, 10, 5])
  got = L.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens))
  want = jax.nn.log_softmax(logits, -1)[np.arange(4), tokens]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sampling_params_validation():
  assert L.SamplingParams().greedy
  assert L.SamplingParams(0.0, top_k=5).mode == L.SamplingMode(True, 5, False)
  assert L.SamplingParams(0.7, top_p=0.9).mode == L.SamplingMode(
      False, None, True)
  assert not L.SamplingParams(1.0, top_p=1.0).use_top_p
  for bad in [dict(temperature=-1.0), dict(top_k=0), dict(top_k=2.5),
              dict(top_p=0.0), dict(top_p=1.5)]:
    with pytest.raises(ValueError):
      L.SamplingParams(**bad)
