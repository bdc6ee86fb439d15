"""Test setup shared by every test: CPU only, float32 matmuls, slow marker."""

import os

# libtpu may be installed (the `tpu` extra, for ahead-of-time compilation);
# tests run on the CPU backend and must not try to open a TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
