r"""Times small-batch matrix-vector products: XLA's lowering against the
Pallas kernel of `pallas_kernels/gpu_matvec.py`, in one process.

The shapes are RecurrentGemma-2B's decode-step projections at batch 1 (the
recurrent block's 2560 x 2560 x/y/output projections, the x and y
projections as one 2560 x 5120 matrix, the MLP's 2560 x 7680 and
7680 x 2560), in bfloat16 and int8 (per-channel scales, as
`recurrentgemma_jax.nn.quantized` computes them). For each:

* `xla`: the model's own expression, `einsum("md,de->me")` accumulated in
  float32 (for int8, `nn.quantized.scaled_einsum`);
* `xla_pad16`: the same with x padded to 16 rows, which XLA lowers as a
  GEMM rather than a reduction fusion;
* `pallas`: `gpu_matvec.matvec` with its default tiles, and any
  `--configs` given.

Every result is checked against the float32 product first. Weights
rotate among enough copies to exceed twice the 60 MB L2, so they come from
HBM as in a decode step. The time per product is taken inside one jitted
call that runs every copy's product in turn, each waiting for the one
before as a decode step's projections do (the median of `--runs` calls,
`benchmarks/scan.py`'s timer, over the number of copies): a Python dispatch
per product costs about 40 us on the H200, more than the kernels, so the
per-call time (also reported) measures dispatch, not the kernel. The table
gives ms per product, the weight bytes read over that time (TB/s), and that
as a fraction of a device copy timed in the same run.

    python3 benchmarks/matvec.py --runs 21 --out $OUT/matvec.json
    python3 benchmarks/matvec.py --configs "block_n=128;block_k=256,num_warps=8"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # run by path or loaded from a test
  sys.path.insert(0, _HERE)
import scan as scan_bench  # noqa: E402  pylint: disable=g-import-not-at-top

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pallas_kernels import gpu_matvec  # noqa: E402
from recurrentgemma_jax.nn import quantized  # noqa: E402

_MAX_SETS = 256

# (K, N) of the decode step's weights.
SHAPES = ((2560, 2560), (2560, 5120), (2560, 7680), (7680, 2560))


def _fns(dtype: str, configs, interpret: bool):
  """name -> f(x, w, scale) computing `x @ w` the way its row names."""

  def xla(x, w, scale):
    if dtype == "int8":
      return quantized.scaled_einsum("md,de->me", x, w, scale)
    return jnp.einsum("md,de->me", x, w,
                      preferred_element_type=jnp.float32).astype(x.dtype)

  def xla_pad16(x, w, scale):
    padded = jnp.zeros((16, x.shape[1]), x.dtype).at[:x.shape[0]].set(x)
    return xla(padded, w, scale)[:x.shape[0]]

  fns = {"xla": xla, "xla_pad16": xla_pad16}
  for options in configs:
    config = gpu_matvec.MatvecConfig(**options)
    name = "pallas" + "".join(f" {k}={v}" for k, v in options.items())
    fns[name] = _pallas_fn(config, dtype, interpret)
  return {name: jax.jit(fn) for name, fn in fns.items()}


def _pallas_fn(config, dtype, interpret):
  def pallas(x, w, scale):
    return gpu_matvec.matvec(x, w, scale if dtype == "int8" else None,
                             interpret=interpret, config=config)
  return pallas


def _chained(fn):
  """All weight sets' products in one jitted call, each waiting for the one
  before (as a decode step's projections do): the time per product is the
  kernel's, without a Python dispatch per call."""

  def run(x, weights):
    for q, scale in weights:
      y = fn(x, q, scale)
      x = x + (y[:, :1] * 0).astype(x.dtype)  # the data dependence
    return x

  return jax.jit(run)


def _weights(k, n, dtype, n_sets):
  sets = []
  for i in range(n_sets):
    w = jax.random.normal(jax.random.key(i), (k, n), jnp.float32) * 0.02
    if dtype == "int8":
      q, scale = quantized.quantize(w, axis=0)
      sets.append((q, scale.reshape(1, n)))
    else:
      sets.append((w.astype(jnp.bfloat16), None))
  jax.block_until_ready(sets)
  return sets


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=1)
  parser.add_argument("--runs", type=int, default=21)
  parser.add_argument("--dtypes", default="bfloat16,int8")
  parser.add_argument("--configs", default="",
                      help="extra Pallas tiles: block_n=128,block_k=64;...")
  parser.add_argument("--shapes", default="",
                      help="K,N;K,N;... (default: SHAPES)")
  parser.add_argument("--interpret", action="store_true",
                      help="CPU smoke test: Pallas interpret mode, no copy "
                      "bandwidth")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  shapes = [tuple(int(v) for v in s.split(",")) for s in
            args.shapes.split(";") if s] or list(SHAPES)
  configs = [{}] + scan_bench._parse_options(args.configs)  # pylint: disable=protected-access
  for options in configs:  # bad tiles fail before anything is timed
    gpu_matvec.MatvecConfig(**options)
  copy_tbs = (float("nan") if args.interpret else
              max(scan_bench.measure_copy_bandwidth(args.runs).values()))
  info = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "copy_tb_s": copy_tbs, "rows": args.rows}
  print(json.dumps(info), flush=True)
  results = []
  for dtype in args.dtypes.split(","):
    fns = _fns(dtype, configs, args.interpret)
    chains = {name: _chained(fn) for name, fn in fns.items()}
    for k, n in shapes:
      itemsize = 1 if dtype == "int8" else 2
      # Enough copies to exceed twice the L2, at most _MAX_SETS (the chained
      # timing traces one product per copy); interpret mode has no cache.
      n_sets = 2 if args.interpret else min(_MAX_SETS, max(
          2, math.ceil(2 * scan_bench.L2_BYTES / (k * n * itemsize))))
      weights = _weights(k, n, dtype, n_sets)
      x = jax.random.normal(jax.random.key(99), (args.rows, k), jnp.bfloat16)
      want = None
      for name, fn in fns.items():
        q, scale = weights[0]
        got = fn(x, q, scale).astype(jnp.float32)
        if want is None:
          w32 = q.astype(jnp.float32) * (1 if scale is None else scale)
          want = x.astype(jnp.float32) @ w32
        err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
        ms_call = scan_bench.time_calls(
            lambda i: fn(x, *weights[i]), scan_bench._jax_sync,  # pylint: disable=protected-access,cell-var-from-loop
            len(weights), args.runs)
        chain = chains[name]
        ms = scan_bench.time_calls(
            lambda _: chain(x, weights), scan_bench._jax_sync,  # pylint: disable=protected-access,cell-var-from-loop
            1, args.runs) / len(weights)
        tbs = k * n * itemsize / (ms * 1e-3) / 1e12
        row = {"dtype": dtype, "k": k, "n": n, "impl": name, "ms": ms,
               "ms_per_call": ms_call, "tb_s": tbs,
               "copy_frac": tbs / copy_tbs, "rel_err": err}
        results.append(row)
        print(json.dumps(row), flush=True)
        if err > 2e-2:
          print(f"WRONG RESULT: {name} {dtype} {k}x{n}: {err:.2e}")
          return 1
  print("| dtype | K x N | implementation | ms in one jit | TB/s | / copy "
        "| ms per call |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['dtype']} | {r['k']} x {r['n']} | {r['impl']} "
          f"| {r['ms']:.4f} | {r['tb_s']:.2f} | {r['copy_frac']:.0%} "
          f"| {r['ms_per_call']:.4f} |")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"info": info, "rows": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
