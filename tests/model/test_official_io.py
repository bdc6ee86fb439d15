"""Round trips through the official parameter layout and checkpoint format."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import official_oracle as oracle
import recurrentgemma_jax as rg

R, A = oracle.R, oracle.A


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("blocks", [(R, R, A), (R, R), (A,)])
def test_round_trip_is_exact(blocks):
  cfg, _, params = oracle.make(blocks)
  model = rg.from_official(params, attention_window_size=8,
                           logits_soft_cap=30.0,
                           embeddings_scale_by_sqrt_dim=True)
  assert model.config.width == cfg.width
  assert model.config.num_layers == len(blocks)
  _assert_trees_equal(rg.to_official(model), params)


def test_config_inferred_from_shapes():
  _, _, params = oracle.make((R, A, R), width=32, num_heads=4, lru_width=48,
                             vocab_size=50)
  config = rg.config_from_official(params, attention_window_size=8,
                                   logits_soft_cap=0.0,
                                   embeddings_scale_by_sqrt_dim=False)
  assert (config.vocab_size, config.width, config.num_heads) == (50, 32, 4)
  assert config.lru_width == 48 and config.mlp_expanded_width == 96
  assert config.block_types == (rg.BlockType.RECURRENT, rg.BlockType.ATTENTION,
                                rg.BlockType.RECURRENT)


def test_wrong_shapes_are_rejected():
  _, _, params = oracle.make((R, A))
  params = jax.tree.map(lambda x: x, params)  # a copy: make() is cached
  params["blocks.1"]["attention_block"]["proj_q"]["kernel"] = np.zeros((3, 3))
  with pytest.raises(ValueError, match="proj_q/kernel: shape"):
    rg.from_official(params, attention_window_size=8, logits_soft_cap=0.0,
                     embeddings_scale_by_sqrt_dim=False)


def test_load_official_checkpoint(tmp_path):
  """A checkpoint written in the released layout restores exactly."""
  _, apply_fn, params = oracle.make((R, R, A), window=8)
  path = tmp_path / "2b"
  ocp.PyTreeCheckpointer().save(path, params)
  model = rg.load_official_checkpoint(path, preset=None,
                                      attention_window_size=8,
                                      logits_soft_cap=30.0,
                                      embeddings_scale_by_sqrt_dim=True)
  _assert_trees_equal(rg.to_official(model), params)
  tokens = np.arange(12, dtype=np.int32)[None] % 97
  seg = np.arange(12, dtype=np.int32)[None]
  np.testing.assert_allclose(model(tokens, seg), apply_fn(params, tokens, seg),
                             atol=1e-5 * np.abs(apply_fn(params, tokens,
                                                         seg)).max())


def test_load_checkpoint_checks_preset_and_path(tmp_path):
  _, _, params = oracle.make((R, R, A))
  ocp.PyTreeCheckpointer().save(tmp_path / "ckpt", params)
  with pytest.raises(rg.ConfigError, match="does not match preset"):
    rg.load_official_checkpoint(tmp_path / "ckpt", preset="recurrentgemma-2b")
  with pytest.raises(FileNotFoundError, match="not found"):
    rg.load_official_checkpoint(tmp_path / "missing")


def test_an_int8_model_is_not_exported_to_the_official_layout():
  _, _, params = oracle.make((R, A))
  model = rg.from_official(params, attention_window_size=8,
                           logits_soft_cap=30.0,
                           embeddings_scale_by_sqrt_dim=True)
  with pytest.raises(ValueError, match="int8"):
    rg.to_official(rg.quantize_int8(model))
