"""`python -m recurrentgemma_jax VERB [flags]`: see `recurrentgemma_jax.cli`."""

from recurrentgemma_jax import cli

if __name__ == "__main__":
  cli.main()
