"""The initialiser's threefry lowering switch (`state.fast_random_lowering`).

On one GPU the initialiser lowers threefry to JAX's CUDA kernel: the same
bits (checked on an H200 against the default lowering and the CPU,
docs/benchmarks.md), and 5 s instead of 76 s of compilation. These tests
pin when it switches and that it always switches back; on a GPU backend the
last one also checks the bits.
"""

import dataclasses
import threading

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


@pytest.mark.parametrize("thread_local", [True, False])
def test_restores_after_an_error(thread_local, monkeypatch):
  if thread_local:  # this JAX has the option's thread-local context
    assert state_lib._thread_local_threefry_kernel() is not None  # pylint: disable=protected-access
  else:  # a JAX without it: the global flag is set and restored
    monkeypatch.setattr(state_lib, "_thread_local_threefry_kernel",
                        lambda: None)
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


def test_other_threads_keep_their_setting():
  """The switch is thread-local: a thread tracing while another
  initialises does not get the CUDA lowering."""
  seen = {}
  inside, leave = threading.Event(), threading.Event()

  def initialiser():
    with state_lib.fast_random_lowering([FakeDevice("gpu")]):
      seen["initialiser"] = _flag()
      inside.set()
      leave.wait(10)

  thread = threading.Thread(target=initialiser)
  thread.start()
  assert inside.wait(10)
  seen["other"] = _flag()
  leave.set()
  thread.join(10)
  assert seen == {"initialiser": True, "other": False}
  assert not _flag()


@pytest.mark.parametrize("shape", [(7,), (1024, 3072), (32000, 64),
                                   (3, 5, 129)])
def test_same_bits_as_the_default_lowering(shape):
  # On CPU both sides take the default lowering; on one GPU the second is
  # the CUDA kernel (the H200 probe of docs/benchmarks.md).
  device = jax.devices()[0]

  def draws():
    return jax.jit(lambda key: (
        jax.random.bits(key, shape), jax.random.normal(key, shape),
        jax.random.truncated_normal(key, -2.0, 2.0, shape)))(jax.random.key(3))

  default = [np.asarray(a) for a in draws()]
  with state_lib.fast_random_lowering([device]):
    switched = [np.asarray(a) for a in draws()]
  for got, want in zip(switched, default):
    np.testing.assert_array_equal(got, want)
  if np.prod(shape) > 100:
    assert np.std(default[1]) > 0.5  # real draws, not zeros
