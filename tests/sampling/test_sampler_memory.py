"""Constant memory: the decode loop's compiled memory does not depend on the
generation length, and a 20,000-token generation runs on CPU."""

import time

import jax
import numpy as np

import sampling_testlib as lib
from recurrentgemma_jax.sampling import decode as decode_lib
from recurrentgemma_jax.sampling import logits as logits_lib
from recurrentgemma_jax.sampling import stopping


def _compiled_loop(sampler, state, capacity):
  b = state.batch_size
  inputs = decode_lib.DecodeInputs.create(
      1, jax.random.split(jax.random.key(0), b), stopping.StopCriteria())
  options = decode_lib.DecodeOptions(
      capacity=capacity, sampling=logits_lib.SamplingMode(), sync_every=8)
  return sampler._decode[True].lower(  # pylint: disable=protected-access
      sampler.params, state, inputs, options).compile()


def test_decode_memory_does_not_grow_with_the_generation_length():
  sampler = lib.tiny_sampler()
  state = jax.eval_shape(lambda: sampler.prefill([[1, 2, 3]]))
  short = _compiled_loop(sampler, state, 64).memory_analysis()
  long = _compiled_loop(sampler, state, 65536).memory_analysis()
  # Scratch memory and inputs are the same; the only length-dependent
  # buffer is the output token buffer (int32 per generated token).
  assert short.temp_size_in_bytes == long.temp_size_in_bytes
  assert short.argument_size_in_bytes == long.argument_size_in_bytes
  assert (long.output_size_in_bytes - short.output_size_in_bytes ==
          4 * (65536 - 64))
  # The state itself has the same shapes after any number of tokens.
  shapes = lambda tree: [x.shape for x in jax.tree.leaves(tree)]
  assert shapes(state) == shapes(
      jax.eval_shape(lambda: sampler.prefill([list(range(1, 60)) * 9])))


def test_twenty_thousand_tokens_on_cpu():
  sampler = lib.tiny_sampler()
  start = time.perf_counter()
  out = sampler.generate([[1, 2, 3]], 20_000, temperature=1.0, seed=0,
                         return_state=True)
  elapsed = time.perf_counter() - start
  assert len(out.tokens[0]) == 20_000
  assert out.finish_reasons == ["length"]
  assert int(out.state.num_tokens[0]) == 32 + 20_000
  init = sampler.model.init_cache(1)
  assert ([x.shape for x in jax.tree.leaves(out.state.cache)] ==
          [x.shape for x in jax.tree.leaves(init)])
  # The samples are the same as a short run's, token for token.
  short = sampler.generate([[1, 2, 3]], 24, temperature=1.0, seed=0)
  assert out.tokens[0][:24] == short.tokens[0]
  assert len(set(out.tokens[0][-1000:])) > 1
  assert elapsed < 120, f"20,000 tokens took {elapsed:.1f}s"
  print(f"20,000 tokens in {elapsed:.1f}s")
  assert np.isfinite(np.asarray(out.state.logits)).all()
