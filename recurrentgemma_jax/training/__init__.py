"""The shared train / eval loop and its parts (optimizer, steps, state,
checkpoints, metrics, FLOP counts).

    from recurrentgemma_jax.training import train, evaluate

`train` and `evaluate` load lazily, so the step, state and optimizer modules
can be used (e.g. by benchmarks) without the data stack (grain, TFDS).
"""

import importlib

__all__ = ["evaluate", "train"]


def __getattr__(name: str):
  if name in __all__:
    return getattr(importlib.import_module(
        "recurrentgemma_jax.training.loop"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
