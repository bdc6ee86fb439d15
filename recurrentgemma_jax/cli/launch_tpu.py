r"""Run recurrentgemma_jax experiments on Cloud TPU VMs and pod slices.

    recurrentgemma launch-tpu ACTION --name NAME --zone ZONE \
        --accelerator TYPE [--project P] [--spot | --reserved] [--queued] \
        [--dry_run] [-- TRAIN_ARGS...]

ACTION is one of:
  create   create the TPU VM (or a queued resource with --queued)
  setup    copy this checkout to every worker and install it with libtpu
  run      start training on all workers at once (needs --workdir gs://...)
  logs     stream worker 0's log of a run (--worker to pick another)
  stop     SIGTERM the run's trainer everywhere (it checkpoints, then exits)
  delete   delete the TPU VM / queued resource

Everything after `--` is forwarded to `python -m recurrentgemma_jax.cli.train`
verbatim, quoted for the remote shell. `--dry_run` prints every command and
runs none. The commands are built by `recurrentgemma_jax.launch.
tpu_commands`; see launch/README.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import flags

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.launch import tpu_commands as tc

ACTIONS = ("create", "setup", "run", "logs", "stop", "delete")
# The checkout that `setup` ships (its committed HEAD).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# What follows `--` is the trainer's command line.
PASSTHROUGH = True


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("name", None, "TPU VM name", **kw)
  flags.DEFINE_string("zone", None, "e.g. us-east5-a", **kw)
  flags.DEFINE_string("accelerator", None,
                      "accelerator type, e.g. v5p-64, v4-32, v5litepod-16",
                      **kw)
  flags.mark_flags_as_required(["name", "zone", "accelerator"], **kw)
  flags.DEFINE_string("project", None, "GCP project (default: gcloud's)",
                      **kw)
  flags.DEFINE_string("runtime_version", None,
                      "TPU software version (default: by accelerator family)",
                      **kw)
  flags.DEFINE_bool("spot", False, "spot capacity", **kw)
  flags.DEFINE_bool("reserved", False, "reserved capacity", **kw)
  flags.DEFINE_bool("queued", False, "use a queued resource (create/delete)",
                    **kw)
  flags.DEFINE_string("package", None,
                      "setup: pip requirement to install instead of copying "
                      "this checkout (e.g. a git URL)", **kw)
  flags.DEFINE_string("workdir", None, "run: gs:// directory for the run",
                      **kw)
  flags.DEFINE_string("run_name", "train",
                      "run/logs/stop: the run's name (names its log and pid "
                      "files; letters, digits, '_.-')", **kw)
  flags.DEFINE_string("worker", "0", "logs: which worker", **kw)
  flags.DEFINE_bool("dry_run", False, "print the commands, run nothing", **kw)


def commands(action: str, f: flags.FlagValues,
             train_args: list[str]) -> list[list[str]]:
  """The command lines of `action`.

  Raises:
    tc.LaunchError: a bad value, before any command is built.
  """
  target = tc.Target(f.name, f.zone, f.accelerator, f.project,
                     f.runtime_version)
  # Whatever the action: a bad value fails before any command is printed.
  tc.check_run_name(f.run_name)
  tc.check_worker(f.worker)
  if f.spot and f.reserved:
    raise tc.LaunchError("--spot and --reserved are exclusive")
  if action == "create":
    return tc.create(target, spot=f.spot, reserved=f.reserved,
                     queued=f.queued)
  if action == "setup":
    if f.package is None and not os.path.exists(os.path.join(REPO, ".git")):
      raise tc.LaunchError(f"setup ships a git checkout, and {REPO} is none: "
                           "pass --package (e.g. a git URL)")
    return tc.setup(target, REPO, f.package)
  if action == "run":
    if not f.workdir:
      raise tc.LaunchError("run needs --workdir gs://BUCKET/DIR")
    return tc.run(target, f.run_name, f.workdir, train_args)
  if action == "logs":
    return tc.logs(target, f.run_name, worker=f.worker)
  if action == "stop":
    return tc.stop(target, f.run_name)
  return tc.delete(target, queued=f.queued)


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Prints (and unless --dry_run, runs) the action's commands; the exit
  code (2 for a bad request, else the first failing command's)."""
  args, train_args = common.split_passthrough(args)
  if len(args) != 1 or args[0] not in ACTIONS:
    print(f"error: give one action, one of {', '.join(ACTIONS)} (got "
          f"{args})", file=sys.stderr)
    return 2
  action = args[0]
  if train_args and action != "run":
    print(f"error: arguments after '--' only go with 'run', not "
          f"{action!r}", file=sys.stderr)
    return 2
  try:
    cmds = commands(action, f, train_args)
  except tc.LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for cmd in cmds:
    print(("[dry-run] " if f.dry_run else "+ ") + shlex.join(cmd),
          flush=True)
    if not f.dry_run:
      result = subprocess.run(cmd, check=False)
      if result.returncode:
        print(f"error: command failed with exit code {result.returncode}",
              file=sys.stderr)
        return result.returncode
  return 0


def main() -> None:
  common.start(sys.modules[__name__])


if __name__ == "__main__":
  main()
