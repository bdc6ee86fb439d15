"""Former entry point: `python -m recurrentgemma_jax.sample` runs
`recurrentgemma sample` (`recurrentgemma_jax.cli.sample`)."""

from recurrentgemma_jax import cli

if __name__ == "__main__":
  cli.run_moved("sample")
