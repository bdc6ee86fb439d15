"""The GPU flash local attention against a float64 NumPy oracle, forward
and gradients, in Pallas interpret mode on CPU (compiled on a GPU backend).

Awkward cases: T not a multiple of the blocks and T below one block,
windows shorter than a block and longer than T, several documents per row
(including one starting inside a block), an odd number of heads.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gpu_local_attention as gla
from pallas_kernels import reference
from recurrentgemma_jax.nn import attention as xla_attention

INTERPRET = jax.default_backend() != "gpu"
SMALL = gla.AttentionConfig(block_q=16, block_k=16)


def _oracle(q, k, v, doc_ids, window, d_out):
  """float64 outputs and (dq, dk, dv) of masked softmax attention."""
  q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
  doc_ids = np.asarray(doc_ids)
  t = q.shape[1]
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  visible = (i - j >= 0) & (doc_ids[:, :, None] == doc_ids[:, None, :])
  if window is not None:
    visible &= i - j <= window
  s = np.einsum("bqnh,bkh->bnqk", q, k)
  s = np.where(visible[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.einsum("bnqk,bkh->bqnh", p, v)
  dp = np.einsum("bqnh,bkh->bnqk", d_out, v)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bnqk,bkh->bqnh", ds, k)
  dk = np.einsum("bnqk,bqnh->bkh", ds, q)
  dv = np.einsum("bnqk,bqnh->bkh", p, d_out)
  return out, (dq, dk, dv)


def _inputs(b, t, n, h, dtype, doc_starts, seed):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, t, n, h)) / np.sqrt(h)
  k, v = rng.standard_normal((2, b, t, h))
  d_out = rng.standard_normal((b, t, n, h))
  doc_ids = np.zeros((b, t), np.int32)
  for row, starts in enumerate(doc_starts):
    for start in starts:
      doc_ids[row, start:] += 1
  cast = lambda x: jnp.asarray(x, dtype)
  return cast(q), cast(k), cast(v), jnp.asarray(doc_ids), cast(d_out)


@pytest.mark.parametrize("b,t,n,h,window,doc_starts,dtype", [
    (2, 70, 3, 16, 20, ((), (9, 40)), jnp.float32),     # T % block != 0
    (1, 11, 2, 16, 4, ((5,),), jnp.float32),            # T < one block
    (2, 64, 2, 32, None, ((30,), ()), jnp.float32),     # global attention
    (1, 48, 1, 16, 100, ((17,),), jnp.float32),         # window > T
    (1, 96, 2, 16, 16, ((), ), jnp.float32),            # window == block
    (2, 70, 3, 16, 20, ((), (9, 40)), jnp.bfloat16),
])
def test_matches_float64_oracle(b, t, n, h, window, doc_starts, dtype):
  q, k, v, doc_ids, d_out = _inputs(b, t, n, h, dtype, doc_starts,
                                    seed=[b, t, n, h])

  def f(q, k, v):
    return gla.local_attention(q, k, v, doc_ids, window, interpret=INTERPRET,
                               config=SMALL)

  out, vjp = jax.vjp(f, q, k, v)
  grads = vjp(d_out)
  want_out, want_grads = _oracle(q, k, v, doc_ids, window, d_out)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  assert out.dtype == dtype
  assert reference.relative_error(out, want_out) < tol
  for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
    assert got.dtype == dtype, name
    assert reference.relative_error(got, want) < tol, name


def test_equals_the_models_xla_attention():
  # The kernel replaces `blocked_local_attention`: same math, same masks.
  q, k, v, doc_ids, _ = _inputs(2, 80, 2, 16, jnp.float32, ((33,), (5, 60)),
                                seed=5)
  want = xla_attention.blocked_local_attention(q, k, v, doc_ids, 24)
  got = gla.local_attention(q, k, v, doc_ids, 24, interpret=INTERPRET,
                            config=SMALL)
  assert reference.relative_error(got, want) < 1e-5


def test_bad_inputs_are_refused():
  q, k, v, doc_ids, _ = _inputs(1, 16, 2, 16, jnp.float32, ((),), seed=0)
  with pytest.raises(ValueError, match="k and v"):
    gla.local_attention(q, k[:, :8], v, doc_ids, 4, interpret=True)
  with pytest.raises(ValueError, match="head dimension"):
    gla.local_attention(q[..., :12], k[..., :12], v[..., :12], doc_ids, 4,
                        interpret=True)
  with pytest.raises(ValueError, match="window"):
    gla.local_attention(q, k, v, doc_ids, -1, interpret=True)
  with pytest.raises(ValueError, match="block_q"):
    gla.AttentionConfig(block_q=24)
