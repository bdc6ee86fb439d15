"""Ahead-of-time compilation of the train step for a TPU slice, without one.

    recurrentgemma train --config=experiments/X.py:... \
        --workdir=/tmp/aot --compile_only --topology=v5p-128

libtpu (`pip install "jax[tpu]"`) compiles for a TPU topology on any host:
`jax.experimental.topologies.get_topology_desc` gives abstract TPU devices,
the train state is built as sharded `ShapeDtypeStruct`s (no array is ever
allocated), and the full sharded train step (forward, backward, optimizer
update; the Pallas TPU scans) is lowered and compiled by the real XLA:TPU and
Mosaic compilers. The compiled program reports the per-device memory
(`memory_analysis`) and FLOPs (`cost_analysis`); a program that does not fit
the chip's HBM fails with `DoesNotFitError`.

libtpu's compile-only v4 topology has one device per TensorCore; the compile
uses the first core of each chip (a one-device-per-chip mesh, as
`jax.make_mesh` requires) and XLA then budgets one core's half of the chip's
HBM (16 GiB), so v4 numbers are conservative against a megacore.

Slice names: the Cloud TPU accelerator types (`v4-32`, `v5p-128`,
`v5litepod-16` / `v5e-16`, `v6e-16`) or a libtpu topology name
(`v5p:4x4x4`, `v5e:4x4`). For v4 and v5p the number counts TensorCores (two
per chip), for v5e and v6e chips.

`--topology=local` compiles for this machine's own devices instead (a GPU,
or the CPU) with the config's scan implementation, and measures against the
device's memory limit (a GPU's `bytes_limit`; the host's RAM for the CPU):
the same report for a GPU, on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.data import batch as batch_lib
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import flops as flops_lib
from recurrentgemma_jax.training import loop
from recurrentgemma_jax.training import state as state_lib

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation as libtpu names it, and its chips."""

  name: str  # libtpu's prefix: "v5p" in "v5p:4x4x4"
  hbm_bytes: int  # per chip
  dims: int  # torus dimensions (3 for v4 / v5p, 2 for v5e / v6e)
  cores_per_chip_in_name: int  # Cloud names count TensorCores on v4 / v5p


GENERATIONS = {
    "v4": Generation("v4", 32 * GiB, 3, 2),
    "v5p": Generation("v5p", 95 * GiB, 3, 2),
    "v5e": Generation("v5e", 16 * GiB, 2, 1),
    "v6e": Generation("v6e", 32 * GiB, 2, 1),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}


LOCAL = "local"  # the `--topology` of this machine's own devices


class DoesNotFitError(ConfigError):
  """The compiled train step needs more memory than a chip's HBM."""


def _grid(chips: int, dims: int) -> tuple[int, ...]:
  """The standard slice shape of `chips` chips: from 2x2(x1), double the
  last of the smallest dimensions (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...;
  2x2, 2x4, 4x4, 4x8, ...)."""
  shape = [2, 2] + [1] * (dims - 2)
  if chips < 4 or chips & (chips - 1):
    raise ConfigError(
        f"topology: {chips} chips is not a supported slice size (a power of "
        "two >= 4); give a libtpu topology name such as v5p:2x2x1 instead"
    )
  while math.prod(shape) < chips:
    low = min(shape)
    i = max(j for j, s in enumerate(shape) if s == low)
    shape[i] *= 2
  return tuple(shape)


def topology_name(slice_name: str) -> tuple[Generation, str]:
  """`v5p-128` -> (v5p, "v5p:4x4x4"); libtpu names pass through."""
  text = slice_name.strip().lower()
  m = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", text)
  if m:
    gen = _ALIASES.get(m[1], m[1])
    if gen not in GENERATIONS:
      raise ConfigError(f"topology {slice_name!r}: unknown TPU generation "
                        f"{m[1]!r}; known: {sorted(GENERATIONS)}")
    return GENERATIONS[gen], f"{gen}:{m[2]}"
  m = re.fullmatch(r"(v\w+?)-(\d+)", text)
  if not m:
    raise ConfigError(
        f"topology {slice_name!r}: expected a Cloud TPU type such as v5p-128,"
        " v4-32, v5litepod-16, v6e-16, or a libtpu name such as v5p:4x4x4"
    )
  gen_name = _ALIASES.get(m[1], m[1])
  if gen_name not in GENERATIONS:
    raise ConfigError(f"topology {slice_name!r}: unknown TPU generation "
                      f"{m[1]!r}; known: {sorted(GENERATIONS)}")
  gen = GENERATIONS[gen_name]
  count = int(m[2])
  if count % gen.cores_per_chip_in_name:
    raise ConfigError(f"topology {slice_name!r}: {gen.name} sizes count "
                      f"{gen.cores_per_chip_in_name} TensorCores per chip")
  chips = count // gen.cores_per_chip_in_name
  shape = _grid(chips, gen.dims)
  return gen, f"{gen.name}:{'x'.join(map(str, shape))}"


