"""Test setup shared by every test: CPU only, float32 matmuls, slow marker."""

import os

# libtpu may be installed (the `tpu` extra, for ahead-of-time compilation);
# tests run on the CPU backend and must not try to open a TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Ahead-of-time TPU compilation loads libtpu; pytest workers (and their
# subprocesses) may load it at the same time, which its lock file forbids.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
