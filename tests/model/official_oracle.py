"""The official `recurrentgemma` package as a numerical oracle for tests.

Builds a tiny official Linen Griffin with random weights (every parameter,
biases and norm scales included, perturbed away from its zero init so that
no term is tested at zero).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from recurrentgemma import common
from recurrentgemma import jax as official

R = common.TemporalBlockType.RECURRENT
A = common.TemporalBlockType.ATTENTION


@functools.lru_cache(maxsize=None)
def make(
    block_types,
    *,
    vocab_size: int = 97,
    width: int = 32,
    num_heads: int = 4,
    lru_width: int = 48,
    window: int = 8,
    soft_cap: float = 30.0,
    sqrt_scale: bool = True,
    dtype=None,
    seed: int = 0,
):
  """Returns `(official_config, apply_fn, params)`; apply is jitted.

  Cached: callers must not mutate the returned params in place.

  `apply_fn(params, tokens, segment_pos) -> logits [B, T, V]`.
  """
  cfg = official.GriffinConfig(
      vocab_size=vocab_size,
      width=width,
      mlp_expanded_width=3 * width,
      num_heads=num_heads,
      block_types=tuple(block_types),
      embeddings_scale_by_sqrt_dim=sqrt_scale,
      attention_window_size=window,
      logits_soft_cap=soft_cap,
      lru_width=lru_width,
      scan_type=common.ScanType.LINEAR_NATIVE,
  )
  model = official.Griffin(cfg, gradient_checkpointing=False, dtype=dtype)
  tokens = jnp.zeros((1, 4), jnp.int32)
  init = jax.jit(lambda key: model.init(key, tokens, jnp.arange(4)[None]))
  params = init(jax.random.PRNGKey(seed))["params"]
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [l + 0.1 * jax.random.normal(k, l.shape, l.dtype)
            for l, k in zip(leaves, keys)]
  params = jax.tree.unflatten(treedef, leaves)

  @jax.jit
  def apply_fn(params, tokens, segment_pos):
    logits, _ = model.apply({"params": params}, tokens, segment_pos,
                            return_cache=False)
    return logits

  return cfg, apply_fn, params


def packed_segment_pos(rng: np.random.Generator, batch: int, length: int,
                       docs_per_row: int = 3) -> np.ndarray:
  """`[B, T]` positions restarting at random document starts (first at 0)."""
  seg = np.zeros((batch, length), np.int32)
  for b in range(batch):
    starts = {0, *rng.integers(1, length, docs_per_row - 1).tolist()}
    pos = 0
    for t in range(length):
      pos = 0 if t in starts else pos + 1
      seg[b, t] = pos
  return seg
