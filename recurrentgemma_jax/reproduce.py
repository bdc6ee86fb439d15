"""Former entry point: `python -m recurrentgemma_jax.reproduce` runs
`recurrentgemma reproduce` (`recurrentgemma_jax.cli.reproduce`)."""

from recurrentgemma_jax import cli

if __name__ == "__main__":
  cli.run_moved("reproduce")
