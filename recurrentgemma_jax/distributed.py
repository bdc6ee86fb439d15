"""Multi-process start-up: `jax.distributed.initialize` for every launcher.

Where the job spans several processes:
- on Cloud TPU VMs (and SLURM / GKE / Open MPI), JAX detects the cluster
  itself: `initialize()` needs no arguments;
- elsewhere (several processes on one machine, GPU hosts), the coordinator
  address, process count and process id come from flags or from the
  environment variables below, which `launch/local.py` sets.

Every way a multi-process job ends is bounded in time:
- an uncaught exception on one process ends that process at once
  (`_exit_on_uncaught_exception`): its peers are blocked in a collective
  with it, so the normal exit, whose shutdown barrier waits for them, would
  hang until the shutdown timeout;
- a process whose peer died (killed, or exited as above) learns it from the
  coordination service within HEARTBEAT_TIMEOUT_S and terminates: on a pod
  slice, one host's error ends every host within about a minute;
- a clean exit waits at most SHUTDOWN_TIMEOUT_S for the other processes
  (e.g. one that called `sys.exit(1)` while its peers run on), then the
  coordination service terminates every process;
- a process started by `launch/local.py` dies with the launcher
  (`watch_parent`, besides the launcher's own PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import traceback

import jax

ENV_COORDINATOR = "RG_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RG_NUM_PROCESSES"
ENV_PROCESS_ID = "RG_PROCESS_ID"
# Set by `launch/local.py`: the launcher's pid, which this process outlives
# by at most PARENT_POLL_S.
ENV_PARENT_PID = "RG_PARENT_PID"
PARENT_POLL_S = 1.0

# A lost peer is noticed within HEARTBEAT_TIMEOUT_S; a peer that never
# arrives fails start-up after INITIALIZATION_TIMEOUT_S; an exiting process
# waits at most SHUTDOWN_TIMEOUT_S for the others to exit too.
# RG_HEARTBEAT_TIMEOUT_S overrides the heartbeat (tests use a few seconds).
INITIALIZATION_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 60
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


def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
  """Ends this process within `poll_s` once `parent_pid` is no longer its
  parent (the launcher died, even by SIGKILL, and this one was re-parented).

  Started whenever the launcher sets RG_PARENT_PID, besides Linux's
  PR_SET_PDEATHSIG (which covers only the child's own parent): a daemon thread
  polls `os.getppid()`.
  """

  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(poll_s)
    try:
      print(f"error: the launcher (pid {parent_pid}) is gone; exiting",
            file=sys.stderr, flush=True)
    except (OSError, ValueError):  # its pipe is closed with it
      pass
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="rg-parent-watchdog",
                   daemon=True).start()


def _exit_on_uncaught_exception(process_id: int, num_processes: int) -> None:
  """Makes an uncaught exception end this process now, with exit code 1.

  After the traceback is printed, the normal exit would run
  `jax.distributed.shutdown`, whose barrier waits for the peers: they are
  blocked in a collective with this process, so everything would hang until
  the shutdown timeout. Exiting at once breaks their collectives and their
  heartbeats, so they end too (a half-written checkpoint is never taken as
  complete, see `training.checkpointing`).
  """
  previous = sys.excepthook

  def hook(kind, value, tb) -> None:
    try:
      previous(kind, value, tb)
    except Exception:  # pylint: disable=broad-except
      traceback.print_exception(kind, value, tb)
    try:
      print(f"error: process {process_id} of {num_processes} failed; "
            "exiting without waiting for the others", file=sys.stderr)
      sys.stdout.flush()
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    code = 128 + signal.SIGINT if issubclass(kind, KeyboardInterrupt) else 1
    os._exit(code)  # pylint: disable=protected-access

  sys.excepthook = hook


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ProcessGroup:
  """Joins the job's processes (a no-op for a single process).

  Call once, before any other JAX call that touches devices. In a
  multi-process job, an uncaught exception then ends the process at once
  (see the module docstring).
  """
  if ENV_PARENT_PID in os.environ:
    watch_parent(int(os.environ[ENV_PARENT_PID]))
  group = from_env(coordinator_address, num_processes, process_id)
  timeouts = dict(
      initialization_timeout=INITIALIZATION_TIMEOUT_S,
      heartbeat_timeout_seconds=int(
          os.environ.get(ENV_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_S)),
      shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
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
  joined = ProcessGroup(
      coordinator_address=group.coordinator_address if group else None,
      num_processes=jax.process_count(),
      process_id=jax.process_index(),
  )
  if joined.is_multi_process:
    _exit_on_uncaught_exception(joined.process_id, joined.num_processes)
  return joined
