"""Keeps JAX from starting libtpu on a machine without a TPU.

With the `tpu` extra installed (libtpu: TPU VMs, and ahead-of-time
compilation for TPU topologies on any machine), JAX tries the TPU backend
first wherever it runs; on a CPU or GPU machine libtpu then prints start-up
errors ("Failed to find host bounds for accelerator type", "unexpected
worker hostname", a source location trace) before JAX falls back. The
command-line entry points call `skip_absent_tpu()` before JAX starts a
backend. Ahead-of-time TPU compilation loads libtpu by itself
(`jax.experimental.topologies`) and is not affected.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import pkgutil
from collections.abc import Mapping

# TPU chips: /dev/accel* (v2-v4, v5p), /dev/vfio/<group> (v5e, v6e).
_TPU_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*")
# Set on TPU VMs and by TPU launchers; JAX_FORCE_TPU_INIT asks for libtpu.
_TPU_ENV = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES",
            "TPU_WORKER_ID", "TPU_HOST_BOUNDS", "CLOUD_TPU_TASK_ID",
            "JAX_FORCE_TPU_INIT")
# What JAX itself looks for before starting its CUDA backend.
_NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")
_AMD_DEVICES = ("/dev/kfd",)


def tpu_present(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether this machine may have a TPU (a device file or a TPU variable)."""
  return (any(glob.glob(p) for p in _TPU_DEVICES) or
          any(environ.get(name) for name in _TPU_ENV))


def _cuda_plugin_installed() -> bool:
  names = {e.name for e in importlib.metadata.entry_points(group="jax_plugins")}
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top

    names |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
  except ImportError:
    pass
  return any(name.startswith("xla_cuda") for name in names)


def platforms_without_tpu() -> str | None:
  """The `jax_platforms` JAX would end up with here, TPU left out; None
  where that is not clear (then JAX decides)."""
  if any(os.path.exists(d) for d in _AMD_DEVICES):
    return None
  if any(os.path.exists(d) for d in _NVIDIA_DEVICES):
    return "cuda,cpu" if _cuda_plugin_installed() else None
  return "cpu"


def skip_absent_tpu(environ: Mapping[str, str] = os.environ) -> str | None:
  """Leaves the TPU backend out when there is no TPU and no one chose.

  Does nothing when JAX_PLATFORMS is set (even to ""), when `jax_platforms`
  was configured, or when the machine may have a TPU. Call it before JAX
  starts a backend (before the first array is made).

  Returns:
    The `jax_platforms` value it set, or None.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if "JAX_PLATFORMS" in environ or jax.config.values.get("jax_platforms"):
    return None
  if tpu_present(environ):
    return None
  platforms = platforms_without_tpu()
  if platforms:
    jax.config.update("jax_platforms", platforms)
  return platforms
