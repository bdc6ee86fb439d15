"""Ahead-of-time compilation of the TPU kernels for real TPU generations.

libtpu (the `tpu` extra, `pip install "jax[tpu]==0.11.2"`) can compile for a
TPU topology without a TPU: `get_topology_desc` gives abstract TPU devices,
and `jit(...).lower(ShapeDtypeStructs).compile()` runs the real Mosaic and
XLA:TPU compilers. This proves that the kernels lower for each generation
(block shapes, layouts, alignment) and reports per-chip cost and memory;
`pytest -s` prints them. The kernels run under `scan_sharding`, i.e. inside
`jax.shard_map`, as in the model; the batch-1 test reads the grid Mosaic
received back from the compiled program (`tpu_inspect`).
"""

import functools

import jax
from jax.experimental import topologies
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pallas_kernels
from pallas_kernels import tpu_inspect
from pallas_kernels import tpu_scan

pytest.importorskip(
    "libtpu",
    reason='libtpu is not installed (pip install "jax[tpu]==0.11.2")',
)

# Topology names libtpu accepts: v4 (4 chips, one device per TensorCore),
# v5e ("TPU v5 lite"), v5p, v6e ("TPU v6 lite").
TOPOLOGIES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2")
# Per-device shapes of a RecurrentGemma-2B layer: B = 2, T = 2048, D = 2560.
B, T, D = 2, 2048, 2560