def topology_devices(slice_name: str
                     ) -> tuple[Generation, str, list[Any], int]:
  """Compile-only TPU devices of a slice, one per chip, and how many
  TensorCore devices libtpu gives per chip (needs libtpu, not a TPU)."""
  if slice_name.strip().lower() == LOCAL:
    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    limit = stats.get("bytes_limit") or (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return (Generation(devices[0].platform, int(limit), 0, 1), LOCAL,
            devices, 1)
  gen, name = topology_name(slice_name)
  # Compiling touches no TPU: let several processes (parallel compiles,
  # tests) load libtpu instead of failing on its lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    devices = topologies.get_topology_desc(platform="tpu",
                                           topology_name=name).devices
  except Exception as e:  # libtpu missing or the name rejected
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ConfigError(
        f"topology {name}: cannot get TPU devices ({first}); ahead-of-time "
        'compilation needs libtpu: pip install "jax[tpu]"'
    ) from e
  # libtpu's compile-only v4 devices are TensorCores (two per chip); TPU
  # runtimes (and `jax.make_mesh`) use one "megacore" device per chip.
  cores = [d for d in devices if getattr(d, "core_on_chip", 0) == 0]
  return gen, name, cores, len(devices) // len(cores)


def _model_config(config: ml_collections.ConfigDict, tpu: bool = True
                  ) -> GriffinConfig:
  """The model of `config` with the Pallas TPU scans and XLA attention
  (`tpu`: "auto" would pick for the host's backend, a GPU's kernel on a GPU
  host), without reading data or weights (only the tokenizer or the
  synthetic task, for the vocabulary `loop.setup` would give it)."""
  model = config.model.copy_and_resolve_references()
  model.unlock()
  if tpu:
    model.scan_impl = "pallas_tpu"
    if model.get("attention_impl", "auto") == "auto":
      model.attention_impl = "xla"
  if model.vocab_size is not None or config.init_from.checkpoint:
    # Released weights keep their preset's vocabulary.
    return config_lib.build_model_config(model)
  try:
    vocab = loop.data_vocab_size(config)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f"cannot determine the vocabulary from the data config ({e}); set "
        "--config.model.vocab_size"
    ) from e
  return config_lib.build_model_config(model, vocab)


