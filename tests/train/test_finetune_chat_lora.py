"""The README's "fine-tune RecurrentGemma-2B-it with LoRA on your chat data"
recipe at CI size: the fine-tuning experiment's runlocal variant with
`hf=` (a tiny checkpoint written by `to_hf`), `format=chat` (a tokenizer
trained here with the turn markers) and `lora=4`, end to end on CPU."""

import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import chat
from recurrentgemma_jax.training import loop

import train_testlib

_WORDS = "hi there how are you i am fine thanks tell me a story cat dog".split()


def _experiment():
  return train_testlib.load_experiment("recurrentgemma_finetune")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
  """(hf checkpoint folder, its tokenizer, a chat .jsonl file)."""
  spm = pytest.importorskip("sentencepiece")
  root = tmp_path_factory.mktemp("chat_lora")
  rng = random.Random(0)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(rng.choices(_WORDS, k=6))
                              for _ in range(500)]),
      model_prefix=str(root / "tok"), vocab_size=300, model_type="bpe",
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True,
      add_dummy_prefix=False, normalization_rule_name="identity",
      user_defined_symbols=[chat.START_OF_TURN, chat.END_OF_TURN],
      minloglevel=2)
  config = rg.GriffinConfig(
      vocab_size=384, width=32, mlp_expanded_width=64, num_heads=2,
      block_types=("recurrent", "recurrent", "attention"),
      attention_window_size=15, logits_soft_cap=30.0,
      embeddings_scale_by_sqrt_dim=True)
  hf_dir = root / "tiny-recurrentgemma-it"
  rg.to_hf(rg.Griffin(config, rngs=nnx.Rngs(3)), hf_dir)
  lines = []
  for i in range(80):
    ask, say = (" ".join(rng.choices(_WORDS, k=4)) for _ in range(2))
    lines.append(json.dumps({"messages": [
        {"role": "user", "content": ask}, {"role": "model", "content": say}]}))
  data = root / "chat.jsonl"
  data.write_text("\n".join(lines) + "\n")
  return hf_dir, root / "tok.model", data


def _config(tmp_path, recipe, extra=""):
  hf_dir, tokenizer, data = recipe
  config = _experiment().get_config(
      f"runlocal,hf={hf_dir},tokenizer={tokenizer},files={data},format=chat,"
      f"data_dir={tmp_path / 'tfds'}{extra}")
  config.update(total_steps=6, warmup_steps=1, eval_every=6,
                checkpoint_every=6, log_every=1, eval_batches=1, seq_len=48)
  return config


def test_lora_chat_fine_tuning_from_hf_runs_end_to_end(tmp_path, recipe):
  config = _config(tmp_path, recipe, ",lora=4")
  assert (config.lora.rank, config.lora.alpha, config.lora.base_dtype) == (
      4, 8.0, "bfloat16")
  assert (config.data.format, config.init_from.hf) == ("chat",
                                                      str(recipe[0]))
  result = loop.train(config, str(tmp_path / "run"))
  assert (result.step, result.preempted) == (6, False)
  losses = train_testlib.losses(tmp_path / "run")
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(v[0]) for v in losses.values())
  # Only the adapters trained: the merged model differs from the released
  # weights in the adapted projections only (the frozen rest equals them
  # rounded to bfloat16, lora.base_dtype).
  released = nnx.state(rg.from_hf(recipe[0]), nnx.Param).to_pure_dict()
  tuned, _, step = rg.load_workdir(str(tmp_path / "run"))
  assert step == 6
  tuned = nnx.state(tuned, nnx.Param).to_pure_dict()
  flat_released = dict(jax.tree_util.tree_flatten_with_path(released)[0])
  flat_tuned = dict(jax.tree_util.tree_flatten_with_path(tuned)[0])
  assert flat_released.keys() == flat_tuned.keys()
  as_bf16 = lambda x: np.asarray(x, jnp.bfloat16)
  changed = {jax.tree_util.keystr(k) for k in flat_released
             if not np.array_equal(as_bf16(flat_released[k]),
                                   as_bf16(flat_tuned[k]))}
  adapted = ("proj_q", "proj_k", "proj_v", "proj_final", "ffw_up",
             "ffw_down", "linear_x", "linear_y", "linear_out")
  assert changed, "LoRA training changed nothing"
  assert all(any(name in k for name in adapted) for k in changed), sorted(
      changed)


def test_a_negative_lora_rank_is_refused(tmp_path, recipe):
  with pytest.raises(ConfigError, match="lora=-1"):
    _config(tmp_path, recipe, ",lora=-1")
