"""Our model against the official `recurrentgemma` package on random weights.

Tolerance: float32 logits agree to 1e-5 of the logits' scale (observed about
3e-7: float32 rounding only). The bfloat16 compute path must be no further from
the float32 oracle than the official bfloat16 model is (plus 1% of scale).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import official_oracle as oracle
import recurrentgemma_jax as rg

R, A = oracle.R, oracle.A
F32_RTOL = 1e-5

CASES = {
    # name: (block types, window, soft cap, sqrt scale, T, scan impl)
    "griffin_capped_scaled": ((R, R, A, R), 8, 30.0, True, 37, "associative"),
    "griffin_sequential_scan": ((R, A), 8, 30.0, True, 37, "sequential"),
    "griffin_plain": ((A, R, R, A), 5, 0.0, False, 29, "associative"),
    "hawk": ((R, R, R), 8, 30.0, True, 23, "associative"),
    "attention_only_long": ((A, A), 4, 0.0, True, 31, "associative"),
}


def _inputs(seed, batch, length, vocab):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  return tokens, oracle.packed_segment_pos(rng, batch, length)


def _ours(params, window, cap, scale, **overrides):
  return rg.from_official(
      params, attention_window_size=window, logits_soft_cap=cap,
      embeddings_scale_by_sqrt_dim=scale, **overrides,
  )


@pytest.mark.parametrize("name", list(CASES))
def test_float32_logits_match_official(name):
  blocks, window, cap, scale, length, scan_impl = CASES[name]
  _, apply_fn, params = oracle.make(blocks, window=window, soft_cap=cap,
                                    sqrt_scale=scale)
  tokens, seg = _inputs(1, 3, length, 97)
  assert length > 2 * window  # the window and the packing both matter
  ref = np.asarray(apply_fn(params, tokens, seg))
  model = _ours(params, window, cap, scale, scan_impl=scan_impl)
  out = np.asarray(nnx.jit(lambda m, t, s: m(t, s))(model, tokens, seg))
  chex.assert_shape(out, (3, length, 97))
  scale_ = np.abs(ref).max()
  np.testing.assert_allclose(out, ref, atol=F32_RTOL * scale_, rtol=0)


class JitAndEagerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_forward_matches_official(self):
    _, apply_fn, params = oracle.make((R, A), window=4)
    tokens, seg = _inputs(2, 2, 13, 97)
    ref = np.asarray(apply_fn(params, tokens, seg))
    model = _ours(params, 4, 30.0, True)
    graphdef, state = nnx.split(model)
    fwd = self.variant(lambda st, t, s: nnx.merge(graphdef, st)(t, s))
    out = np.asarray(fwd(state, tokens, seg))
    np.testing.assert_allclose(out, ref, atol=F32_RTOL * np.abs(ref).max())


def test_bfloat16_compute_within_bfloat16_tolerance():
  blocks = (R, R, A)
  _, apply_f32, params = oracle.make(blocks, window=6)
  _, apply_bf16, _ = oracle.make(blocks, window=6, dtype=jnp.bfloat16)
  tokens, seg = _inputs(3, 2, 25, 97)
  ref = np.asarray(apply_f32(params, tokens, seg), np.float32)
  official_bf16 = np.asarray(apply_bf16(params, tokens, seg), np.float32)
  model = _ours(params, 6, 30.0, True, dtype="bfloat16")
  ours = np.asarray(nnx.jit(lambda m, t, s: m(t, s))(model, tokens, seg),
                    np.float32)
  assert ours.dtype == np.float32 and np.isfinite(ours).all()
  scale = np.abs(ref).max()
  ours_err = np.abs(ours - ref).max() / scale
  official_err = np.abs(official_bf16 - ref).max() / scale
  assert ours_err < 5e-2, ours_err
  assert ours_err <= 2 * official_err + 1e-2, (ours_err, official_err)


def test_gradients_are_finite_and_nonzero():
  _, _, params = oracle.make((R, R, A), window=4)
  model = _ours(params, 4, 30.0, True)
  tokens, seg = _inputs(4, 2, 17, 97)
  graphdef, state = nnx.split(model, nnx.Param)

  def loss(state):
    logits = nnx.merge(graphdef, state)(tokens, seg)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

  grads = jax.jit(jax.grad(loss))(state)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(g).all(), path
    assert np.abs(g).max() > 0, path
