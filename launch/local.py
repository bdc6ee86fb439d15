#!/usr/bin/env python3
"""Run a training job as several JAX processes on this machine.

    python launch/local.py --num_processes 2 --devices_per_process 4 \
        -- --config=experiments/selective_copy.py:runlocal --workdir=/tmp/run

Each process is `python -m recurrentgemma_jax.train <args>` on the CPU backend
with `--devices_per_process` simulated devices; the processes find each other
through a coordinator on 127.0.0.1 (gloo collectives), exactly as the hosts of
a TPU pod slice do. Output lines are prefixed with the process id. If one
process fails, the others are stopped and the launcher exits with its code,
so a lost peer never leaves the job hanging.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
      PYTHONUNBUFFERED="1",
  )
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (REPO, env.get("PYTHONPATH")) if p)
  return env


def _pump(proc: subprocess.Popen, prefix: str) -> None:
  for line in proc.stdout:
    sys.stdout.write(f"{prefix}{line}")
    sys.stdout.flush()


def launch(num_processes: int, devices_per_process: int,
           train_args: list[str], module: str = "recurrentgemma_jax.train",
           timeout: float | None = None) -> int:
  """Runs the processes; returns 0, or the first non-zero exit code."""
  port = free_port()
  procs = []
  for i in range(num_processes):
    procs.append(subprocess.Popen(
        [sys.executable, "-m", module, *train_args],
        env=process_env(i, num_processes, devices_per_process, port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ))
  pumps = [threading.Thread(target=_pump, args=(p, f"[{i}] "), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()
  code = 0
  try:
    pending = set(range(num_processes))
    while pending and code == 0:
      for i in list(pending):
        try:
          rc = procs[i].wait(timeout=0.2)
        except subprocess.TimeoutExpired:
          continue
        pending.discard(i)
        if rc:
          print(f"[launch] process {i} exited with {rc}; stopping the others",
                file=sys.stderr)
          code = rc
      if timeout is not None:
        timeout -= 0.2
        if timeout <= 0 and pending:
          print("[launch] timed out", file=sys.stderr)
          code = 124
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        p.kill()
    for t in pumps:
      t.join(timeout=5)
  return code


def main(argv: list[str]) -> int:
  if "--" in argv:
    split = argv.index("--")
    argv, train_args = argv[:split], argv[split + 1:]
  else:
    train_args = []
  p = argparse.ArgumentParser(prog="launch/local.py",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=4)
  p.add_argument("--module", default="recurrentgemma_jax.train",
                 help="the Python module each process runs")
  p.add_argument("--timeout", type=float, help="seconds before giving up")
  args = p.parse_args(argv)
  if args.num_processes < 1 or args.devices_per_process < 1:
    p.error("--num_processes and --devices_per_process must be >= 1")
  return launch(args.num_processes, args.devices_per_process, train_args,
                args.module, args.timeout)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
