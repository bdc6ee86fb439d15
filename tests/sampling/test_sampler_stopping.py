"""Stop criteria: resolution, device-side matching, text cuts."""

import jax.numpy as jnp
import numpy as np
import pytest

from recurrentgemma_jax.sampling import stopping


def _encode(text):
  return [ord(c) for c in text]


def _decode(ids):
  return "".join(chr(i) for i in ids)


def test_resolve_splits_ids_sequences_and_strings():
  c = stopping.resolve(["ab", 7, "x"], encode=_encode, eos_id=1,
                       stop_at_eos=True)
  assert c.token_ids == (1, 7, ord("x"))
  assert c.sequences == ((ord("a"), ord("b")),)
  assert c.strings == ("ab", "x")
  assert stopping.resolve(None, encode=None, eos_id=1,
                          stop_at_eos=False).token_ids == ()
  assert stopping.resolve(5, encode=None, eos_id=None,
                          stop_at_eos=True).token_ids == (5,)
  with pytest.raises(ValueError, match="tokenizer"):
    stopping.resolve("ab", encode=None, eos_id=None, stop_at_eos=False)
  with pytest.raises(TypeError):
    stopping.resolve([1.5], encode=None, eos_id=None, stop_at_eos=False)


def test_device_arrays_are_padded_and_right_aligned():
  c = stopping.StopCriteria(token_ids=(3,), sequences=((5, 6), (7, 8, 9)))
  ids, seqs = stopping.device_arrays(c)
  assert ids.shape == (4,) and ids.tolist() == [3, -1, -1, -1]
  assert seqs.shape == (2, 4)
  assert seqs.tolist() == [[-1, -1, 5, 6], [-1, 7, 8, 9]]
  ids, seqs = stopping.device_arrays(stopping.StopCriteria())
  assert ids.tolist() == [-1] * 4 and seqs.shape == (0, 0)


def test_is_stop_matches_tokens_and_sequence_tails():
  c = stopping.StopCriteria(token_ids=(3,), sequences=((5, 6),))
  ids, seqs = map(jnp.asarray, stopping.device_arrays(c))
  recent = jnp.asarray([
      [-1, 0, 5, 6],  # ends with 5 6: stop
      [-1, -1, -1, 6],  # only 6 generated: no stop
      [-1, 5, 6, 1],  # 5 6 earlier, not at the end: no stop
      [-1, -1, 9, 3],  # stop token
  ])
  token = recent[:, -1]
  got = stopping.is_stop(token, recent, ids, seqs)
  assert got.tolist() == [True, False, False, True]


def test_find_stop_and_token_cuts():
  assert stopping.find_stop("hello world", ["wor", "lo"]) == 3
  assert stopping.find_stop("hello", ["x"]) is None
  tokens = _encode("abcdef")
  assert stopping.tokens_before(tokens, 3, _decode) == 3
  assert stopping.tokens_through(tokens, 5, _decode) == 5
  # Multi-character tokens: "ab" "cd" "ef" with a stop string at 3 ("d").
  dec = lambda ids: "".join({0: "ab", 1: "cd", 2: "ef"}[i] for i in ids)
  assert stopping.tokens_before([0, 1, 2], 3, dec) == 1
  assert stopping.tokens_through([0, 1, 2], 4, dec) == 2
