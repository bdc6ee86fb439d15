"""Chat mode of the sampler, the conversation and `sample --chat`: prompts in
the instruction-tuned chat template, replies that stop at <end_of_turn>."""

import json
import os
import tempfile

import jax
import numpy as np
import pytest
from flax import nnx

import sampling_testlib as lib
from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import sample as sample_cli
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import chat
from recurrentgemma_jax.data import tokenizers
from recurrentgemma_jax.sampling import Sampler

SOT, EOT = chat.START_OF_TURN, chat.END_OF_TURN
VOCAB = 320


@pytest.fixture(scope="module")
def tok():
  """A Gemma-like SentencePiece model with the markers as single pieces."""
  spm = pytest.importorskip("sentencepiece")
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(lib.WORDS, rng.integers(3, 12)))
           for _ in range(2000)]
  prefix = os.path.join(tempfile.mkdtemp(prefix="rg_chat_spm_"), "chat")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=VOCAB,
      model_type="bpe", character_coverage=1.0, pad_id=0, eos_id=1,
      bos_id=2, unk_id=3, byte_fallback=True, add_dummy_prefix=False,
      remove_extra_whitespaces=False, normalization_rule_name="identity",
      user_defined_symbols=[SOT, EOT], minloglevel=2)
  return tokenizers.get_tokenizer(prefix + ".model")


def _bigram_model(tok, reply: str):
  """A model whose next token depends only on the last one: after "\\n"
  (the end of the model header) it says `reply` (one piece), then
  <end_of_turn>. Every block's output projection is zero, so the residual
  stream is the last token's embedding; logits are its dot products with
  the (tied) embeddings."""
  [newline], [word] = tok.encode("\n"), tok.encode(reply)
  eot = tok.piece_id(EOT)
  model = nnx.clone(lib.tiny_model(vocab_size=VOCAB))  # (a cached one)
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)

  def zero_outputs(path, x):
    names = {getattr(k, "key", None) for k in path}
    return (np.zeros_like(x) if names & {"linear_out", "proj_final",
                                         "ffw_down"} else x)

  params = jax.tree_util.tree_map_with_path(zero_outputs, params)
  embedding = np.zeros((VOCAB, 24), np.float32)
  # From "\n": word 3 > eot 2 > "\n" 1; from word: eot 21 > word 18.
  embedding[newline, 0] = 1
  embedding[word, :2] = 3, 3
  embedding[eot, :2] = 2, 5
  params["embedder"]["input_embedding"] = embedding
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state), word, eot


def test_chat_prompts_are_wrapped_in_the_template(tok):
  sampler = Sampler(lib.tiny_model(vocab_size=VOCAB), tok)
  rows = sampler.encode(
      ["the cat sat", [{"role": "system", "content": "be quick"},
                       {"role": "user", "content": "red fox"}]], chat=True)
  assert rows[0] == [2] + tok.encode(
      f"{SOT}user\nthe cat sat{EOT}\n{SOT}model\n")
  assert rows[1] == [2] + tok.encode(
      f"{SOT}user\nbe quick\n\nred fox{EOT}\n{SOT}model\n")
  assert rows[0][1] == tok.piece_id(SOT) == 4
  # The same prompt without chat mode is the bare text.
  assert sampler.encode("the cat sat") == [[2] + tok.encode("the cat sat")]
  # generate(chat=True) is the wrapped prompt with <end_of_turn> as a stop.
  out = sampler.generate("the cat sat", 6, chat=True, stop_at_eos=False)
  want = sampler.generate([rows[0]], 6, stop=[tok.piece_id(EOT)],
                          stop_at_eos=False)
  assert out.prompt_tokens == [rows[0]] and out.tokens == want.tokens


def test_chat_replies_stop_at_end_of_turn(tok):
  model, word, eot = _bigram_model(tok, "dog")
  sampler = Sampler(model, tok)
  # Without chat mode the model does say <end_of_turn>, and goes on.
  prompt = sampler.encode("a cat", chat=True)[0]
  raw = sampler.generate([prompt], 4, stop_at_eos=False)
  assert raw.tokens[0][:2] == [word, eot]
  out = sampler.generate("a cat", 16, chat=True)
  assert out.tokens == [[word]] and out.text == ["dog"]
  assert out.finish_reasons == ["stop"]
  streamed = list(sampler.stream("a cat", 16, chat=True))
  assert [s.tokens[0] for s in streamed] == [word, eot]
  assert "".join(s.text[0] for s in streamed) == "dog"