@functools.cache
def _mesh(topology: str, axes: tuple[str, str]) -> jax.sharding.Mesh:
  devices = topologies.get_topology_desc(
      platform="tpu", topology_name=topology
  ).devices
  grid = np.array(devices).reshape(len(devices) // 2, 2)
  return jax.sharding.Mesh(grid, axes, axis_types=(AxisType.Auto,) * 2)


def _struct(mesh, shape, dtype, spec):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _compile(fn, mesh, *args, **sharding):
  """Compiles `jit(fn)` under `scan_sharding(mesh, ...)` and reports it."""
  with pallas_kernels.scan_sharding(mesh, **sharding):
    compiled = jax.jit(fn).lower(*args).compile()
  hlo = compiled.as_text()
  assert "tpu_custom_call" in hlo  # The Mosaic kernels, not a fallback.
  cost = compiled.cost_analysis()
  memory = compiled.memory_analysis()
  assert cost and memory is not None
  print(
      f"\n{mesh.devices.flat[0].device_kind} {mesh.shape}: flops"
      f" {cost.get('flops'):.3g}, bytes accessed"
      f" {cost.get('bytes accessed'):.3g}; per device: arguments"
      f" {memory.argument_size_in_bytes / 2**20:.1f} MiB, outputs"
      f" {memory.output_size_in_bytes / 2**20:.1f} MiB, temporaries"
      f" {memory.temp_size_in_bytes / 2**20:.1f} MiB"
  )
  return hlo


def _scan_train_step(x, a, h0, reverse=False):
  """Forward and backward of the scan: `(y, h_last, dx, da, dh0)`."""

  def loss(x, a, h0):
    y, h_last = pallas_kernels.linear_scan(
        x, a, h0, reverse=reverse, impl="pallas_tpu"
    )
    return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(h_last), (y, h_last)

  grads, (y, h_last) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(
      x, a, h0
  )
  return y, h_last, *grads


def _rg_lru_train_step(x, gate_x, gate_a, a_param, reset, h0):
  """Forward and backward of the fused RG-LRU."""

  def loss(x, gate_x, gate_a, a_param, h0):
    y, h_last = pallas_kernels.rg_lru(
        x, gate_x, gate_a, a_param, reset, h0, impl="pallas_tpu"
    )
    return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(h_last), y

  grads, y = jax.grad(loss, argnums=range(5), has_aux=True)(
      x, gate_x, gate_a, a_param, h0
  )
  return y, *grads


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize(
    "dtype,reverse", [(jnp.float32, False), (jnp.bfloat16, True)]
)
def test_scan_compiles_for_tpu(topology, dtype, reverse):
  mesh = _mesh(topology, ("data", "tensor"))
  n_data = mesh.shape["data"]
  btd = _struct(mesh, (B * n_data, T, 2 * D), dtype, P("data", None, "tensor"))
  bd = _struct(mesh, (B * n_data, 2 * D), jnp.float32, P("data", "tensor"))
  hlo = _compile(
      functools.partial(_scan_train_step, reverse=reverse), mesh, btd, btd, bd,
      batch_axes="data", feature_axes="tensor",
  )
  assert "linear_scan_fwd" in hlo and "linear_scan_bwd" in hlo


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_rg_lru_compiles_for_tpu(topology):
  mesh = _mesh(topology, ("data", "tensor"))
  n_data = mesh.shape["data"]
  btd = _struct(
      mesh, (B * n_data, T, 2 * D), jnp.bfloat16, P("data", None, "tensor")
  )
  hlo = _compile(
      _rg_lru_train_step,
      mesh,
      btd,
      btd,
      btd,
      _struct(mesh, (2 * D,), jnp.float32, P("tensor")),
      _struct(mesh, (B * n_data, T), jnp.bool_, P("data")),
      _struct(mesh, (B * n_data, 2 * D), jnp.float32, P("data", "tensor")),
      batch_axes="data",
      feature_axes="tensor",
  )
  assert "rg_lru_fwd" in hlo and "rg_lru_bwd" in hlo


def test_sequence_parallel_compiles_for_tpu():
  mesh = _mesh("v5p:2x2x1", ("data", "sequence"))
  btd = _struct(mesh, (2 * B, 2 * T, D), jnp.bfloat16, P("data", "sequence"))
  hlo = _compile(
      _scan_train_step,
      mesh,
      btd,
      btd,
      _struct(mesh, (2 * B, D), jnp.float32, P("data")),
      batch_axes="data",
      sequence_axis="sequence",
  )
  assert "all-gather" in hlo


def _batch_one_grids(topology, t, d, dtype):
  """Kernel grids of the scan's and the RG-LRU's forward+backward at B=1
  on one chip."""
  devices = topologies.get_topology_desc(
      platform="tpu", topology_name=topology
  ).devices
  mesh = jax.sharding.Mesh(np.array(devices[:1]), ("chip",))
  btd = _struct(mesh, (1, t, d), dtype, P())
  bd = _struct(mesh, (1, d), jnp.float32, P())
  scan = jax.jit(_scan_train_step).lower(btd, btd, bd).compile()
  rg_lru = jax.jit(_rg_lru_train_step).lower(
      btd, btd, btd, _struct(mesh, (d,), jnp.float32, P()),
      _struct(mesh, (1, t), jnp.bool_, P()), bd,
  ).compile()
  grids = tpu_inspect.kernel_grids(scan.as_text())
  grids += tpu_inspect.kernel_grids(rg_lru.as_text())
  assert sorted(g.name for g in grids) == [
      "linear_scan_bwd", "linear_scan_fwd", "rg_lru_bwd", "rg_lru_fwd"
  ]
  return devices[0], grids


@pytest.mark.parametrize("topology", ["v4:2x2x1", "v5e:2x2", "v6e:2x2"])
def test_batch_one_tiling_compiles_for_tpu(topology):
  # The 640-lane feature blocks of B=1, D=2560 lower on every generation.
  _, grids = _batch_one_grids(topology, 2048, 2560, jnp.bfloat16)
  assert {g.blocks[0][-1] for g in grids} == {640}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("d", [2560, 4096])
def test_batch_one_grid_splits_evenly_over_v5p_cores(d, dtype):
  # Batch-1 prefill and long-context training on one v5p chip: its two
  # TensorCores share the kernels' parallel programs, ceil(P / 2) each, so
  # P must be even (docs/tpu.md, "The TPU scan at batch 1").
  device, grids = _batch_one_grids("v5p:2x2x1", 16384, d, dtype)
  assert device.num_cores == tpu_inspect.MEGACORE_CORES
  for g in grids:
    print(f"\n{g.name}: grid {g.grid} {g.semantics}, block {g.blocks[0]},"
          f" {g.steps_per_core()} steps per core,"
          f" {g.bytes_per_step / 2**20:.2f} MiB per step")
    assert g.semantics == ("parallel", "parallel", "arbitrary"), g.name
    assert g.parallel_programs >= 2, g.name
    assert g.core_utilisation() == 1.0, g.name
    # Each step streams enough to hide its fixed cost (~0.35 us: 1 MiB is
    # 0.76 us at a core's half of the 2765 GB/s) and fits VMEM double-
    # buffered.
    assert 2**20 <= g.bytes_per_step, g.name
    assert 2 * g.bytes_per_step <= tpu_scan.VMEM_BUDGET_BYTES + 2**16, g.name
