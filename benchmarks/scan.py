r"""Times the linear-scan implementations and the fused RG-LRU on one GPU.

For every shape and dtype: forward and forward+backward of each
`linear_scan` impl (sequential, associative, and the pallas_gpu kernels:
the walking one, the time-parallel chunked one, and what `variant="auto"`
picks), the fused RG-LRU
against the unfused one (gate math in XLA + the pallas_gpu scan), and, when
the `accelerated_scan` package (PyTorch + Triton) imports, its Triton scan
on its own `[B, C, T]` layout, all in one process. A device copy is timed in
the same run; the table gives median ms, effective GB/s (the minimum bytes
each op must move, see `_bytes`) and that bandwidth as a fraction of the
copy's.

    python benchmarks/scan.py                       # the table
    python benchmarks/scan.py --check               # + checks vs oracles
    python benchmarks/scan.py --sweep --sequential_once \
        --shapes "8,4096,2560;16,2048,4096" --runs 21  # docs/benchmarks.md
    python benchmarks/scan.py --grid --runs 11      # the issue-14 grid
    python benchmarks/scan.py --only_sweep --shapes "1,16384,2560" \
        --variant_sweep "chunk=64;variant=lookback,chunk=128"  # tile shapes

Timing: after warm-up, each timed run dispatches `inner` calls back to back
(rotating among input sets that together exceed the L2 cache) and waits for
the last, so host dispatch overlaps device work; a run's time is its wall
time over `inner`. The median of `--runs` such runs is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

# JAX and PyTorch share the GPU: let each allocate what it uses.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jaxlib  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pallas_kernels  # noqa: E402
from pallas_kernels import gpu_rg_lru  # noqa: E402
from pallas_kernels import gpu_common  # noqa: E402
from pallas_kernels import reference  # noqa: E402
from pallas_kernels.rg_lru import rg_lru  # noqa: E402
from pallas_kernels.rg_lru import rg_lru_reference  # noqa: E402

try:  # Optional: the PyTorch + Triton baseline.
  import torch
  from accelerated_scan import scalar as accelerated_scan
except ImportError:
  torch = accelerated_scan = None

L2_BYTES = 60 * 2**20  # H100/H200 L2; inputs rotate until they exceed 2x this.
SHAPES = ((8, 4096, 2560), (16, 2048, 4096), (2, 8192, 2560))
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# pallas_gpu variants timed with --sweep at the first shape, besides the
# defaults: (block_d, chunk, bwd_chunk, pipeline).
SWEEP = (
    (32, 32, 32, True), (32, 64, 32, False), (64, 32, 16, True),
    (64, 64, 64, False), (32, 32, 16, True),
)
# The same for the fused RG-LRU.
RG_LRU_SWEEP = ((32, 16, 8, False), (32, 8, 8, True), (32, 16, 16, True))


# ----------------------------------------------------------------------------
# Timing.
# ----------------------------------------------------------------------------


def time_calls(
    call: Callable[[int], object], sync: Callable[[object], None],
    n_sets: int, runs: int,
) -> float:
  """Median milliseconds of `call(i)` (i picks the input set); see docstring."""
  for i in range(max(2, n_sets)):  # Compile and warm up every input set.
    sync(call(i % n_sets))
  start = time.perf_counter()
  sync(call(0))
  single = time.perf_counter() - start
  # Enough calls per run to cover ~5 ms, a multiple of the input sets.
  inner = max(1, min(64, round(5e-3 / max(single, 1e-6))))
  inner = math.ceil(inner / n_sets) * n_sets
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    for i in range(inner):
      out = call(i % n_sets)
    sync(out)
    times.append((time.perf_counter() - start) / inner)
  return 1e3 * statistics.median(times)


def _jax_sync(out):
  jax.block_until_ready(out)


def _n_sets(bytes_per_set: int) -> int:
  return max(1, min(8, math.ceil(2 * L2_BYTES / bytes_per_set)))


def _bytes(op: str, shape: Sequence[int], itemsize: int) -> int:
  """Least HBM traffic of `op`: each `[B, T, D]` array read or written once.

  scan fwd: x, a -> y. scan fwd+bwd: that, then dy, a, y -> dx, da.
  rg_lru fwd: x, gate_x, gate_a -> y. fwd+bwd: that, then
  dy, x, gate_x, gate_a, y -> dx, d gate_x, d gate_a.
  """
  arrays = {"scan": 3, "scan+bwd": 8, "rg_lru": 4, "rg_lru+bwd": 12}[op]
  return arrays * math.prod(shape) * itemsize


# ----------------------------------------------------------------------------
# Workloads.
# ----------------------------------------------------------------------------


def _random_sets(shape, dtype, n_sets, seed, *, rg_lru_inputs=False):
  """`n_sets` dicts of fresh random device inputs (never zeros)."""
  b, t, d = shape
  sets = []
  for i in range(n_sets):
    key = jax.random.key(seed * 1000 + i)
    k = jax.random.split(key, 6)
    s = {
        "x": jax.random.normal(k[0], shape, dtype),
        "a": jax.random.uniform(k[1], shape, dtype, 0.5, 1.0),
        "dy": jax.random.normal(k[2], shape, dtype),
    }
    if rg_lru_inputs:
      s["gate_x"] = jax.random.normal(k[3], shape, dtype)
      s["gate_a"] = jax.random.normal(k[4], shape, dtype)
      s["a_param"] = jax.random.uniform(k[5], (d,), jnp.float32, -4.0, 2.0)
      s["reset"] = (jnp.arange(t) % 1024 == 0)[None].repeat(b, 0)
    sets.append(s)
  jax.block_until_ready(sets)
  return sets


def _scan_fns(impl: str, **options):
  def fwd(x, a):
    return pallas_kernels.linear_scan(x, a, impl=impl, **options)[0]

  def fwd_bwd(x, a, dy):
    _, vjp = jax.vjp(fwd, x, a)
    return vjp(dy)

  return jax.jit(fwd), jax.jit(fwd_bwd)


def _rg_lru_fns(fused: bool, **options):
  def fwd(x, gate_x, gate_a, a_param, reset):
    if fused and options:
      return gpu_rg_lru.rg_lru(
          x, gate_x, gate_a, a_param, reset, **options)[0]
    if fused:
      return rg_lru(x, gate_x, gate_a, a_param, reset, impl="pallas_gpu")[0]
    return rg_lru_reference(
        x, gate_x, gate_a, a_param, reset, impl="pallas_gpu"
    )[0]

  def fwd_bwd(x, gate_x, gate_a, a_param, reset, dy):
    _, vjp = jax.vjp(lambda *p: fwd(*p, reset), x, gate_x, gate_a, a_param)
    return vjp(dy)

  return jax.jit(fwd), jax.jit(fwd_bwd)


# Row names of the pallas_gpu variants (`gpu_scan.linear_scan(variant=)`).
PALLAS_VARIANTS = {  # ("lookback" needs RG_EXPERIMENTAL_LOOKBACK=1)
    "pallas_gpu walk": dict(variant="walk"),
    "pallas_gpu chunked": dict(variant="chunked"),
    "pallas_gpu tiled": dict(variant="tiled"),
    "pallas_gpu lookback": dict(variant="lookback"),
    "pallas_gpu auto": dict(variant="auto"),
}
# The --grid shapes (B, T, D) of the issue: every combination that fits.
GRID = tuple((b, t, d) for d in (2560, 4096) for t in (2048, 8192, 32768)
             for b in (1, 2, 8, 16))
# Device bytes a fwd+bwd row may need, in units of one [B, T, D] array (JAX
# and PyTorch's inputs, outputs and gradients); larger rows are skipped.
ARRAYS_PER_ROW = 15
MEMORY_BUDGET = 125e9


def bench_scan(shape, dtype, impl, runs, **options):
  if impl in PALLAS_VARIANTS:
    impl, options = "pallas_gpu", {**PALLAS_VARIANTS[impl], **options}
  itemsize = jnp.dtype(dtype).itemsize
  sets = _random_sets(shape, dtype, _n_sets(3 * math.prod(shape) * itemsize), 1)
  fwd, fwd_bwd = _scan_fns(impl, **options)
  slow = impl == "sequential"
  runs = min(runs, 21) if slow else runs
  t_fwd = time_calls(
      lambda i: fwd(sets[i]["x"], sets[i]["a"]), _jax_sync, len(sets), runs
  )
  t_bwd = time_calls(
      lambda i: fwd_bwd(sets[i]["x"], sets[i]["a"], sets[i]["dy"]),
      _jax_sync, len(sets), runs,
  )
  return t_fwd, t_bwd


def precompile_scans(rows, threads: int) -> float:
  """Compiles every `(shape, dtype, impl)`'s forward and forward+backward in
  `threads` host threads and returns the seconds taken.

  XLA and the Triton pipeline release the GIL while compiling, so threads
  compile side by side. The executables land in JAX's persistent
  compilation cache (`main` turns it on for `--precompile`), where the
  timing loop's first call of each jitted function finds them: the grid's
  time goes to timing, not to compiling one function at a time.
  """
  import concurrent.futures  # pylint: disable=g-import-not-at-top

  def compile_row(row):
    shape, dtype, impl = row
    options = {}
    if impl in PALLAS_VARIANTS:
      impl, options = "pallas_gpu", PALLAS_VARIANTS[impl]
    fwd, fwd_bwd = _scan_fns(impl, **options)
    spec = jax.ShapeDtypeStruct(shape, dtype)
    fwd.lower(spec, spec).compile()
    fwd_bwd.lower(spec, spec, spec).compile()

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(compile_row, rows))
  return time.perf_counter() - start


def bench_rg_lru(shape, dtype, fused, runs, **options):
  itemsize = jnp.dtype(dtype).itemsize
  sets = _random_sets(
      shape, dtype, _n_sets(4 * math.prod(shape) * itemsize), 2,
      rg_lru_inputs=True,
  )
  fwd, fwd_bwd = _rg_lru_fns(fused, **options)
  names = ("x", "gate_x", "gate_a", "a_param", "reset")
  t_fwd = time_calls(
      lambda i: fwd(*(sets[i][n] for n in names)), _jax_sync, len(sets), runs
  )
  t_bwd = time_calls(
      lambda i: fwd_bwd(*(sets[i][n] for n in names), sets[i]["dy"]),
      _jax_sync, len(sets), runs,
  )
  return t_fwd, t_bwd


def bench_accelerated_scan(shape, dtype, runs):
  """accelerated-scan's Triton kernel on its own `[B, C, T]` layout."""
  b, t, d = shape
  tdtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]
  itemsize = jnp.dtype(dtype).itemsize
  n = _n_sets(3 * math.prod(shape) * itemsize)
  gen = torch.Generator(device="cuda").manual_seed(0)
  sets = []
  for _ in range(n):
    x = torch.randn((b, d, t), device="cuda", dtype=tdtype, generator=gen)
    a = torch.rand((b, d, t), device="cuda", generator=gen).mul_(0.5).add_(0.5)
    dy = torch.randn((b, d, t), device="cuda", dtype=tdtype, generator=gen)
    sets.append((a.to(tdtype).requires_grad_(), x.requires_grad_(), dy))

  def fwd(i):
    with torch.no_grad():
      return accelerated_scan.scan(sets[i][0], sets[i][1])

  def fwd_bwd(i):
    a, x, dy = sets[i]
    y = accelerated_scan.scan(a, x)
    return torch.autograd.grad(y, (a, x), dy)

  sync = lambda _: torch.cuda.synchronize()
  result = time_calls(fwd, sync, n, runs), time_calls(fwd_bwd, sync, n, runs)
  sets.clear()  # free the tensors, then leave the memory to JAX
  torch.cuda.empty_cache()
  return result


