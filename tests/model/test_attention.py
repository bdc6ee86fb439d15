"""Blocked local attention: exact against a dense NumPy oracle, and linear
memory in the sequence length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.nn import attention


def _dense_oracle(q, k, v, doc_ids, window):
  """Float64 attention with an explicit T x T mask."""
  q, k, v = (np.asarray(z, np.float64) for z in (q, k, v))
  t = q.shape[1]
  i, j = np.arange(t)[:, None], np.arange(t)[None]
  allowed = (i >= j) & (doc_ids[:, :, None] == doc_ids[:, None, :])
  if window is not None:
    allowed &= (i - j) <= window
  logits = np.einsum("bqnh,bkh->bnqk", q, k)
  logits = np.where(allowed[:, None], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bnqk,bkh->bqnh", probs, v)


@pytest.mark.parametrize(
    "t,window,block",
    [(37, 5, None), (37, 5, 8), (16, 4, None), (9, 20, None), (30, None, None),
     (23, 1, None), (64, 15, 16)],
)
def test_blocked_attention_matches_dense(t, window, block):
  rng = np.random.default_rng(t * 100 + (window or 0))
  b, n, h = 2, 3, 8
  q = rng.normal(size=(b, t, n, h)).astype(np.float32)
  k = rng.normal(size=(b, t, h)).astype(np.float32)
  v = rng.normal(size=(b, t, h)).astype(np.float32)
  starts = rng.random((b, t)) < 0.15
  starts[:, 0] = True
  doc_ids = np.cumsum(starts, axis=1).astype(np.int32)
  out = attention.blocked_local_attention(q, k, v, jnp.asarray(doc_ids),
                                          window, block)
  np.testing.assert_allclose(out, _dense_oracle(q, k, v, doc_ids, window),
                             atol=2e-5, rtol=2e-5)


def test_block_smaller_than_window_is_rejected():
  x = jnp.ones((1, 8, 1, 2))
  with pytest.raises(ValueError, match="block_size"):
    attention.blocked_local_attention(x, x[:, :, 0], x[:, :, 0],
                                      jnp.ones((1, 8), jnp.int32), 4, 2)


def _compiled_temp_bytes(model, length):
  graphdef, state = nnx.split(model)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)

  def forward(state, tokens):
    seg = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return nnx.merge(graphdef, state)(tokens, seg)

  compiled = jax.jit(forward).lower(state, tokens).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_forward_memory_grows_linearly_with_length():
  """A dense T x T mask would grow 64x from 4K to 32K; ours grows ~8x."""
  config = rg.GriffinConfig(
      vocab_size=16, width=16, mlp_expanded_width=32, num_heads=2,
      block_types=("recurrent", "attention"), attention_window_size=128,
  )
  model = rg.Griffin(config, rngs=nnx.Rngs(0))
  sizes = {t: _compiled_temp_bytes(model, t) for t in (4096, 8192, 32768)}
  ratio = sizes[32768] / sizes[4096]
  assert 6 <= ratio <= 10, sizes
  assert 1.6 <= sizes[8192] / sizes[4096] <= 2.5, sizes


def test_model_with_the_flash_kernel_equals_xla_attention():
  # `attention_impl="pallas_gpu"` (interpret mode off the GPU) must give
  # the XLA path's logits and gradients: same weights, packed documents,
  # T longer than the window and not a multiple of the kernel's blocks.
  def model(impl):
    config = rg.GriffinConfig(
        vocab_size=64, width=64, mlp_expanded_width=96, num_heads=2,
        block_types=("attention",), attention_window_size=8,
        attention_impl=impl)
    return rg.Griffin(config, rngs=nnx.Rngs(0))

  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, 64, (2, 37)), jnp.int32)
  segment_pos = jnp.asarray(np.concatenate(
      [np.arange(37)[None], np.r_[np.arange(20), np.arange(17)][None]]),
      jnp.int32)

  def loss_and_grads(m):
    graphdef, params = nnx.split(m, nnx.Param)

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens, segment_pos)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits

    return jax.value_and_grad(loss, has_aux=True)(params)

  (_, want_logits), want_grads = loss_and_grads(model("xla"))
  (_, got_logits), got_grads = loss_and_grads(model("pallas_gpu"))
  np.testing.assert_allclose(got_logits, want_logits, rtol=2e-5, atol=2e-5)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_unknown_attention_impl_is_a_config_error():
  with pytest.raises(rg.ConfigError, match="attention_impl"):
    rg.GriffinConfig(vocab_size=64, width=64, mlp_expanded_width=96,
                     num_heads=2, block_types=("attention",),
                     attention_impl="flash")


@pytest.mark.parametrize("backend, devices, head_dim, want", [
    ("gpu", 1, 128, "pallas_gpu"),  # timed faster on an H200
    ("gpu", 1, 16, "pallas_gpu"),
    ("gpu", 1, 8, "xla"),  # sizes the kernel refuses: below 16,
    ("gpu", 1, 24, "xla"),  # not a power of 2
    ("gpu", 2, 128, "xla"),  # the kernel would gather its operands per device
    ("tpu", 1, 128, "xla"),
    ("cpu", 1, 128, "xla"),
])
def test_auto_attention_picks_the_flash_kernel_only_where_it_runs(
    backend, devices, head_dim, want):
  assert attention.resolve_attention_impl(backend, devices, head_dim) == want


@pytest.mark.parametrize("head_dim", [8, 16, 24, 32, 48, 64])
def test_the_flash_kernel_refuses_exactly_the_head_sizes_auto_avoids(
    head_dim):
  from pallas_kernels import gpu_local_attention  # pylint: disable=g-import-not-at-top
  q = jnp.ones((1, 16, 2, head_dim))
  run = lambda: gpu_local_attention.local_attention(
      q, q[:, :, 0], q[:, :, 0], jnp.zeros((1, 16), jnp.int32), 4,
      interpret=True)
  if gpu_local_attention.head_dim_supported(head_dim):
    assert run().shape == q.shape
  else:
    with pytest.raises(ValueError, match="head dimension"):
      run()


def test_auto_attention_on_cpu_runs_the_blocked_einsum(monkeypatch):
  calls = []
  monkeypatch.setattr(attention, "blocked_local_attention",
                      lambda *a: calls.append(a) or a[0])
  q = jnp.ones((1, 8, 2, 4))
  attention.local_attention(q, q[:, :, :1], q[:, :, :1],
                            jnp.zeros((1, 8), jnp.int32), 4, impl="auto")
  assert len(calls) == 1
