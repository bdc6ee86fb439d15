"""Former entry point: `python -m recurrentgemma_jax.evaluate` runs
`recurrentgemma evaluate` (`recurrentgemma_jax.cli.evaluate`)."""

from recurrentgemma_jax import cli

if __name__ == "__main__":
  cli.run_moved("evaluate")
