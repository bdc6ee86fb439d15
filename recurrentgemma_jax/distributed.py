"""Multi-process start-up: `jax.distributed.initialize` for every launcher.

Where the job spans several processes:
- on Cloud TPU VMs (and SLURM / GKE / Open MPI), JAX detects the cluster
  itself: `initialize()` needs no arguments;
- elsewhere (several processes on one machine, GPU hosts), the coordinator
  address, process count and process id come from flags or from the
  environment variables below, which `launch/local.py` sets.

Timeouts are bounded so that a process whose peer died exits with an error
instead of hanging in a collective forever.
"""

from __future__ import annotations

import dataclasses
import os

import jax

ENV_COORDINATOR = "RG_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RG_NUM_PROCESSES"
ENV_PROCESS_ID = "RG_PROCESS_ID"

# A lost peer is noticed within HEARTBEAT_TIMEOUT_S; a peer that never
# arrives fails start-up after INITIALIZATION_TIMEOUT_S.
# RG_HEARTBEAT_TIMEOUT_S overrides the latter (tests use a few seconds).
INITIALIZATION_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 60
ENV_HEARTBEAT_TIMEOUT = "RG_HEARTBEAT_TIMEOUT_S"


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """Where this process sits in the job."""

  coordinator_address: str | None
  num_processes: int
  process_id: int

  @property
  def is_multi_process(self) -> bool:
    return self.num_processes > 1


def from_env(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ProcessGroup | None:
  """The explicit process group from arguments or the environment, if any."""
  env = os.environ
  coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
  if num_processes is None and ENV_NUM_PROCESSES in env:
    num_processes = int(env[ENV_NUM_PROCESSES])
  if process_id is None and ENV_PROCESS_ID in env:
    process_id = int(env[ENV_PROCESS_ID])
  given = [coordinator_address, num_processes, process_id]
  if all(v is None for v in given):
    return None
  if any(v is None for v in given):
    raise ValueError(
        "multi-process start-up needs all of coordinator address, process "
        f"count and process id (flags or ${ENV_COORDINATOR}, "
        f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); got {given}"
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(
        f"process id {process_id} must be in [0, {num_processes})"
    )
  return ProcessGroup(coordinator_address, num_processes, process_id)


def _on_multi_host_tpu() -> bool:
  # Set by the Cloud TPU VM image on every worker of a multi-host slice.
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ProcessGroup:
  """Joins the job's processes (a no-op for a single process).

  Call once, before any other JAX call that touches devices.
  """
  group = from_env(coordinator_address, num_processes, process_id)
  timeouts = dict(
      initialization_timeout=INITIALIZATION_TIMEOUT_S,
      heartbeat_timeout_seconds=int(
          os.environ.get(ENV_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_S)),
  )
  if group is not None and group.is_multi_process:
    jax.distributed.initialize(
        coordinator_address=group.coordinator_address,
        num_processes=group.num_processes,
        process_id=group.process_id,
        **timeouts,
    )
  elif group is None and _on_multi_host_tpu():
    jax.distributed.initialize(**timeouts)
  return ProcessGroup(
      coordinator_address=group.coordinator_address if group else None,
      num_processes=jax.process_count(),
      process_id=jax.process_index(),
  )
