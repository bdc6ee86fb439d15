"""`weights.griffin_from_params`, where official, Hugging Face and workdir
weights all end: the tree goes in exactly, and a tree of another model is
refused naming the first path that differs."""

import jax
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax import weights

CONFIG = rg.GriffinConfig(
    vocab_size=32, width=16, mlp_expanded_width=24, num_heads=2,
    block_types=("recurrent", "attention"), attention_window_size=4,
    param_dtype="bfloat16")


def _params(seed=0):
  return nnx.to_pure_dict(nnx.state(rg.Griffin(CONFIG, rngs=nnx.Rngs(seed)),
                                    nnx.Param))


def test_the_tree_goes_in_exactly_with_orbax_string_keys():
  params = jax.tree.map(np.asarray, _params())
  # Orbax stores the block indices as strings; float32 leaves are cast.
  stored = {**params, "blocks": {str(i): block for i, block
                                 in params["blocks"].items()}}
  stored = jax.tree.map(lambda x: x.astype(np.float32), stored)
  model = weights.griffin_from_params(CONFIG, stored)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert jax.tree.structure(got) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    assert a.dtype == b.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(a), b)
  tokens = np.array([[1, 2, 3]], np.int32)
  positions = np.array([[0, 1, 2]], np.int32)
  reference = rg.Griffin(CONFIG, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(model(tokens, positions),
                                reference(tokens, positions))


def test_another_tree_is_refused_naming_the_path():
  params = _params()
  missing = {**params, "blocks": {0: params["blocks"][0]}}
  with pytest.raises(rg.ConfigError,
                     match=r"^params/blocks: missing \['1'\], unexpected"):
    weights.griffin_from_params(CONFIG, missing)
  extra = {**params, "lm_head": np.zeros(3)}
  with pytest.raises(rg.ConfigError, match=r"unexpected \['lm_head'\]"):
    weights.griffin_from_params(CONFIG, extra, where="ckpt")
  wrong = jax.tree.map(lambda x: x, params)
  wrong["final_norm"]["scale"] = np.zeros(8)
  with pytest.raises(rg.ConfigError, match=r"^params/final_norm/scale: shape "
                     r"\(8,\) does not match the model's \(16,\)"):
    weights.griffin_from_params(CONFIG, wrong)