def measure_copy_bandwidth(runs) -> dict[str, float]:
  """TB/s (bytes read + written) of 1 GiB device copies."""
  n = 2**28  # float32 elements: 1 GiB.
  result = {}
  src = jax.random.normal(jax.random.key(0), (n,), jnp.float32)
  neg = jax.jit(lambda v: -v)  # an elementwise read + write
  ms = time_calls(lambda i: neg(src), _jax_sync, 1, runs)
  result["jax_elementwise"] = 2 * 4 * n / (ms * 1e-3) / 1e12
  del src
  if torch is not None:
    a = torch.randn(n, device="cuda")
    out = torch.empty_like(a)
    ms = time_calls(
        lambda i: out.copy_(a), lambda _: torch.cuda.synchronize(), 1, runs
    )
    result["torch_copy"] = 2 * 4 * n / (ms * 1e-3) / 1e12
    del a, out
  return result


# ----------------------------------------------------------------------------
# Correctness on the device.
# ----------------------------------------------------------------------------


def check_correctness(variants=("pallas_gpu walk", "pallas_gpu chunked"),
                      rg_lru_too=True, n_cases=None) -> bool:
  """pallas_gpu variants (`PALLAS_VARIANTS` rows) vs the float64 oracle,
  the first `n_cases` cases; fused vs unfused RG-LRU. Prints errors. The
  look-back variant is a cross-program protocol, so its outputs must also
  be bitwise identical over repeats."""
  ok = True
  rng = np.random.default_rng(int(time.time()))
  cases = [(shape, dtype, reverse, variant) for variant in variants
           for shape, dtype, reverse in (
               ((1, 200, 64), jnp.float32, False),
               ((2, 1031, 2560), jnp.float32, False),
               ((3, 1031, 1000), jnp.float32, True),
               ((2, 1031, 2560), jnp.bfloat16, True),
               ((8, 4096, 2560), jnp.float32, False),
               ((1, 16411, 2560), jnp.float32, False),
               ((1, 32768, 4096), jnp.bfloat16, False),
           )[:n_cases]]
  for shape, dtype, reverse, name in cases:
    variant = PALLAS_VARIANTS[name]
    b, t, d = shape
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    a = jnp.asarray(rng.uniform(0.5, 1.0, shape), dtype)
    # Resets (a = 0) at scattered steps, inside chunks and on their edges.
    resets = rng.uniform(size=(b, t, 1)) < 0.01
    a = jnp.where(jnp.asarray(resets), jnp.zeros((), dtype), a)
    h0 = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal(shape), dtype)
    dh = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
    scan = jax.jit(lambda x, a, h0: pallas_kernels.linear_scan(
        x, a, h0, reverse=reverse, impl="pallas_gpu", **variant))
    (y, h_last), vjp = jax.vjp(scan, x, a, h0)
    grads = vjp((dy, dh))
    want = reference.numpy_scan(x, a, h0, reverse=reverse)
    want_grads = reference.numpy_scan_vjp(x, a, h0, dy, dh, reverse=reverse)
    errs = [reference.relative_error(g, w) for g, w in zip((y, h_last, *grads),
                                           (*want, *want_grads))]
    tol = 2e-6 if dtype == jnp.float32 else 1e-2
    passed = max(errs) < tol
    repeats_equal = True
    if variant["variant"] == "lookback":
      for _ in range(5):
        (y2, h2), vjp2 = jax.vjp(scan, x, a, h0)
        g2 = vjp2((dy, dh))
        repeats_equal &= all(bool(jnp.array_equal(p, q)) for p, q in zip(
            (y, h_last, *grads), (y2, h2, *g2)))
    passed &= repeats_equal
    ok &= passed
    print(f"check scan {name} {shape} {jnp.dtype(dtype).name} "
          f"reverse={reverse}: rel err y,h,dx,da,dh0 = "
          f"{['%.1e' % e for e in errs]} repeats equal: {repeats_equal} "
          f"{'ok' if passed else 'FAIL'}", flush=True)

  for dtype in (jnp.float32, jnp.bfloat16) if rg_lru_too else ():
    shape = (8, 4096, 2560)
    s = _random_sets(shape, dtype, 1, int(rng.integers(1 << 30)),
                     rg_lru_inputs=True)[0]
    args = (s["x"], s["gate_x"], s["gate_a"], s["a_param"])
    f32 = lambda z: z.astype(jnp.float32)

    def fused(*p):
      return rg_lru(*p, s["reset"], impl="pallas_gpu")

    def unfused_f32(x, gx, ga, lam):
      return rg_lru_reference(f32(x), f32(gx), f32(ga), lam, s["reset"],
                              impl="associative")

    got, got_vjp = jax.vjp(jax.jit(fused), *args)
    want, want_vjp = jax.vjp(jax.jit(unfused_f32), *args)
    cts = (s["dy"], jnp.ones(got[1].shape, jnp.float32))
    errs = [reference.relative_error(g, w) for g, w in zip(
        (*got, *got_vjp(cts)),
        (*want, *want_vjp((f32(cts[0]), cts[1]))))]
    tol = 1e-4 if dtype == jnp.float32 else 1e-2
    passed = max(errs) < tol
    ok &= passed
    print(f"check rg_lru {shape} {jnp.dtype(dtype).name}: rel err "
          f"y,h,dx,dgx,dga,da_param = {['%.1e' % e for e in errs]} "
          f"{'ok' if passed else 'FAIL'}")
  return ok


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------


