"""Token ids outside the vocabulary are an error wherever they are concrete
(under jit an id >= vocab gives NaN logits and -1 reads id vocab - 1)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.config import check_token_ids


def test_check_token_ids_accepts_the_vocabulary_and_names_a_bad_id():
  check_token_ids([[0, 15], [3, 7]], 16)
  check_token_ids(np.zeros((0,), np.int64), 16)
  check_token_ids(jnp.arange(16), 16)
  with pytest.raises(ValueError, match=r"inputs: token id 16 at index "
                     r"\(1, 0\) is outside the vocabulary \[0, 16\)"):
    check_token_ids([[0, 1], [16, 2]], 16, name="inputs")
  with pytest.raises(ValueError, match="token id -1"):
    check_token_ids(np.array([3, -1]), 16)
  with pytest.raises(ValueError, match="must be integers"):
    check_token_ids([1.5, 2.0], 16)


def _model():
  config = rg.GriffinConfig(
      vocab_size=16, width=8, mlp_expanded_width=16, num_heads=2,
      block_types=("recurrent", "attention"), attention_window_size=4)
  return rg.Griffin(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", [16, 1000, -1])
def test_eager_model_call_rejects_ids_outside_the_vocabulary(bad):
  model = _model()
  pos = np.arange(3, dtype=np.int32)[None]
  assert np.isfinite(np.asarray(model(np.array([[1, 2, 15]]), pos))).all()
  for tokens in (np.array([[1, bad, 3]]), jnp.array([[1, bad, 3]])):
    with pytest.raises(ValueError, match=f"token id {bad} at index"):
      model(tokens, pos)
