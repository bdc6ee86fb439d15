"""Sampler logits equal one forward pass: padded batches, long generations
past the attention window, document starts, global attention."""

import numpy as np
import pytest

import sampling_testlib as lib

ATOL = 2e-5

PROMPTS = [[5, 9, 17], [3, 1, 4, 1, 5, 9, 2, 6, 5], [42]]


def _check_against_forward(model, prompts, out):
  rows = [list(p) + list(t) for p, t in zip(prompts, out.tokens)]
  full = lib.forward_rows(model, rows)
  for prompt, tokens, logits, ref in zip(prompts, out.tokens, out.logits,
                                         full):
    want = ref[len(prompt) - 1:len(prompt) - 1 + len(tokens)]
    np.testing.assert_allclose(logits, want, atol=ATOL, rtol=1e-5)
    # Greedy: each token is the argmax of the logits it came from.
    np.testing.assert_array_equal(tokens, want.argmax(-1))


def test_greedy_batch_of_different_lengths_equals_forward_pass():
  """24 tokens with window 4: far past the window; rows are left-padded."""
  sampler = lib.tiny_sampler()
  out = sampler.generate(PROMPTS, 24, return_logits=True,
                         return_logprobs=True)
  assert [len(t) for t in out.tokens] == [24, 24, 24]
  assert out.finish_reasons == ["length"] * 3
  _check_against_forward(sampler.model, PROMPTS, out)
  for logits, tokens, logprobs in zip(out.logits, out.tokens, out.logprobs):
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(logprobs, ref[np.arange(len(tokens)), tokens],
                               atol=1e-5)


def test_padded_row_equals_the_row_alone():
  sampler = lib.tiny_sampler()
  batch = sampler.generate(PROMPTS, 24, return_logits=True,
                           return_logprobs=True)
  for i, prompt in enumerate(PROMPTS):
    alone = sampler.generate([prompt, prompt, prompt], 24,
                             return_logits=True, return_logprobs=True)
    assert alone.tokens[0] == batch.tokens[i]
    np.testing.assert_allclose(alone.logits[0], batch.logits[i], atol=ATOL)


def test_padding_is_a_separate_document():
  """The packed row the sampler builds (a padding document, then the prompt
  restarting at segment position 0) gives the prompt's own logits."""
  model = lib.tiny_model()
  prompt, pad = [3, 1, 4, 1, 5, 9], [0] * 7
  packed = lib.forward_rows(
      model, [pad + prompt],
      segment_pos=[list(range(7)) + list(range(6))])[0][7:]
  alone = lib.forward_rows(model, [prompt])[0]
  np.testing.assert_allclose(packed, alone, atol=ATOL)
  # And the reverse: the padding document does see its own tokens.
  assert not np.allclose(lib.forward_rows(model, [pad + prompt])[0][7:],
                         alone, atol=1e-3)


def test_global_attention_sampling_equals_forward_pass():
  sampler = lib.tiny_sampler(window=None, blocks=("attention", "recurrent"))
  out = sampler.generate(PROMPTS, 24, return_logits=True,
                         return_logprobs=True)
  _check_against_forward(sampler.model, PROMPTS, out)


def test_bad_arguments_are_rejected():
  sampler = lib.tiny_sampler()
  with pytest.raises(ValueError, match="vocabulary"):
    sampler.generate([[70]], 3)
  with pytest.raises(ValueError, match="tokenizer"):
    sampler.generate(["text"], 3)
  with pytest.raises(ValueError, match="at least one token"):
    sampler.generate([[]], 3)
  with pytest.raises(ValueError, match="temperature"):
    sampler.generate([[1]], 3, temperature=-1.0)
