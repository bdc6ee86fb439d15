"""Bad sampler inputs raise a clear error instead of a wrong answer, and
streamed text never shows a stop string."""

import string

import numpy as np
import pytest

import sampling_testlib as lib
from recurrentgemma_jax.sampling import Sampler
from recurrentgemma_jax.sampling import SamplingParams
from recurrentgemma_jax.sampling import stopping

MQA = dict(window=None, blocks=("attention", "attention"))


@pytest.mark.parametrize("prompts, match", [
    ([1.7, 2.2], "must be integers"),  # was truncated to [1, 2]
    ([[1, 2], [3.0]], "must be integers"),
    (np.array([1.0, 2.0]), "must be integers"),
    ([1, 61], "token id 61 .* outside the vocabulary \\[0, 61\\)"),
    ([-1, 2], "token id -1 .* outside"),  # was silently id 60
])
def test_bad_prompt_ids_are_rejected(prompts, match):
  sampler = lib.tiny_sampler()
  with pytest.raises(ValueError, match=match):
    sampler.generate(prompts, 2)
  with pytest.raises(ValueError, match=match):
    next(sampler.stream(prompts, 2))


def test_bad_ids_are_rejected_when_continuing_a_state():
  sampler = lib.tiny_sampler()
  state = sampler.prefill([[1, 2]])
  with pytest.raises(ValueError, match="outside the vocabulary"):
    sampler.extend(state, [[5, 99]])
  with pytest.raises(ValueError, match="must be integers"):
    sampler.generate([[0.5]], 2, state=state)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=2, temperature=float("nan")), "temperature"),
    (dict(max_new_tokens=2, temperature=float("inf")), "temperature"),
    (dict(max_new_tokens=2, temperature=-0.5), "temperature"),
    (dict(max_new_tokens=2, temperature=1.0, top_p=float("nan")), "top_p"),
])
def test_bad_generation_options_are_rejected(kwargs, match):
  sampler = lib.tiny_sampler()
  with pytest.raises(ValueError, match=match):
    sampler.generate([[1, 2]], **kwargs)
  with pytest.raises(ValueError, match=match):
    next(sampler.stream([[1, 2]], **kwargs))


def test_sampling_params_reject_non_finite_temperature():
  for bad in (float("nan"), float("inf"), "0.5", None):
    with pytest.raises(ValueError, match="temperature"):
      SamplingParams(temperature=bad)
  assert SamplingParams(np.float32(0.5)).temperature == 0.5


def test_global_attention_cache_too_short_for_the_prompt_is_an_error():
  # A ring buffer of 16 keys cannot hold a 40-token prompt: the sampler
  # returned wrong tokens instead of refusing.
  prompt = [int(t) for t in np.random.RandomState(0).randint(1, 61, 40)]
  want = lib.tiny_sampler(**MQA).generate([prompt], 8, temperature=1.0,
                                          seed=2)
  short = Sampler(lib.tiny_model(**MQA), cache_length=16)
  with pytest.raises(ValueError, match="cache holds 16 tokens; this call "
                     "needs 48"):
    short.generate([prompt], 8)
  with pytest.raises(ValueError, match="cache holds 16"):
    next(short.stream([prompt], 8))
  # Exactly enough room gives the right tokens; the prompt's left padding
  # does not count (it is a document of its own, overwritten first).
  fits = Sampler(lib.tiny_model(**MQA), cache_length=48)
  got = fits.generate([prompt], 8, temperature=1.0, seed=2)
  assert got.tokens == want.tokens
  rows = [prompt[:10], prompt[:3]]
  want = lib.tiny_sampler(**MQA).generate(rows, 6, temperature=1.0, seed=2)
  got = short.generate(rows, 6, temperature=1.0, seed=2)
  assert got.tokens == want.tokens


class _CharTokenizer:
  """One character per token id (the tiny models' 61 ids)."""

  vocab_size = 61
  bos_id = eos_id = pad_id = None
  chars = (string.ascii_letters + string.digits)[:61]

  def encode(self, text):
    return [self.chars.index(c) for c in text]

  def decode(self, ids):
    return "".join(self.chars[i] for i in ids)


def test_stream_never_shows_a_multi_character_stop_string():
  # It crashed (`stopped` was a read-only view of a device array) after
  # the first characters of the stop string had been yielded.
  sampler = Sampler(lib.tiny_model(), _CharTokenizer())
  kw = dict(temperature=1.0, seed=4)
  free = sampler.generate(["abc"], 16, **kw).text[0]
  stop = free[5:8]
  assert len(set(stop)) > 1  # a real multi-character stop string
  want = sampler.generate(["abc"], 16, stop=stop, **kw)
  assert want.finish_reasons == ["stop"] and stop not in want.text[0]
  steps = list(sampler.stream(["abc"], 16, stop=stop, **kw))
  shown = "".join(s.text[0] for s in steps)
  assert shown == want.text[0]
  assert steps[-1].finished == [True]
  # Held-back text that turns out not to be a stop string is shown (here
  # a stop string whose first character the row generates, never whole).
  never = next(stop[0] + c for c in _CharTokenizer.chars
               if stop[0] + c not in free)
  steps = list(sampler.stream(["abc"], 16, stop=never, **kw))
  assert "".join(s.text[0] for s in steps) == free
  assert steps[-1].finished == [False]


def test_shown_length_holds_back_a_possible_stop_prefix():
  assert stopping.shown_length("hello th", ["the"]) == 6
  assert stopping.shown_length("hello t", ["the", "xyz"]) == 6
  assert stopping.shown_length("hello", ["the"]) == 5
  assert stopping.shown_length("ab", ["abc"]) == 0
  assert stopping.shown_length("", ["abc"]) == 0
  assert stopping.shown_length("hello", []) == 5
