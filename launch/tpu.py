#!/usr/bin/env python3
"""Run recurrentgemma_jax experiments on Cloud TPU VMs and pod slices.

    python launch/tpu.py ACTION --name NAME --zone ZONE --accelerator TYPE \
        [--project P] [--spot | --reserved] [--queued] [--dry_run] \
        [-- TRAIN_ARGS...]

ACTION is one of:
  create   create the TPU VM (or a queued resource with --queued)
  setup    copy this checkout to every worker and install it with libtpu
  run      start training on all workers at once (needs --workdir gs://...)
  logs     stream worker 0's log of a run (--worker to pick another)
  stop     SIGTERM the run's trainer everywhere (it checkpoints, then exits)
  delete   delete the TPU VM / queued resource

Everything after `--` is forwarded to `python -m recurrentgemma_jax.train`
verbatim, quoted for the remote shell. `--dry_run` prints every command and
runs none. See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import tpu_commands as tc

ACTIONS = ("create", "setup", "run", "logs", "stop", "delete")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("action", choices=ACTIONS)
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True, help="e.g. us-east5-a")
  p.add_argument("--accelerator", required=True,
                 help="accelerator type, e.g. v5p-64, v4-32, v5litepod-16")
  p.add_argument("--project", help="GCP project (default: gcloud's)")
  p.add_argument("--runtime_version",
                 help="TPU software version (default: by accelerator family)")
  capacity = p.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="spot capacity")
  capacity.add_argument("--reserved", action="store_true",
                        help="reserved capacity")
  p.add_argument("--queued", action="store_true",
                 help="use a queued resource (create/delete)")
  p.add_argument("--package",
                 help="setup: pip requirement to install instead of copying "
                 "this checkout (e.g. a git URL)")
  p.add_argument("--workdir", help="run: gs:// directory for the run")
  p.add_argument("--run_name", default="train",
                 help="run/logs/stop: the run's name (names its log and pid "
                 "files; letters, digits, '_.-')")
  p.add_argument("--worker", default="0", help="logs: which worker")
  p.add_argument("--dry_run", action="store_true",
                 help="print the commands, run nothing")
  return p


def commands(args, train_args: list[str]) -> list[list[str]]:
  target = tc.Target(args.name, args.zone, args.accelerator, args.project,
                     args.runtime_version)
  # Whatever the action: a bad value fails before any command is printed.
  tc.check_run_name(args.run_name)
  tc.check_worker(args.worker)
  if args.action == "create":
    return tc.create(target, spot=args.spot, reserved=args.reserved,
                     queued=args.queued)
  if args.action == "setup":
    return tc.setup(target, REPO, args.package)
  if args.action == "run":
    if not args.workdir:
      raise tc.LaunchError("run needs --workdir gs://BUCKET/DIR")
    return tc.run(target, args.run_name, args.workdir, train_args)
  if args.action == "logs":
    return tc.logs(target, args.run_name, worker=args.worker)
  if args.action == "stop":
    return tc.stop(target, args.run_name)
  return tc.delete(target, queued=args.queued)


def main(argv: list[str]) -> int:
  if "--" in argv:
    split = argv.index("--")
    argv, train_args = argv[:split], argv[split + 1:]
  else:
    train_args = []
  args = _parser().parse_args(argv)
  if train_args and args.action != "run":
    print(f"error: arguments after '--' only go with 'run', not "
          f"{args.action!r}", file=sys.stderr)
    return 2
  try:
    cmds = commands(args, train_args)
  except tc.LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for cmd in cmds:
    print(("[dry-run] " if args.dry_run else "+ ") + shlex.join(cmd),
          flush=True)
    if not args.dry_run:
      result = subprocess.run(cmd, check=False)
      if result.returncode:
        print(f"error: command failed with exit code {result.returncode}",
              file=sys.stderr)
        return result.returncode
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
