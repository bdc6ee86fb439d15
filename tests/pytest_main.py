"""Bazel `py_test` entry point: runs pytest on the test's own sources."""

import os
import sys

import pytest

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(pytest.main([*sys.argv[1:], "-p", "no:cacheprovider"]))
