"""The initialiser's threefry lowering switch (`state.fast_random_lowering`).

On one GPU the initialiser lowers threefry to JAX's CUDA kernel: the same
bits (checked on an H200 against the default lowering and the CPU,
docs/benchmarks.md), and 5 s instead of 76 s of compilation. These tests
pin when it switches and that it always switches back; on a GPU backend the
last one also checks the bits.
"""

import dataclasses

import jax
import numpy as np
import pytest

from recurrentgemma_jax.training import state as state_lib

_FLAG = "jax_threefry_gpu_kernel_lowering"


@dataclasses.dataclass
class FakeDevice:
  platform: str


def _flag():
  return getattr(jax.config, _FLAG)


@pytest.mark.parametrize("devices, inside", [
    ([FakeDevice("gpu")], True),
    ([FakeDevice("gpu"), FakeDevice("gpu")], False),  # would not partition
    ([FakeDevice("cpu")], False),
    ([FakeDevice("tpu")], False),
])
def test_switches_only_on_one_gpu_and_restores(devices, inside):
  assert not _flag()
  with state_lib.fast_random_lowering(devices):
    assert _flag() is inside
  assert not _flag()


def test_restores_after_an_error():
  with pytest.raises(RuntimeError, match="boom"):
    with state_lib.fast_random_lowering([FakeDevice("gpu")]):
      assert _flag()
      raise RuntimeError("boom")
  assert not _flag()


def test_keeps_a_user_setting():
  jax.config.update(_FLAG, True)
  try:
    with state_lib.fast_random_lowering([FakeDevice("cpu")]):
      assert _flag()
    assert _flag()
  finally:
    jax.config.update(_FLAG, False)


def test_same_bits_as_the_default_lowering():
  device = jax.devices()[0]
  draw = jax.jit(lambda key: jax.random.normal(key, (257, 33)))
  key = jax.random.key(3)
  default = np.asarray(draw(key))
  with state_lib.fast_random_lowering([device]):
    switched = np.asarray(jax.jit(
        lambda key: jax.random.normal(key, (257, 33)))(key))
  np.testing.assert_array_equal(switched, default)
  assert np.std(default) > 0.5  # real draws, not zeros