ACCELERATED_SCAN = "accelerated-scan Triton [B,C,T]"


def sweep(shape, dtypes, runs, copy_tbs, sweep_rows):
  """Walking-kernel and fused RG-LRU block shapes at `shape` (--sweep)."""
  for dtype in dtypes:
    default = gpu_common.ScanConfig()
    for block_d, chunk, bwd_chunk, pipeline in SWEEP:
      if (block_d, chunk, bwd_chunk, pipeline) == (
          default.block_d, default.chunk, default.bwd_chunk,
          default.pipeline):
        continue
      name = (f"pallas_gpu walk bd={block_d} c={chunk}/{bwd_chunk} "
              f"pipeline={pipeline}")
      t = bench_scan(shape, dtype, "pallas_gpu walk", runs, block_d=block_d,
                     chunk=chunk, bwd_chunk=bwd_chunk, pipeline=pipeline)
      sweep_rows.append(_row(shape, dtype, name, "scan", *t, copy_tbs))
    for block_d, chunk, bwd_chunk, pipeline in RG_LRU_SWEEP:
      name = (f"rg_lru fused bd={block_d} c={chunk}/{bwd_chunk} "
              f"pipeline={pipeline}")
      t = bench_rg_lru(shape, dtype, True, runs, block_d=block_d,
                       chunk=chunk, bwd_chunk=bwd_chunk, pipeline=pipeline)
      sweep_rows.append(_row(shape, dtype, name, "rg_lru", *t, copy_tbs))
  print(_table(sweep_rows), flush=True)


