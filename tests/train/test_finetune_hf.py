"""Fine-tuning from a Hugging Face checkpoint: `init_from.hf` and the
fine-tuning experiment's `hf=DIR`.

A tiny checkpoint written by `to_hf` stands in for google/recurrentgemma-2b
(tests/model/test_hf_interop.py shows such folders load in transformers
with equal logits).
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import loop
from recurrentgemma_jax.training import state as state_lib

import train_testlib

# The byte tokenizer's 259 ids, padded like the loop pads a vocabulary.
VOCAB = 384


def _experiment():
  return train_testlib.load_experiment("recurrentgemma_finetune")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  config = rg.GriffinConfig(
      vocab_size=VOCAB, width=32, mlp_expanded_width=64, num_heads=2,
      block_types=("recurrent", "recurrent", "attention"),
      attention_window_size=15, logits_soft_cap=30.0,
      embeddings_scale_by_sqrt_dim=True)
  path = tmp_path_factory.mktemp("hf") / "tiny-recurrentgemma"
  rg.to_hf(rg.Griffin(config, rngs=nnx.Rngs(7)), path)
  return path


def _config(tmp_path, hf_dir, extra=""):
  text = train_testlib.sample_text(tmp_path / "sample.txt")
  config = _experiment().get_config(
      f"runlocal,hf={hf_dir},tokenizer=bytes,files={text},"
      f"data_dir={tmp_path / 'tfds'}{extra}")
  config.update(total_steps=2, warmup_steps=1, eval_every=2,
                checkpoint_every=2, log_every=1, eval_batches=1)
  return config


def test_fine_tuning_starts_from_the_hf_checkpoint(tmp_path, hf_dir):
  config = _config(tmp_path, hf_dir)
  assert config.init_from.hf == str(hf_dir)
  assert not config.init_from.checkpoint
  exp = loop.setup(config, str(tmp_path / "run"))
  released = rg.from_hf(hf_dir)
  assert exp.model_config.attention_window_size == 15  # HF's 16, minus one
  assert exp.model_config.remat == "dots"  # compute fields: the experiment's
  assert exp.model_config.param_dtype == "float32"
  state = state_lib.init_train_state(exp.spec, exp.tx, seed=0,
                                     params=exp.init_params)
  want = nnx.state(released, nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)

  result = loop.train(config, str(tmp_path / "run"))
  assert (result.step, result.preempted) == (2, False)
  assert np.isfinite(result.metrics["eval/loss"])
  tuned, _, step = rg.load_workdir(str(tmp_path / "run"))
  assert step == 2 and tuned.config.width == 32
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(want),
      jax.tree.leaves(nnx.state(tuned, nnx.Param).to_pure_dict()))]
  assert all(moved)  # every parameter was trained from the checkpoint


def test_the_official_window_can_be_asked_for(tmp_path, hf_dir):
  config = _config(tmp_path, hf_dir)
  config.model.attention_window_size = 16
  model_config, _ = loop.initial_weights(config)
  assert model_config.attention_window_size == 16


@pytest.mark.parametrize("arg, match", [
    ("hf=/a,ckpt=/b", "give exactly one of ckpt=DIR .*, hf=DIR .* or "
     "weights=none .*; got ckpt=, hf="),
    ("", "give exactly one of .*; got none"),
    ("weights=random", "weights='random': only weights=none"),
    ("hf=/nonexistent/rg", "init_from.hf: Hugging Face checkpoint folder "
     "not found: /nonexistent/rg"),
])
def test_the_experiment_takes_exactly_one_source_of_weights(arg, match):
  with pytest.raises(ConfigError, match=match):
    _experiment().get_config(arg)


def test_weights_none_and_the_tokenizer_default(hf_dir):
  module = _experiment()
  config = module.get_config("weights=none")
  assert not config.init_from.checkpoint and not config.init_from.hf
  assert module.get_config(f"hf={hf_dir}").data.tokenizer == (
      str(hf_dir / "tokenizer.model"))  # Hugging Face keeps it in the folder
  assert module.get_config("ckpt=/ckpts/2b").data.tokenizer == (
      "/ckpts/tokenizer.model")  # Kaggle, beside it


def test_the_model_section_must_describe_the_checkpoint(tmp_path, hf_dir):
  """Sampling and convert rebuild a workdir's model from its model section:
  a section that disagrees with the weights is refused up front."""
  config = _config(tmp_path, hf_dir)
  assert config.model.kind == "griffin" and config.model.depth == 3
  config.model.width = 64
  with pytest.raises(ConfigError, match=r"the model section does not "
                     r"describe .* \(width: 64, the checkpoint's 32\)"):
    loop.initial_weights(config)
  config.model = train_testlib.tiny_config().model
  with pytest.raises(ConfigError, match="logits_soft_cap: 0.0, the "
                     "checkpoint's 30.0"):
    loop.initial_weights(config)


def test_init_from_errors(tmp_path, hf_dir):
  config = _config(tmp_path, hf_dir)
  config.init_from.checkpoint = str(tmp_path)
  with pytest.raises(ConfigError, match="init_from.checkpoint and "
                     "init_from.hf are both set"):
    loop.initial_weights(config)
  config.init_from.checkpoint = ""
  config.init_from.hf = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="init_from.hf: Hugging Face "
                     "checkpoint folder not found"):
    loop.initial_weights(config)
  config.init_from.hf = str(tmp_path)
  with pytest.raises(ConfigError, match="init_from.hf: .*no config.json"):
    loop.initial_weights(config)


def test_a_workdir_saved_before_init_from_hf_existed_still_loads(tmp_path):
  """evaluate and length_eval validate the saved config.json: a field the
  schema gained later takes its default."""
  saved = json.loads(train_testlib.tiny_config().to_json())
  del saved["init_from"]["hf"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = loop.load_workdir_config(str(tmp_path))
  assert config.init_from.hf == ""
  exp = loop.setup(config, str(tmp_path), read_only=True)
  assert exp.config.init_from.hf == "" and exp.init_params is None


def test_compute_fields_of_the_model_section_reach_the_released_model(
    tmp_path, hf_dir):
  # Every compute field (training.config.COMPUTE_FIELDS) of the experiment
  # applies to the model built from the checkpoint, not only the ones a
  # loader happens to list.
  config = _config(tmp_path, hf_dir)
  config.model.attention_impl = "xla"
  config.model.fused_rg_lru = False
  exp = loop.setup(config, str(tmp_path / "run"))
  assert exp.model_config.attention_impl == "xla"
  assert exp.model_config.fused_rg_lru is False
