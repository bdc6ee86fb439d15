"""The grids of the Pallas TPU kernels in a compiled XLA program.

Every Pallas TPU kernel reaches XLA as a `tpu_custom_call` whose backend
config carries the serialised Mosaic module. Its main function states what
Mosaic compiles: the grid (`iteration_bounds`), which grid axes are
"parallel" and which "arbitrary" (run in order), and the block of each
operand (`window_bounds`). This module reads them back, so tests and
benchmarks can check the grid the compiler was actually given (for example
under `shard_map`, where the kernel sees per-device shapes).

Megacore chips (v4, v5p: two TensorCores behind one JAX device) run the
parallel part of the grid on both cores. libtpu's LLO for a v5p chip
(`--xla_jf_dump_llo_text`, see `benchmarks/tpu_scan_grid.py`) shows how:
the parallel axes are flattened into `P` programs and each core runs
`ceil(P / 2)` of them, the second core's surplus program wrapping round to
program 0 and recomputing it; with `P = 1` one core idles.
`KernelGrid.steps_per_core` models that split.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re

from jax._src.interpreters import mlir
from jax._src.lib.mlir import ir
from jax._src.lib.mlir import passmanager
from jax.experimental.mosaic.dialects import tpu

from pallas_kernels import tpu_scan

MEGACORE_CORES = tpu_scan.MEGACORE_CORES

_BODY = re.compile(r'"custom_call_config":\s*\{"body":\s*"([A-Za-z0-9+/=]+)"')
_SEMANTICS = re.compile(r"#tpu\.dimension_semantics<(\w+)>")


@dataclasses.dataclass(frozen=True)
class KernelGrid:
  """The grid Mosaic was given for one kernel."""

  name: str
  grid: tuple[int, ...]
  semantics: tuple[str, ...]  # "parallel" or "arbitrary", one per grid axis.
  blocks: tuple[tuple[int, ...], ...]  # Block shape of each operand.
  block_bytes: tuple[int, ...]  # Bytes of one block of each operand.

  @property
  def parallel_programs(self) -> int:
    """`P`: grid points along the parallel axes (independent programs)."""
    return math.prod(
        n for n, s in zip(self.grid, self.semantics) if s == "parallel"
    )

  @property
  def sequential_steps(self) -> int:
    """Grid steps each parallel program runs in order."""
    return math.prod(self.grid) // self.parallel_programs

  @property
  def bytes_per_step(self) -> int:
    """Bytes of one block of every operand (the most one grid step moves)."""
    return sum(self.block_bytes)

  def steps_per_core(self, num_cores: int = MEGACORE_CORES) -> int:
    """Grid steps the busiest core runs: `ceil(P / cores)` programs."""
    return -(-self.parallel_programs // num_cores) * self.sequential_steps

  def core_utilisation(self, num_cores: int = MEGACORE_CORES) -> float:
    """Useful share of the cores' grid steps (1.0 when P splits evenly)."""
    return tpu_scan.core_utilisation(self.parallel_programs, num_cores)


def _parse_module(body: bytes) -> ir.Module:
  ctx = mlir.make_ir_context()
  tpu.register_dialect(ctx)
  # The `stable_mosaic.version` attribute belongs to no registered dialect.
  ctx.allow_unregistered_dialects = True
  with ctx:
    module = ir.Module.parse(body)
    # Upgrades the stable serialisation to the current dialect.
    passmanager.PassManager.parse(
        "builtin.module(mosaic-serde{serialize=false})"
    ).run(module.operation)
  return module


def _block(window: ir.DictAttr) -> tuple[int, ...]:
  if "window_bounds" not in window:  # An operand left in HBM / ANY.
    return ()
  return tuple(ir.DenseI64ArrayAttr(window["window_bounds"]))


def _element_bytes(memref_type: ir.Type) -> int:
  element = ir.MemRefType(memref_type).element_type
  if isinstance(element, ir.IntegerType):
    return element.width // 8
  return ir.FloatType(element).width // 8


def kernel_grids(hlo_text: str) -> list[KernelGrid]:
  """The grid of every Mosaic kernel in a compiled program's HLO text.

  Args:
    hlo_text: `jit(f).lower(...).compile().as_text()` of a program with
      Pallas TPU kernels.

  Returns:
    One `KernelGrid` per kernel call, in program order.
  """
  grids = []
  for match in _BODY.finditer(hlo_text):
    module = _parse_module(base64.b64decode(match[1]))
    for op in module.body.operations:
      attrs = op.attributes
      if "iteration_bounds" not in attrs:
        continue
      grid = tuple(ir.DenseI64ArrayAttr(attrs["iteration_bounds"]))
      blocks = tuple(
          _block(ir.DictAttr(w))
          for w in ir.ArrayAttr(attrs["window_params"])
      )
      # Arguments: the grid indices, then one ref per windowed operand.
      inputs = ir.FunctionType(
          ir.TypeAttr(attrs["function_type"]).value
      ).inputs[len(grid) : len(grid) + len(blocks)]
      grids.append(
          KernelGrid(
              name=ir.StringAttr(attrs["sym_name"]).value,
              grid=grid,
              semantics=tuple(
                  _SEMANTICS.fullmatch(str(s))[1]
                  for s in ir.ArrayAttr(attrs["dimension_semantics"])
              ),
              blocks=blocks,
              block_bytes=tuple(
                  math.prod(b) * _element_bytes(t)
                  for b, t in zip(blocks, inputs)
              ),
          )
      )
  return grids
