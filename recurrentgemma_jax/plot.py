"""Former entry point: `python -m recurrentgemma_jax.plot` runs
`recurrentgemma plot` (`recurrentgemma_jax.cli.plot`)."""

from recurrentgemma_jax import cli

if __name__ == "__main__":
  cli.run_moved("plot")
