"""Our sampler against the official `recurrentgemma.jax.Sampler` on the same
weights: same tokens, same logits (float32)."""

import numpy as np
import sentencepiece as spm
from recurrentgemma import jax as official

import sampling_testlib as lib
from recurrentgemma_jax.data import tokenizers
from recurrentgemma_jax.sampling import Sampler

PROMPTS = ["the cat sat", "a big red fox jumps over the lazy dog and then "
           "the small bird sings"]


def test_same_tokens_and_logits_as_the_official_sampler():
  vocab = spm.SentencePieceProcessor(
      model_file=lib.sentencepiece_model_path())
  _, model, params = lib.official_model()
  theirs = official.Sampler(model=model, vocab=vocab, params=params,
                            deterministic_sampling=True)
  ours = Sampler(lib.ours_from_official(), vocab)
  n = 16
  want = theirs(PROMPTS, total_generation_steps=n, return_logits=True,
                end_sampling_at_eos_token=False)
  got = ours.generate(PROMPTS, n, return_logits=True, stop_at_eos=False)
  lengths = [len(p) for p in got.prompt_tokens]
  # The second prompt is longer than the attention window (8 tokens).
  assert max(lengths) > 8 > min(lengths)
  assert got.prompt_tokens[0] == [vocab.bos_id()] + vocab.EncodeAsIds(
      PROMPTS[0])
  for i, length in enumerate(lengths):
    # The official sampler drops the first (longest - this prompt's length)
    # generated tokens of each row from its output; compare what it keeps.
    skip = max(lengths) - length
    assert len(got.tokens[i]) == n
    np.testing.assert_array_equal(want.tokens[i], got.tokens[i][skip:])
    np.testing.assert_allclose(want.logits[i], got.logits[i][skip:],
                               atol=1e-4, rtol=1e-4)
    assert want.text[i] == vocab.DecodeIds(got.tokens[i][skip:])
  # Our tokenizer module's SentencePieceTokenizer, from the model file,
  # gives the same results; text is the decoding of the tokens.
  by_path = Sampler(lib.ours_from_official(), lib.sentencepiece_model_path())
  assert isinstance(by_path.tokenizer.tok, tokenizers.SentencePieceTokenizer)
  again = by_path.generate(PROMPTS, n, return_logits=True, stop_at_eos=False)
  assert again.tokens == got.tokens
  assert again.prompt_tokens == got.prompt_tokens
  assert again.text == [vocab.decode(t) for t in got.tokens]
