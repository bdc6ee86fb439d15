r"""How the Pallas TPU scan kernels use a TPU chip, from their AOT compilation.

No TPU needed: libtpu (the `tpu` extra) compiles for a TPU topology on any
machine. For each B, T, D and dtype this compiles, for one chip, the
forward of `linear_scan(impl="pallas_tpu")` (prefill), its forward+backward
and the fused RG-LRU's forward+backward, and prints one row per kernel:

- grid, with "p" for parallel and "a" for arbitrary (in order) axes, and
  the `[block_t, block_d]` block, as Mosaic received them
  (`pallas_kernels.tpu_inspect`);
- `P`, the parallel programs, and the grid steps each of a megacore chip's
  two TensorCores runs, from libtpu's LLO (the loop over grid steps and the
  core id's multiplier) next to the model `ceil(P / 2) * steps`;
- VMEM: the kernel's scoped VMEM allocations in the LLO (double-buffered
  blocks, scratch, Mosaic's internal scratch);
- per grid step: bytes moved, and the static bundle count of the compiled
  kernel (the inner loop's bundles per 16-row unit x `block_t / 16`, plus
  the step's other bundles; one VLIW bundle a cycle, stalls not counted)
  against the time the step's bytes take at half the chip's HBM bandwidth
  (one core's share when both stream);
- the program's `cost_analysis()` bytes and XLA's `optimal_seconds`.

    JAX_PLATFORMS=cpu python benchmarks/tpu_scan_grid.py \
        --shapes "1,16384,2560;1,32768,2560;1,16384,4096;1,32768,4096"
    # another tiling: --options block_d=512 (the kernels' keyword arguments)

The LLO dump (about 5 MB per program) goes to a temporary directory, removed
at exit unless `--keep_llo`.

`--hbm_gbps` and `--clock_ghz` default to v5p (2765 GB/s; 1.75 GHz, from
459 bf16 TFLOP/s over 2 cores x 4 MXUs x 128 x 128 x 2).
"""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import re
import shutil
import sys
import tempfile

# The LLO dump must be requested before libtpu starts.
_DUMP = tempfile.mkdtemp(prefix="tpu_scan_grid_")
os.environ["LIBTPU_INIT_ARGS"] = " ".join([
    os.environ.get("LIBTPU_INIT_ARGS", ""),
    f"--xla_jf_dump_to={_DUMP}",
    "--xla_jf_dump_llo_text=true",
]).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pallas_kernels  # noqa: E402
from pallas_kernels import tpu_inspect  # noqa: E402

_LOOP = re.compile(r"loop: start=0, step=1, limit=(\d+)")
_STAGE = re.compile(r"iteration index, stage = (\d+)")
_CORE_ID = re.compile(r"%(s\d+) = scalar_select .* /\* megacore core id \*/")
_VMEM = re.compile(r"space=vmem, size = (0x[0-9a-f]+), scoped")
# A bundle of the final schedule and its loop depth (">" per level).
_BUNDLE = re.compile(r"^\s*0x[0-9a-f]+\s+(?:[A-Z]{2})?:\s*(>*)\s*\{", re.M)