def abstract_batch(program: loop.Program
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The `[B, T]` batch of `program` as sharded ShapeDtypeStructs."""
  shape = (program.config.batch_size, program.config.seq_len)
  return {k: jax.ShapeDtypeStruct(shape, dtype,
                                  sharding=program.batch_sharding)
          for k, dtype in batch_lib.BATCH_DTYPES.items()}


def _shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def _size(b: float) -> str:
  return f"{b / GiB:.2f} GiB" if b >= GiB / 10 else f"{b / 2**20:.1f} MiB"


@dataclasses.dataclass(frozen=True)
class Report:
  """Per-device memory and cost of one compiled train step."""

  topology: str
  device_kind: str
  num_devices: int
  devices_per_chip: int  # libtpu's devices per chip (v4: 2 TensorCores)
  mesh: dict[str, int]
  num_params: int
  batch_size: int
  seq_len: int
  params_bytes: int  # this device's shards of the parameters
  opt_state_bytes: int  # ... of the optimizer state
  argument_bytes: int  # memory_analysis(): inputs (state + batch)
  output_bytes: int
  alias_bytes: int  # outputs sharing their input's buffer (donated state)
  temp_bytes: int  # activations, gradients, collectives' buffers
  generated_code_bytes: int
  hbm_bytes: int  # per device
  flops: float  # per device per step (cost_analysis)
  model_flops: float  # 6N + attention estimate (flops.py), per device
  pallas_kernels: int  # Mosaic custom calls in the compiled program

  @property
  def peak_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.generated_code_bytes)

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.hbm_bytes

  def to_json(self) -> str:
    return json.dumps({**dataclasses.asdict(self),
                       "peak_bytes": self.peak_bytes}, indent=2)

  def summary(self) -> str:
    g = _size
    per = "chip" if self.devices_per_chip == 1 else (
        "device (one TensorCore of a chip)")
    return "\n".join([
        f"compiled the train step for {self.topology} ({self.num_devices} x "
        f"{self.device_kind}), mesh {self.mesh}",
        f"model: {self.num_params / 1e6:.1f}M parameters; batch "
        f"{self.batch_size} x {self.seq_len} tokens",
        f"per {per}: parameters {g(self.params_bytes)}, optimizer state "
        f"{g(self.opt_state_bytes)}",
        f"  compiled: arguments {g(self.argument_bytes)}, outputs "
        f"{g(self.output_bytes)}, aliased {g(self.alias_bytes)}, "
        f"temporaries {g(self.temp_bytes)}, code "
        f"{g(self.generated_code_bytes)}",
        f"  peak {g(self.peak_bytes)} of {g(self.hbm_bytes)} HBM"
        f" ({100 * self.peak_bytes / self.hbm_bytes:.0f}%)",
        f"FLOPs per step per device: {self.flops:.4g} compiled, "
        f"{self.model_flops:.4g} model (6N + attention); "
        f"{self.pallas_kernels} Pallas TPU kernel calls",
    ])


@dataclasses.dataclass(frozen=True)
class _Target:
  """The train program of a config on a slice's devices."""

  gen: Generation
  name: str  # libtpu topology name
  devices: list[Any]  # one per chip
  cores_per_chip: int
  program: loop.Program

  def lower(self) -> jax.stages.Lowered:
    """The train step lowered for sharded ShapeDtypeStructs (nothing is
    allocated)."""
    return loop.jit_train_step(self.program).lower(
        self.program.spec.abstract, abstract_batch(self.program))


def _target(config: Any, slice_name: str) -> _Target:
  """Validates `config` for the slice and builds its train program as
  `loop.setup` does, without data or weights."""
  config = config_lib.validate(config)
  gen, name, devices, cores_per_chip = topology_devices(slice_name)
  mesh = loop.experiment_mesh(config, devices)
  program = loop.build_program(config, mesh,
                               _model_config(config, tpu=name != LOCAL))
  return _Target(gen, name, devices, cores_per_chip, program)


def compiled_text(config: Any, slice_name: str) -> str:
  """The optimized per-chip HLO of `config`'s train step for a slice (to
  inspect its collectives); no memory check."""
  return _target(config, slice_name).lower().compile().as_text()


def compile_train_step(config: Any, slice_name: str) -> Report:
  """Compiles the sharded train step of `config` for a TPU slice.

  Raises:
    ConfigError: bad config, topology or mesh, or libtpu missing.
    DoesNotFitError: the step needs more than the chip's HBM.
  """
  target = _target(config, slice_name)
  gen, name, devices = target.gen, target.name, target.devices
  program = target.program
  config, mesh, spec = program.config, program.mesh, program.spec
  # A compile-only v4 device is one TensorCore with half the chip's HBM.
  hbm = gen.hbm_bytes // target.cores_per_chip
  try:
    compiled = target.lower().compile()
  except Exception as e:  # XLA:TPU refuses programs larger than HBM
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
      line = next((l for l in text.splitlines() if "memory" in l.lower()),
                  text.splitlines()[0])
      raise DoesNotFitError(
          f"the train step does not fit {name} ({hbm / GiB:.0f} GiB HBM per "
          f"device): {line.strip()}. Shard more (mesh fsdp / tensor), use "
          "model.remat, a smaller batch_size or grad_accum_steps"
      ) from e
    raise
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  n_params = state_lib.num_params(spec)
  model_flops = (flops_lib.train_flops_per_token(program.model_config,
                                                 config.seq_len)
                 * config.batch_size * config.seq_len / len(devices))
  report = Report(
      topology=name,
      device_kind=devices[0].device_kind,
      num_devices=len(devices),
      devices_per_chip=target.cores_per_chip,
      mesh=dict(mesh.shape),
      num_params=n_params,
      batch_size=config.batch_size,
      seq_len=config.seq_len,
      params_bytes=_shard_bytes(spec.abstract["params"]),
      opt_state_bytes=_shard_bytes(spec.abstract["opt_state"]),
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      generated_code_bytes=int(memory.generated_code_size_in_bytes),
      hbm_bytes=hbm,
      flops=float(cost.get("flops", float("nan"))),
      model_flops=model_flops,
      pallas_kernels=compiled.as_text().count("tpu_custom_call"),
  )
  if not report.fits:
    raise DoesNotFitError(
        f"the train step does not fit {name}: it needs "
        f"{report.peak_bytes / GiB:.2f} GiB per device but the "
        f"{devices[0].device_kind} has {hbm / GiB:.0f} GiB HBM (parameters "
        f"{report.params_bytes / GiB:.2f} GiB, optimizer state "
        f"{report.opt_state_bytes / GiB:.2f} GiB, temporaries "
        f"{report.temp_bytes / GiB:.2f} GiB). Shard more (mesh fsdp / "
        "tensor), use model.remat, a smaller batch_size or grad_accum_steps"
    )
  return report
