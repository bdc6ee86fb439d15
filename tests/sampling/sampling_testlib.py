"""Shared tiny models for the sampling tests (built once per process)."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.sampling import Sampler


@functools.lru_cache(maxsize=None)
def tiny_model(vocab_size: int = 61, window: int | None = 4,
               blocks: tuple[str, ...] = ("recurrent", "attention",
                                          "recurrent"),
               seed: int = 3) -> rg.Griffin:
  """A float32 Griffin with every parameter perturbed away from its init."""
  config = rg.GriffinConfig(
      vocab_size=vocab_size, width=24, mlp_expanded_width=48, num_heads=3,
      lru_width=30, block_types=blocks, attention_window_size=window,
      logits_soft_cap=10.0, embeddings_scale_by_sqrt_dim=True,
  )
  model = rg.Griffin(config, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(seed + 6), len(leaves))
  leaves = [l + 0.2 * jax.random.normal(k, l.shape) for l, k in
            zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@functools.lru_cache(maxsize=None)
def tiny_sampler(**kwargs) -> Sampler:
  return Sampler(tiny_model(**kwargs))


@functools.partial(nnx.jit, static_argnums=())
def _forward(model, tokens, segment_pos):
  return model(tokens, segment_pos)


def forward_rows(model: rg.Griffin, rows, segment_pos=None) -> list[np.ndarray]:
  """Logits `[len(row), V]` of one forward pass over each row.

  Rows are right-padded to a common length (a multiple of 64, so that
  tests share compilations); causality keeps the padding out of the rows.
  """
  length = 64 * -(-max(len(r) for r in rows) // 64)
  tokens = np.zeros((len(rows), length), np.int32)
  seg = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    seg[i] = np.arange(length)
    if segment_pos is not None:
      seg[i, :len(row)] = segment_pos[i]
  logits = np.asarray(_forward(model, tokens, seg))
  return [logits[i, :len(row)] for i, row in enumerate(rows)]


def expected_step_logits(model, prompt, generated) -> np.ndarray:
  """The logits each generated token was sampled from, by a forward pass."""
  full = forward_rows(model, [list(prompt) + list(generated)])[0]
  return full[len(prompt) - 1:len(prompt) - 1 + len(generated)]


WORDS = ("the cat dog sat ran on a mat log red blue big small quick lazy "
         "fox jumps over under and then home tree bird sings").split()


@functools.lru_cache(maxsize=None)
def sentencepiece_model_path(vocab_size: int = 120) -> str:
  """A SentencePiece model trained here (by sentencepiece's own trainer) on
  generated sentences; pad 0, unk 1, bos 2, eos 3."""
  import os  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(WORDS, rng.integers(3, 12)))
           for _ in range(2000)]
  prefix = os.path.join(tempfile.mkdtemp(prefix="rg_spm_"), "tiny")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=prefix,
      vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
  return prefix + ".model"


@functools.lru_cache(maxsize=None)
def official_model(vocab_size: int = 120, seed: int = 0):
  """`(official_config, official_model, params)`: a tiny official Griffin
  (float32) with every parameter perturbed away from its init."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recurrentgemma import common  # pylint: disable=g-import-not-at-top
  from recurrentgemma import jax as official  # pylint: disable=g-import-not-at-top

  r, a = common.TemporalBlockType.RECURRENT, common.TemporalBlockType.ATTENTION
  config = official.GriffinConfig(
      vocab_size=vocab_size, width=32, mlp_expanded_width=96, num_heads=4,
      block_types=(r, a, r), embeddings_scale_by_sqrt_dim=True,
      attention_window_size=8, logits_soft_cap=30.0, lru_width=48,
      scan_type=common.ScanType.LINEAR_NATIVE)
  model = official.Griffin(config, gradient_checkpointing=False)
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = jax.jit(lambda k: model.init(k, tokens, jnp.arange(4)[None]))(
      jax.random.PRNGKey(seed))["params"]
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [l + 0.1 * jax.random.normal(k, l.shape, l.dtype)
            for l, k in zip(leaves, keys)]
  return config, model, jax.tree.unflatten(treedef, leaves)


@functools.lru_cache(maxsize=None)
def ours_from_official(vocab_size: int = 120) -> rg.Griffin:
  config, _, params = official_model(vocab_size)
  return rg.from_official(
      params, attention_window_size=config.attention_window_size,
      logits_soft_cap=config.logits_soft_cap,
      embeddings_scale_by_sqrt_dim=config.embeddings_scale_by_sqrt_dim)
