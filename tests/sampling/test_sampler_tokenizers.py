"""The sampler with tokenizers: SentencePiece model files (trained here with
sentencepiece's own trainer), the byte-level tokenizer, stop strings, EOS."""

import numpy as np

import sampling_testlib as lib
from recurrentgemma_jax.data import tokenizers
from recurrentgemma_jax.sampling import Sampler
from recurrentgemma_jax.sampling import stopping

PROMPTS = ["the cat sat", "a quick fox jumps over"]


def test_stop_string_found_only_in_text_cuts_and_rebuilds_the_state():
  """A stop string that the generated tokens spell differently from its own
  tokenization ends the row on the host; the returned state is rebuilt to
  hold exactly the tokens through the stop string."""
  sampler = Sampler(lib.ours_from_official(), lib.sentencepiece_model_path())
  # Sampled (greedy repeats one word here), with the options compiled by
  # the other SentencePiece tests.
  kw = dict(stop_at_eos=False, return_logits=True, temperature=1.0, seed=2)
  free = sampler.generate(PROMPTS, 16, **kw)
  text, tokens = free.text[1], free.tokens[1]
  encode = sampler.tokenizer.encode

  def spelled(stop):  # the device would match these tokens
    seq = encode(stop)
    return any(tokens[i:i + len(seq)] == seq for i in range(len(tokens)))

  candidates = [text[i:i + n] for i in range(3, len(text) - 3)
                for n in (2, 3)]
  stop = next(c for c in candidates if c.strip() == c and len(encode(c)) > 1
              and not spelled(c) and text.find(c) >= 3)
  cut = text.find(stop)
  out = sampler.generate(PROMPTS, 16, stop=stop, return_state=True, **kw)
  assert out.text[1] == text[:cut]
  assert out.finish_reasons[1] == "stop"
  if stop not in free.text[0]:
    assert out.text[0] == free.text[0]
  assert out.tokens[1] == tokens[:stopping.tokens_before(
      tokens, cut, sampler.tokenizer.decode)]
  through = stopping.tokens_through(tokens, cut + len(stop),
                                    sampler.tokenizer.decode)
  assert through < 16  # the device generated past it: the state was rebuilt
  more = sampler.generate([[5, 6], [5, 6]], 4, state=out.state,
                          stop_at_eos=False, return_logits=True)
  consumed = out.prompt_tokens[1] + tokens[:through] + [5, 6]
  ref = lib.forward_rows(sampler.model, [consumed + more.tokens[1]])[0]
  np.testing.assert_allclose(more.logits[1],
                             ref[len(consumed) - 1:len(consumed) + 3],
                             atol=2e-5, rtol=1e-5)


class _ByteTokenizerWithEos(tokenizers.ByteTokenizer):

  def __init__(self, eos_id):
    self.eos_id = eos_id


def test_byte_tokenizer_stop_strings_and_eos():
  model = lib.tiny_model(vocab_size=259)
  sampler = Sampler(model, "bytes")
  kw = dict(temperature=1.0, seed=5)  # greedy repeats one token here
  free = sampler.generate(["hello"], 24, stop_at_eos=False, **kw)
  assert free.prompt_tokens[0] == [1] + [c + 3 for c in b"hello"]
  tokens = free.tokens[0]
  text = free.text[0]
  assert text == tokenizers.ByteTokenizer().decode(tokens)
  # A stop string spelled by two ASCII bytes of the output: the
  # device matches it (byte tokenization does not depend on context) and
  # stops right after it; the text is cut before it.
  start = next(i for i in range(2, len(tokens) - 1)
               if all(3 <= t < 3 + 128 for t in tokens[i:i + 2]))
  stop = bytes(t - 3 for t in tokens[start:start + 2]).decode()
  out = sampler.generate(["hello"], 24, stop=stop, stop_at_eos=False,
                         return_state=True, **kw)
  first = text.find(stop)
  assert out.text[0] == text[:first]
  assert out.finish_reasons == ["stop"]
  # Stopped on the device: the state holds the tokens through the stop.
  assert int(out.state.num_tokens[0]) == 32 + start + 2
  # EOS: a tokenizer whose EOS is the 4th generated token stops there and
  # leaves it out.
  eos = tokens[3]
  with_eos = Sampler(model, _ByteTokenizerWithEos(eos))
  out = with_eos.generate(["hello"], 24, **kw)
  assert out.tokens[0] == tokens[:tokens.index(eos)]
  assert out.finish_reasons == ["stop"]
  out = with_eos.generate(["hello"], 24, stop_at_eos=False, **kw)
  assert out.tokens[0] == tokens