def _parse_options(text: str) -> list[dict[str, int | str]]:
  """"variant=lookback,chunk=64;block_d=32" -> [{"variant": "lookback",
  "chunk": 64}, {"block_d": 32}] (`variant` stays a string)."""
  return [{k: v if k == "variant" else int(v)
           for k, v in (kv.split("=") for kv in item.split(","))}
          for item in text.split(";") if item]


def _row(shape, dtype, name, op, t_fwd, t_bwd, copy_tbs, wall_s=None):
  """One result row; `wall_s`: the host seconds the row took (compiling,
  inputs and timing), to see where a long grid's time goes."""
  itemsize = jnp.dtype(dtype).itemsize
  row = {"shape": list(shape), "dtype": jnp.dtype(dtype).name, "impl": name,
         "fwd_ms": t_fwd, "fwd_bwd_ms": t_bwd}
  if wall_s is not None:
    row["wall_s"] = round(wall_s, 2)
  for key, t, o in (("fwd", t_fwd, op), ("fwd_bwd", t_bwd, op + "+bwd")):
    gbs = _bytes(o, shape, itemsize) / (t * 1e-3) / 1e9
    row[key + "_gbs"] = gbs
    row[key + "_copy_frac"] = gbs / (copy_tbs * 1e3)
  print(json.dumps(row), flush=True)
  return row


