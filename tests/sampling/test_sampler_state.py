"""Continuing rows from a returned state, stop conditions, seeds and
streaming."""

import numpy as np

import sampling_testlib as lib

ATOL = 2e-5
PROMPTS = [[5, 9, 17], [3, 1, 4, 1, 5, 9, 2, 6, 5], [42]]


def test_continuation_equals_one_long_forward_pass():
  """Generate, append ragged prompts to the returned state, generate more:
  the logits are those of one forward pass over everything."""
  sampler = lib.tiny_sampler()
  first = sampler.generate(PROMPTS, 12, return_state=True,
                           return_logits=True)
  more = [[7, 7], [11, 12, 13, 14, 15], []]  # ragged, one row adds nothing
  second = sampler.generate(more, 12, state=first.state, return_state=True,
                            return_logits=True)
  rows = [p + a + m + b for p, a, m, b in
          zip(PROMPTS, first.tokens, more, second.tokens)]
  full = lib.forward_rows(sampler.model, rows)
  for p, a, m, b, logits, ref in zip(PROMPTS, first.tokens, more,
                                     second.tokens, second.logits, full):
    start = len(p) + len(a) + len(m) - 1
    np.testing.assert_allclose(logits, ref[start:start + len(b)], atol=ATOL,
                               rtol=1e-5)
  # The state counts every consumed token: the prompts, left-padded to 32,
  # then everything after them.
  consumed = np.asarray(second.state.num_tokens)
  after_prompt = [len(r) - len(p) for r, p in zip(rows, PROMPTS)]
  np.testing.assert_array_equal(consumed, 32 + np.asarray(after_prompt))


def test_stopped_rows_keep_their_state():
  """Row 0 stops early on a stop token while row 1 runs on; continuing
  row 0 afterwards is exact (its state froze after the stop token)."""
  sampler = lib.tiny_sampler()
  free = sampler.generate(PROMPTS, 12)
  stop_token = free.tokens[0][3]
  first_stop = free.tokens[0].index(stop_token)
  out = sampler.generate(PROMPTS, 12, stop=[stop_token], return_state=True,
                         return_logits=True)
  assert out.tokens[0] == free.tokens[0][:first_stop]
  assert out.finish_reasons[0] == "stop"
  for i in (1, 2):
    if stop_token not in free.tokens[i]:
      assert out.tokens[i] == free.tokens[i]
      assert out.finish_reasons[i] == "length"
  more = sampler.generate([[8, 9], [8, 9], [8, 9]], 5, state=out.state,
                          return_logits=True)
  consumed = PROMPTS[0] + free.tokens[0][:first_stop + 1] + [8, 9]
  ref = lib.forward_rows(sampler.model, [consumed + more.tokens[0]])[0]
  np.testing.assert_allclose(more.logits[0],
                             ref[len(consumed) - 1:len(consumed) + 4],
                             atol=ATOL, rtol=1e-5)


def test_conversation_turns_equal_one_forward_pass():
  sampler = lib.tiny_sampler()
  chat = sampler.conversation(max_new_tokens=6)
  reply1 = chat.send([5, 9, 17])
  reply2 = chat.send([2, 3])
  reply3 = chat.send([4], return_logits=True)
  assert len(reply1) == len(reply2) == 6
  seq = [5, 9, 17] + reply1 + [2, 3] + reply2 + [4]
  ref = lib.forward_rows(sampler.model, [seq + reply3])[0]
  np.testing.assert_allclose(chat.history[-1][1].logits[0],
                             ref[len(seq) - 1:len(seq) + 5], atol=ATOL,
                             rtol=1e-5)


def test_seeds():
  sampler = lib.tiny_sampler()
  kw = dict(temperature=1.0, top_k=20, top_p=0.95)
  a = sampler.generate(PROMPTS, 12, seed=1, **kw)
  b = sampler.generate(PROMPTS, 12, seed=1, **kw)
  c = sampler.generate(PROMPTS, 12, seed=2, **kw)
  assert a.tokens == b.tokens
  assert a.tokens != c.tokens
  # Per-row seeds: a row's samples do not depend on its batch.
  d = sampler.generate(PROMPTS, 12, seed=[7, 8, 9], **kw)
  e = sampler.generate([PROMPTS[1]] * 3, 12, seed=[8, 1, 2], **kw)
  assert d.tokens[1] == e.tokens[0]
  # Temperature is traced: a new value reuses the compiled loop.
  cold = sampler.generate(PROMPTS, 12, seed=1, temperature=1e-4, top_k=20,
                          top_p=0.95)
  greedy = sampler.generate(PROMPTS, 12)
  assert cold.tokens == greedy.tokens


def test_stream_yields_the_same_tokens_as_generate():
  sampler = lib.tiny_sampler()
  kw = dict(temperature=1.0, top_k=20, seed=3)
  want = sampler.generate(PROMPTS, 10, **kw)
  steps = list(sampler.stream(PROMPTS, 10, **kw))
  assert len(steps) == 10
  got = [[s.tokens[i] for s in steps] for i in range(3)]
  assert got == want.tokens
  assert steps[-1].finished == [False] * 3


def test_stream_stops_rows_and_continues_from_its_state():
  sampler = lib.tiny_sampler()
  free = sampler.generate(PROMPTS, 8)
  stop_token = free.tokens[0][2]
  stream = sampler.stream(PROMPTS, 8, stop=stop_token)
  assert stream.state is None  # until the loop has ended
  steps = list(stream)
  assert list(stream) == [] and stream.state is not None  # kept when spent
  row0 = [s.tokens[0] for s in steps if s.tokens[0] is not None]
  assert row0 == free.tokens[0][:free.tokens[0].index(stop_token) + 1]
  assert steps[-1].finished[0]
  more = sampler.generate([[1], [1], [1]], 4, state=stream.state,
                          return_logits=True)
  consumed = PROMPTS[0] + row0 + [1]
  ref = lib.forward_rows(sampler.model, [consumed + more.tokens[0]])[0]
  np.testing.assert_allclose(more.logits[0],
                             ref[len(consumed) - 1:len(consumed) + 3],
                             atol=ATOL, rtol=1e-5)