def _programs(devices, shape, dtype, options):
  """`(name, fn, args)`: the three compiled programs of one case."""
  b, t, d = shape
  mesh = jax.sharding.Mesh(np.array(devices[:1]), ("chip",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  struct = lambda s, dt: jax.ShapeDtypeStruct(s, dt, sharding=sharding)
  btd, bd = struct((b, t, d), dtype), struct((b, d), jnp.float32)

  def prefill(x, a, h0):
    return pallas_kernels.linear_scan(x, a, h0, impl="pallas_tpu", **options)

  def scan_grad(x, a, h0):
    def loss(x, a, h0):
      y, h_last = prefill(x, a, h0)
      return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h_last)

    return jax.grad(loss, argnums=(0, 1, 2))(x, a, h0)

  def rg_lru_grad(x, gate_x, gate_a, a_param, reset, h0):
    def loss(x, gate_x, gate_a, a_param, h0):
      y, _ = pallas_kernels.rg_lru(
          x, gate_x, gate_a, a_param, reset, h0, impl="pallas_tpu", **options
      )
      return jnp.sum(y.astype(jnp.float32))

    return jax.grad(loss, argnums=range(5))(x, gate_x, gate_a, a_param, h0)

  rg_args = (btd, btd, btd, struct((d,), jnp.float32),
             struct((b, t), jnp.bool_), bd)
  return [
      ("scan fwd", prefill, (btd, btd, bd)),
      ("scan fwd+bwd", scan_grad, (btd, btd, bd)),
      ("rg_lru fwd+bwd", rg_lru_grad, rg_args),
  ]


def _llo_facts(kernel: str, new_files: set[str]) -> dict[str, object] | None:
  """Per-core grid steps, scoped VMEM and bundles of one kernel's LLO."""
  def find(suffix):
    # Named after the HLO custom call, e.g. `transpose_jvp_linear_scan_bwd__.1`.
    hits = [f for f in new_files if re.search(
        rf"-[a-z_]*{re.escape(kernel)}_*(\.\d+)?-{suffix}$", f)]
    return open(hits[0]).read() if hits else None

  original, final = find("02-original.txt"), find(r"\d+-final_bundles.txt")
  if original is None or final is None:
    return None
  loop = _LOOP.search(original)
  # The pipelined loop runs `steps + stages - 1` iterations.
  stages = 1 + max(int(s) for s in _STAGE.findall(original))
  core_id = _CORE_ID.search(original)
  if "(PrimaryCoreRegion)" in original or not core_id:
    multiplier = "all on core 0"  # The other core skips the kernel.
  else:  # Core c starts at program c * multiplier (c when 1).
    m = re.search(rf"smul\.u32 %{core_id[1]}, (\d+)", original)
    multiplier = int(m[1]) if m else 1
  depths = [len(m) for m in _BUNDLE.findall(final)]
  return dict(
      steps=int(loop[1]) - (stages - 1),
      programs_per_core=multiplier,
      vmem=sum(int(s, 16) for s in _VMEM.findall(original)),
      inner_bundles=sum(1 for n in depths if n >= 2),
      step_bundles=sum(1 for n in depths if n == 1),
  )


def _row(case, program, grid, llo, cost, hbm_gbps, clock_ghz):
  sem = "".join(s[0] for s in grid.semantics)
  block = "x".join(str(n) for n in max(grid.blocks, key=len)[-2:])
  cells = [case, program, grid.name,
           "(" + ",".join(map(str, grid.grid)) + ") " + sem, block,
           str(grid.parallel_programs), str(grid.steps_per_core())]
  per_step_us = grid.bytes_per_step / (hbm_gbps * 1e9 / 2) * 1e6
  if llo:
    units = max(grid.blocks, key=len)[-2] // 16
    cycles = llo["inner_bundles"] * units + llo["step_bundles"]
    cells += [str(llo["steps"]), str(llo["programs_per_core"]),
              f"{llo['vmem'] / 2**20:.2f}",
              f"{cycles / clock_ghz / 1e3:.2f}"]
  else:
    cells += ["?", "?", "?", "?"]
  cells += [f"{grid.bytes_per_step / 2**20:.2f}", f"{per_step_us:.2f}",
            f"{cost.get('bytes accessed', 0) / 1e6:.0f}",
            f"{cost.get('optimal_seconds', 0) * 1e6:.0f}"]
  return "| " + " | ".join(cells) + " |"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--shapes", default="1,16384,2560;1,16384,4096",
                      help='"B,T,D;B,T,D"')
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--options", default="",
                      help='kernel tiling overrides, e.g. "block_d=256"')
  parser.add_argument("--hbm_gbps", type=float, default=2765.0)
  parser.add_argument("--clock_ghz", type=float, default=1.75)
  parser.add_argument("--keep_llo", action="store_true",
                      help="keep the LLO dump directory")
  args = parser.parse_args(argv)
  if not args.keep_llo:
    atexit.register(shutil.rmtree, _DUMP, ignore_errors=True)
  options = {k: int(v) for k, v in (
      o.split("=") for o in args.options.split(",") if o)}
  devices = topologies.get_topology_desc(
      platform="tpu", topology_name=args.topology
  ).devices
  print(f"{devices[0].device_kind}, {getattr(devices[0], 'num_cores', '?')}"
        f" TensorCores per device; jax {jax.__version__}"
        + (f"; LLO in {_DUMP}" if args.keep_llo else ""))
  print("| B,T,D dtype | program | kernel | grid | block | P "
        "| steps/core (model) | steps/core (LLO) | programs/core (LLO) "
        "| VMEM MiB | compute us/step | MiB/step | DMA us/step "
        "| cost MB | optimal us |")
  print("|" + "---|" * 15)
  for shape_text in args.shapes.split(";"):
    shape = tuple(int(n) for n in shape_text.split(","))
    for dtype_name in args.dtypes.split(","):
      dtype = jnp.dtype(dtype_name)
      case = f"{','.join(map(str, shape))} {dtype_name}"
      for program, fn, fn_args in _programs(devices, shape, dtype, options):
        before = set(glob.glob(os.path.join(_DUMP, "*")))
        compiled = jax.jit(fn).lower(*fn_args).compile()
        new = set(glob.glob(os.path.join(_DUMP, "*"))) - before
        cost = compiled.cost_analysis() or {}
        for grid in tpu_inspect.kernel_grids(compiled.as_text()):
          llo = _llo_facts(grid.name, new)
          print(_row(case, program, grid, llo, cost, args.hbm_gbps,
                     args.clock_ghz), flush=True)


if __name__ == "__main__":
  main()