def test_chat_conversation_wraps_each_turn(tok):
  model, word, eot = _bigram_model(tok, "dog")
  sampler = Sampler(model, tok)
  talk = sampler.conversation(chat=True, max_new_tokens=8)
  assert talk.send("a cat") == "dog"
  assert talk.send("and a fox") == "dog"
  (_, first), (_, second) = talk.history
  assert first.prompt_tokens[0] == [2] + tok.encode(
      f"{SOT}user\na cat{EOT}\n{SOT}model\n")
  assert first.consumed == [[word, eot]]
  # The reply ended with <end_of_turn>: the next turn starts after it.
  assert second.prompt_tokens[0] == tok.encode(
      f"\n{SOT}user\nand a fox{EOT}\n{SOT}model\n")
  # A reply cut by max_new_tokens is closed before the next turn.
  cut = sampler.conversation(chat=True)
  assert cut.send("a cat", max_new_tokens=1) == "dog"
  cut.send("and a fox", max_new_tokens=1)
  assert cut.history[1][1].prompt_tokens[0] == tok.encode(
      f"{EOT}\n{SOT}user\nand a fox{EOT}\n{SOT}model\n")
  # The whole conversation equals one prompt of the same tokens.
  whole = (first.prompt_tokens[0] + first.consumed[0] +
           second.prompt_tokens[0])
  again = sampler.generate([whole], 8, stop=[eot])
  assert again.tokens == second.tokens


def _sample(args) -> int:
  """`recurrentgemma sample ARGS` in this process; its exit code."""
  return common.call(sample_cli, args)


def test_sample_cli_chat_flag(tok, monkeypatch, capsys):
  model, word, _ = _bigram_model(tok, "dog")
  monkeypatch.setattr(sample_cli, "load_from_args", lambda f: (model, tok))
  assert _sample(["--workdir", "unused", "--chat", "--prompt", "a cat",
                  "--max_new_tokens", "8", "--json"]) == 0
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (record["tokens"], record["text"], record["finish_reason"]) == (
      [word], "dog", "stop")
  # Without --chat the bare prompt ends in a word the model has no
  # continuation for: it never says "dog".
  assert _sample(["--workdir", "unused", "--prompt", "a cat",
                  "--max_new_tokens", "4", "--json"]) == 0
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert word not in record["tokens"]
  assert _sample(["--workdir", "unused", "--chat", "--prompt_tokens",
                  "1,2"]) == 2
  assert "--chat wraps text prompts" in capsys.readouterr().err


def test_chat_mode_errors(tok):
  sampler = Sampler(lib.tiny_model(vocab_size=VOCAB), tok)
  with pytest.raises(ValueError, match="chat prompts are strings or "
                     "messages lists, not token ids"):
    sampler.encode([[2, 5, 6]], chat=True)
  with pytest.raises(ValueError, match="a messages list is a chat prompt: "
                     "pass chat=True"):
    sampler.encode([{"role": "user", "content": "hi"}])
  with pytest.raises(ConfigError, match="a chat prompt must end with a user "
                     "turn"):
    sampler.encode([[{"role": "user", "content": "a"},
                     {"role": "model", "content": "b"}]], chat=True)
  out = sampler.generate("a", 2, chat=True, return_state=True)
  with pytest.raises(ValueError, match="continue one turn by turn with "
                     r"Sampler.conversation\(chat=True\)"):
    sampler.generate("b", 2, chat=True, state=out.state)
  with pytest.raises(ValueError, match="chat mode needs a tokenizer"):
    Sampler(lib.tiny_model(vocab_size=VOCAB)).conversation(chat=True)


def test_byte_tokenizer_chat_spells_the_markers(tok):
  del tok
  byte = tokenizers.ByteTokenizer()
  sampler = Sampler(lib.tiny_model(vocab_size=byte.vocab_size), byte)
  [row] = sampler.encode("hi", chat=True)
  assert row == [byte.bos_id] + byte.encode(
      f"{SOT}user\nhi{EOT}\n{SOT}model\n")
  assert sampler.chat_format.stop == EOT
  out = sampler.generate("hi", 8, chat=True, stop_at_eos=False)
  assert EOT not in out.text[0]
