"""The small-batch matrix-vector kernel against a float64 NumPy product.

On CPU it runs in Pallas interpret mode; on a GPU backend the same tests
run the compiled kernel.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gpu_matvec

INTERPRET = jax.default_backend() != "gpu"
_BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                      "matvec.py")


def _check(m, k, n, w_dtype, config, with_scale=False, seed=0):
  rng = np.random.default_rng([m, k, n, seed])
  x = rng.standard_normal((m, k)).astype(np.float32)
  if w_dtype == jnp.int8:
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
  else:
    w = np.asarray(jnp.asarray(rng.standard_normal((k, n)), w_dtype)
                   .astype(jnp.float32))
  scale = rng.uniform(0.001, 0.02, (n,)).astype(np.float32) if with_scale \
      else None
  got = gpu_matvec.matvec(jnp.asarray(x), jnp.asarray(w, w_dtype),
                          None if scale is None else jnp.asarray(scale),
                          interpret=INTERPRET, config=config)
  want = x.astype(np.float64) @ w.astype(np.float64)
  if scale is not None:
    want = want * scale
  assert got.shape == (m, n) and got.dtype == jnp.float32
  err = np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want))
  assert err < 1e-5, err


# (M, K, N, weight dtype, config): K and N not multiples of the tiles, K
# shorter than one tile, several splits with a short last one, one row and
# the most rows, pipelined or not.
CASES = [
    (1, 300, 70, jnp.float32, gpu_matvec.MatvecConfig(block_n=32, block_k=64)),
    (3, 257, 129, jnp.bfloat16,
     gpu_matvec.MatvecConfig(block_n=64, block_k=32, splits=3)),
    (4, 50, 40, jnp.float32,
     gpu_matvec.MatvecConfig(block_n=16, block_k=64, pipeline=False)),
    (2, 1000, 96, jnp.int8, gpu_matvec.MatvecConfig(block_n=32, block_k=128)),
    (1, 640, 256, jnp.bfloat16, gpu_matvec.MatvecConfig()),  # the defaults
]


@pytest.mark.parametrize("m,k,n,w_dtype,config", CASES)
def test_matches_float64_product(m, k, n, w_dtype, config):
  _check(m, k, n, w_dtype, config, with_scale=w_dtype == jnp.int8)


def test_splits_cover_k_without_empty_parts():
  config = gpu_matvec.MatvecConfig()
  for k, n in ((2560, 2560), (2560, 256000), (7680, 2560), (100, 64)):
    splits, rows = gpu_matvec.split_k(k, n, config)
    assert rows % config.block_k == 0 and splits * rows >= k
    assert (splits - 1) * rows < k
  # RecurrentGemma-2B's 2560 x 2560 projection: 40 output blocks, K in 7.
  assert gpu_matvec.split_k(2560, 2560, config) == (7, 384)


def test_bad_inputs_name_the_field():
  x = jnp.ones((1, 8), jnp.float32)
  with pytest.raises(ValueError, match="rows"):
    gpu_matvec.matvec(jnp.ones((5, 8)), jnp.ones((8, 4)), interpret=True)
  with pytest.raises(ValueError, match=r"x \[M, K\] and w \[K, N\]"):
    gpu_matvec.matvec(x, jnp.ones((7, 4)), interpret=True)
  with pytest.raises(ValueError, match="w must be"):
    gpu_matvec.matvec(x, jnp.ones((8, 4), jnp.float16), interpret=True)
  with pytest.raises(ValueError, match="scale must have N=4"):
    gpu_matvec.matvec(x, jnp.ones((8, 4), jnp.int8), jnp.ones((3,)),
                      interpret=True)
  with pytest.raises(ValueError, match="block_k must be a power of 2"):
    gpu_matvec.MatvecConfig(block_k=48)


def test_benchmark_checks_every_implementation_and_writes_rows(tmp_path):
  # benchmarks/matvec.py's CPU smoke mode: XLA, XLA padded to 16 rows and
  # two Pallas tile shapes, each checked against the float32 product
  # before it is timed.
  spec = importlib.util.spec_from_file_location("matvec_benchmark", _BENCH)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "matvec.json"
  assert bench.main(["--interpret", "--shapes", "200,48", "--runs", "1",
                     "--configs", "block_n=16,block_k=32",
                     "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert {(r["dtype"], r["impl"]) for r in rows} == {
      (d, i) for d in ("bfloat16", "int8")
      for i in ("xla", "xla_pad16", "pallas", "pallas block_n=16 block_k=32")}
  assert all(r["rel_err"] < 2e-2 and r["ms"] > 0 for r in rows)
  with pytest.raises(ValueError, match="block_k must be a power of 2"):
    bench.main(["--interpret", "--configs", "block_k=48"])
