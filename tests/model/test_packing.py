"""Packed rows: each document computes exactly what it computes alone."""

import numpy as np
from flax import nnx

import recurrentgemma_jax as rg


def test_packed_documents_are_independent():
  config = rg.GriffinConfig(
      vocab_size=40, width=16, mlp_expanded_width=32, num_heads=2,
      block_types=("recurrent", "attention", "recurrent"),
      attention_window_size=6,
  )
  model = rg.Griffin(config, rngs=nnx.Rngs(5))
  forward = nnx.jit(lambda m, t, s: m(t, s))
  rng = np.random.default_rng(0)
  lengths = [9, 4, 13]
  docs = [rng.integers(0, 40, n).astype(np.int32) for n in lengths]
  packed = np.concatenate(docs)[None]
  seg = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)[None]
  packed_logits = np.asarray(forward(model, packed, seg))
  start = 0
  for doc in docs:
    alone = np.asarray(forward(model, doc[None],
                               np.arange(len(doc), dtype=np.int32)[None]))
    np.testing.assert_allclose(packed_logits[:, start:start + len(doc)],
                               alone, atol=1e-5, rtol=1e-5)
    start += len(doc)
