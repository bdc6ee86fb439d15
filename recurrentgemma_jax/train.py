"""Former entry point: `python -m recurrentgemma_jax.train` runs
`recurrentgemma train` (`recurrentgemma_jax.cli.train`)."""

from recurrentgemma_jax import cli

if __name__ == "__main__":
  cli.run_moved("train")
