"""Run a training job as several JAX processes on this machine.

    launch(2, 4, ["--config=experiments/selective_copy.py:runlocal",
                  "--workdir=/tmp/run"])

(`recurrentgemma launch-local` and `launch/local.py` are its command line.)
Each process is `python -m recurrentgemma_jax.cli.train <args>` on the CPU
backend with `--devices_per_process` simulated devices; the processes find
each other through a coordinator on 127.0.0.1 (gloo collectives), exactly as
the hosts of a TPU pod slice do. Output lines are prefixed with the process
id.

The job ends in bounded time whatever happens:
- the first process to fail (exception, signal) has the others killed at
  once (they are blocked in collectives with it, and no checkpoint can be
  written without it); the launcher then repeats that process's last lines
  and exits with its code (128 + N for signal N);
- SIGTERM / Ctrl-C to the launcher, or `--timeout`, sends SIGTERM to every
  process (they save a checkpoint together) and SIGKILL after STOP_GRACE_S;
- the processes die with the launcher, even when it is killed with SIGKILL
  (PR_SET_PDEATHSIG on Linux, and `distributed.watch_parent` everywhere).
"""

from __future__ import annotations

import collections
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

# The checkout holding this package: the processes import it from there.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TRAINER = "recurrentgemma_jax.cli.train"
STOP_GRACE_S = 30
TAIL_LINES = 20
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, devices: int,
                port: int) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  env.update(
      XLA_FLAGS=" ".join(flags),
      JAX_PLATFORMS="cpu",
      RG_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      RG_NUM_PROCESSES=str(num_processes),
      RG_PROCESS_ID=str(process_id),
      RG_PARENT_PID=str(os.getpid()),
      PYTHONUNBUFFERED="1",
  )
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (REPO, env.get("PYTHONPATH")) if p)
  return env


def _die_with_parent() -> Callable[[], None] | None:
  """A `preexec_fn` making Linux SIGKILL the child when the launcher dies.

  Elsewhere (None), the child's `distributed.watch_parent` thread is the
  fallback.
  """
  if not sys.platform.startswith("linux"):
    return None
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None
  parent = os.getpid()

  def preexec() -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before prctl took effect
      os._exit(1)  # pylint: disable=protected-access

  return preexec


def _pump(proc: subprocess.Popen, prefix: str,
          tail: collections.deque) -> None:
  for line in proc.stdout:
    tail.append(line)
    sys.stdout.write(f"{prefix}{line}")
    sys.stdout.flush()


def _describe(rc: int) -> str:
  if rc < 0:
    try:
      return f"signal {signal.Signals(-rc).name}"
    except ValueError:
      return f"signal {-rc}"
  return f"exit code {rc}"


def _note(message: str) -> None:
  print(f"[launch] {message}", file=sys.stderr, flush=True)


def _catch_stop_signals(stop: threading.Event) -> Callable[[], None]:
  """SIGTERM / SIGINT set `stop`; returns a function undoing it."""
  if threading.current_thread() is not threading.main_thread():
    return lambda: None
  previous = {s: signal.signal(s, lambda *_: stop.set())
              for s in (signal.SIGTERM, signal.SIGINT)}
  return lambda: [signal.signal(s, h) for s, h in previous.items()]


def _supervise(procs: list[subprocess.Popen], exits: queue.Queue,
               stop: threading.Event,
               timeout: float | None) -> tuple[int, int | None]:
  """Waits for every process; returns (exit code, first failed process)."""
  now = time.monotonic()
  deadline = None if timeout is None else now + timeout
  running = set(range(len(procs)))
  code, failed, grace_end, killed = 0, None, None, False
  while running:
    now = time.monotonic()
    if grace_end is None and failed is None and (
        stop.is_set() or (deadline is not None and now > deadline)):
      code = 128 + signal.SIGTERM if stop.is_set() else 124
      _note(("stopping" if stop.is_set() else "timed out") +
            f": SIGTERM to every process, SIGKILL after {STOP_GRACE_S}s")
      for i in running:
        procs[i].terminate()
      grace_end = now + STOP_GRACE_S
    if grace_end is not None and now > grace_end and not killed:
      _note(f"processes {sorted(running)} still running: SIGKILL")
      for i in running:
        procs[i].kill()
      killed = True
    try:
      # Exits arrive in the order they happened (one waiting thread each),
      # so the first failure is the cause, not a peer that died of it.
      i, rc = exits.get(timeout=0.1)
    except queue.Empty:
      continue
    running.discard(i)
    if rc and failed is None and grace_end is None:
      failed, code = i, (128 - rc if rc < 0 else rc)
      _note(f"process {i} exited with {_describe(rc)}; killing the others"
            + (f" {sorted(running)}" if running else ""))
      for j in running:
        procs[j].kill()
  return code, failed


def launch(num_processes: int, devices_per_process: int,
           train_args: list[str], module: str = TRAINER,
           timeout: float | None = None) -> int:
  """Runs the processes; returns 0 or the exit code of the first failure
  (128 + N for signal N; 124 on timeout, 143 when stopped by a signal)."""
  port = free_port()
  preexec = _die_with_parent()
  procs: list[subprocess.Popen] = []
  try:
    for i in range(num_processes):
      procs.append(subprocess.Popen(
          [sys.executable, "-m", module, *train_args],
          env=process_env(i, num_processes, devices_per_process, port),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          preexec_fn=preexec,
          # Not in the terminal's process group: Ctrl-C reaches the
          # launcher only, which turns it into a SIGTERM that saves.
          process_group=0,
      ))
      _note(f"process {i}: pid {procs[-1].pid}")
  except BaseException:
    for p in procs:
      p.kill()
    raise
  # Threads start only once every child is forked (preexec_fn and threads
  # do not mix).
  tails = [collections.deque(maxlen=TAIL_LINES) for _ in procs]
  exits = queue.Queue()
  pumps = [threading.Thread(target=_pump, args=(p, f"[{i}] ", tails[i]),
                            daemon=True) for i, p in enumerate(procs)]
  waiters = [threading.Thread(target=lambda i=i, p=p: exits.put((i, p.wait())),
                              daemon=True) for i, p in enumerate(procs)]
  for t in pumps + waiters:
    t.start()
  stop = threading.Event()
  restore_signals = _catch_stop_signals(stop)
  try:
    code, failed = _supervise(procs, exits, stop, timeout)
  finally:
    restore_signals()
    for p in procs:
      p.kill()  # a no-op for those that exited
    for t in waiters + pumps:
      t.join(timeout=5)
  if failed is not None:
    rc = procs[failed].returncode
    _note(f"process {failed} failed first ({_describe(rc)}); its last "
          "lines:")
    for line in tails[failed]:
      sys.stderr.write(f"[launch] [{failed}] {line}")
    sys.stderr.flush()
  return code