def _table(rows) -> str:
  lines = [
      "| B, T, D | dtype | implementation | fwd ms | fwd GB/s | fwd / copy "
      "| fwd+bwd ms | fwd+bwd GB/s | fwd+bwd / copy |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {', '.join(map(str, r['shape']))} | {r['dtype']} | {r['impl']} "
        f"| {r['fwd_ms']:.3f} | {r['fwd_gbs']:.0f} "
        f"| {r['fwd_copy_frac']:.0%} | {r['fwd_bwd_ms']:.3f} "
        f"| {r['fwd_bwd_gbs']:.0f} | {r['fwd_bwd_copy_frac']:.0%} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default=None,
                      help="B,T,D;B,T,D;... (default: SHAPES, or GRID with "
                      "--grid)")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--runs", type=int, default=25)
  parser.add_argument("--no_sequential", action="store_true",
                      help="skip the slow lax.scan baseline")
  parser.add_argument("--sequential_once", action="store_true",
                      help="time lax.scan at the first shape only")
  parser.add_argument("--check", action="store_true",
                      help="check pallas_gpu against oracles first")
  parser.add_argument("--sweep", action="store_true",
                      help="time pallas_gpu block shapes at the first shape")
  parser.add_argument("--only_sweep", action="store_true",
                      help="time only what --sweep / --variant_sweep ask")
  parser.add_argument("--check_only", default="",
                      help="only check these rows (comma-separated, of %s) "
                      "and exit" % ", ".join(PALLAS_VARIANTS))
  parser.add_argument("--check_cases", type=int, default=None,
                      help="check only the first N cases")
  parser.add_argument("--impls", default="associative,pallas_gpu walk,"
                      "pallas_gpu chunked",
                      help="scan rows to time (default: %(default)s; also "
                      "'pallas_gpu lookback')")
  parser.add_argument("--no_accelerated_scan", action="store_true")
  parser.add_argument("--grid", action="store_true",
                      help="scan rows only, at every GRID shape that fits "
                      "(unless --shapes is given)")
  parser.add_argument("--variant_sweep", type=_parse_options, default=[],
                      help="pallas_gpu options to time at every shape "
                      "(variant defaults to chunked), e.g. "
                      "'chunk=64,bwd_chunk=32;variant=lookback,chunk=128'")
  parser.add_argument("--out", default=None, help="write rows as JSON here")
  parser.add_argument("--precompile", type=int, default=0, metavar="THREADS",
                      help="with --grid: compile every row's JAX functions "
                      "first, in this many host threads (through JAX's "
                      "persistent compilation cache in a temporary folder)")
  args = parser.parse_args(argv)
  if args.precompile:
    import tempfile  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir",
                      tempfile.mkdtemp(prefix="scan_bench_jax_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  if args.shapes:
    shapes = [tuple(int(v) for v in s.split(","))
              for s in args.shapes.split(";")]
  else:
    shapes = list(GRID if args.grid else SHAPES)
  dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
  device = jax.devices()[0]
  info = {
      "device": device.device_kind, "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "date": datetime.date.today().isoformat(),
      "accelerated_scan": accelerated_scan is not None,
  }
  try:
    import triton  # pylint: disable=g-import-not-at-top
    info["triton"] = triton.__version__
  except ImportError:
    pass
  if torch is not None:
    info["torch"] = torch.__version__
  print(json.dumps(info), flush=True)

  if args.check_only:
    return 0 if check_correctness(args.check_only.split(","), False,
                                  args.check_cases) else 1
  if args.check and not check_correctness(n_cases=args.check_cases):
    print("CORRECTNESS CHECK FAILED")
    return 1

  copy = measure_copy_bandwidth(args.runs)
  copy_tbs = max(copy.values())
  print(json.dumps({"copy_tb_s": copy}), flush=True)

  rows, sweep_rows = [], []

  def save():
    if args.out:  # after every row: a run cut short keeps what it measured
      with open(args.out, "w") as f:
        json.dump({"info": info, "copy_tb_s": copy, "rows": rows,
                   "sweep": sweep_rows}, f, indent=1)

  def fits(shape, dtype) -> bool:
    need = ARRAYS_PER_ROW * math.prod(shape) * jnp.dtype(dtype).itemsize
    if need > MEMORY_BUDGET:
      print(f"skipping {shape} {jnp.dtype(dtype).name}: needs about "
            f"{need / 1e9:.0f} GB", flush=True)
    return need <= MEMORY_BUDGET

  def table_rows(shape, sequential, impls, with_rg_lru):
    for dtype in dtypes:
      if not fits(shape, dtype):
        continue
      for impl in ["sequential"] * sequential + impls:
        start = time.perf_counter()
        t = bench_scan(shape, dtype, impl, args.runs)
        rows.append(_row(shape, dtype, impl, "scan", *t, copy_tbs,
                         wall_s=time.perf_counter() - start))
        save()
      if accelerated_scan is not None and not args.no_accelerated_scan:
        start = time.perf_counter()
        t = bench_accelerated_scan(shape, dtype, args.runs)
        rows.append(_row(shape, dtype, ACCELERATED_SCAN, "scan", *t,
                         copy_tbs, wall_s=time.perf_counter() - start))
        save()
      for fused in (False, True) if with_rg_lru else ():
        t = bench_rg_lru(shape, dtype, fused, args.runs)
        name = "rg_lru fused pallas_gpu" if fused else (
            "rg_lru unfused (XLA gates + pallas_gpu scan)")
        rows.append(_row(shape, dtype, name, "rg_lru", *t, copy_tbs))
        save()
    print(_table(rows[-12:]), flush=True)

  impls = args.impls.split(",") if args.impls else []
  if args.grid and args.precompile:
    todo = [(shape, dtype, impl) for shape in shapes for dtype in dtypes
            if fits(shape, dtype) for impl in impls if impl != "sequential"]
    seconds = precompile_scans(todo, args.precompile)
    print(f"precompiled {2 * len(todo)} functions in {seconds:.0f} s "
          f"({args.precompile} threads)", flush=True)
  if args.grid:
    for shape in shapes if not args.only_sweep else ():
      table_rows(shape, False, impls, False)
  else:
    # Most important first: a run cut short by a time limit keeps these.
    if not args.only_sweep:
      table_rows(shapes[0], not args.no_sequential, impls, True)
    if args.sweep:
      sweep(shapes[0], dtypes, args.runs, copy_tbs, sweep_rows)
      save()
    if not args.only_sweep:
      for shape in shapes[1:]:
        table_rows(shape, not args.no_sequential and not args.sequential_once,
                   impls, True)
  for shape in shapes if args.variant_sweep else ():
    for dtype in dtypes:
      for options in args.variant_sweep:
        options = {"variant": "chunked", **options}
        name = "pallas_gpu " + ",".join(f"{k}={v}" for k, v in options.items())
        t = bench_scan(shape, dtype, "pallas_gpu", args.runs, **options)
        sweep_rows.append(_row(shape, dtype, name, "scan", *t, copy_tbs))
        save()
        print(_table(sweep_rows[-1:]), flush=True)

  save()
  print(f"\ncopy bandwidth (TB/s): {copy}")
  if sweep_rows:
    print(_table(sweep_rows))
  if rows:
    print(_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
