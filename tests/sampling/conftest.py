"""Sampling tests compile many small programs: compile them with less XLA
backend optimization (same results, about half the compile time on CPU).
The setting is restored after each module."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
