"""gcloud command lines for Cloud TPU VMs (pure functions, no side effects).

Every builder returns argv lists; `recurrentgemma launch-tpu` (also
`launch/tpu.py`) prints or runs them. Keeping
them pure lets tests check exactly what a launch would do. Every value that
ends up in a remote shell command is validated (`check_run_name`) and
quoted with `shlex.quote`.
"""

from __future__ import annotations

import dataclasses
import re
import shlex

# Accelerator family -> runtime (software) version for JAX, from the Cloud
# TPU documentation's "TPU software versions" table.
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
ACCELERATOR = re.compile(r"^(v4|v5litepod|v5p|v6e)-(\d+)$")
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
WORKER = re.compile(r"all|\d+(,\d+)*")

# Fixed remote directories, expanded by the workers' shell (inside double
# quotes, never shlex-quoted); file names under them are shlex-quoted.
REMOTE_DIR = "$HOME/recurrentgemma_jax"
LOG_DIR = "$HOME/rg_logs"
VENV = "$HOME/rg_venv"
TRAINER = "recurrentgemma_jax.cli.train"


class LaunchError(ValueError):
  """A launch request that cannot be turned into commands."""


def check_run_name(run_name: str) -> str:
  """`run_name` names files in remote shell commands: a safe word only."""
  if not RUN_NAME.fullmatch(run_name):
    raise LaunchError(
        f"--run_name {run_name!r}: letters, digits and '_.-' only, not "
        "starting with '.' or '-'")
  return run_name


def check_worker(worker: str) -> str:
  if not WORKER.fullmatch(worker):
    raise LaunchError(
        f"--worker {worker!r}: 'all' or worker numbers such as 0 or 0,3")
  return worker


def _run_file(run_name: str, suffix: str) -> str:
  """The remote path of the run's log or pid file, quoted for the shell."""
  return f'"{LOG_DIR}"/' + shlex.quote(check_run_name(run_name) + suffix)


def _echo(message: str) -> str:
  """Shell command printing `message` and the worker's host name."""
  return f'echo {shlex.quote(message)} "$(hostname)"'


def _is_running(pid_file: str) -> str:
  """Shell test: `pid_file` names a live trainer (not a reused pid)."""
  return (f'[ -f {pid_file} ] && grep -qaF {TRAINER} '
          f'/proc/"$(cat {pid_file})"/cmdline 2>/dev/null')


@dataclasses.dataclass(frozen=True)
class Target:
  """A TPU VM (or queued resource) and where it lives."""

  name: str
  zone: str
  accelerator: str
  project: str | None = None
  runtime_version: str | None = None

  def __post_init__(self):
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", self.name):
      raise LaunchError(
          f"--name {self.name!r}: lowercase letters, digits and '-', starting"
          " with a letter"
      )
    match = ACCELERATOR.match(self.accelerator)
    if not match:
      raise LaunchError(
          f"--accelerator {self.accelerator!r}: expected one of "
          f"{sorted(RUNTIME_VERSIONS)} followed by '-<size>', e.g. v5p-64"
      )

  @property
  def family(self) -> str:
    return ACCELERATOR.match(self.accelerator)[1]

  @property
  def runtime(self) -> str:
    return self.runtime_version or RUNTIME_VERSIONS[self.family]

  def common_flags(self) -> list[str]:
    flags = [f"--zone={self.zone}"]
    if self.project:
      flags.append(f"--project={self.project}")
    return flags


def _tpu_vm(target: Target, *args: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", *args, *target.common_flags()]


def create(
    target: Target, *, spot: bool = False, reserved: bool = False,
    queued: bool = False,
) -> list[list[str]]:
  """Creates the TPU VM, or a queued resource that provisions it."""
  if spot and reserved:
    raise LaunchError("--spot and --reserved are exclusive")
  capacity = ["--spot"] if spot else ["--reserved"] if reserved else []
  if queued:
    return [[
        "gcloud", "compute", "tpus", "queued-resources", "create",
        target.name, f"--node-id={target.name}",
        f"--accelerator-type={target.accelerator}",
        f"--runtime-version={target.runtime}", *capacity,
        *target.common_flags(),
    ]]
  return [_tpu_vm(
      target, "create", target.name,
      f"--accelerator-type={target.accelerator}",
      f"--version={target.runtime}", *capacity,
  )]


def ssh_all(target: Target, remote: str, worker: str = "all") -> list[str]:
  """Runs the shell command `remote` on the workers (all by default)."""
  return _tpu_vm(target, "ssh", target.name, f"--worker={check_worker(worker)}",
                 f"--command={remote}")


def setup(target: Target, source: str, package: str | None) -> list[list[str]]:
  """Installs this package (and libtpu) in a venv on every worker.

  `package` is a pip requirement (e.g. a git URL); without it the committed
  HEAD of the local checkout `source` is archived, copied to every worker and
  installed editable (uncommitted changes are not shipped: commit first).
  """
  steps = []
  unpack = []
  if package is None:
    archive = f"/tmp/{target.name}-src.tar.gz"
    steps.append(["git", "-C", source, "archive", "--format=tar.gz",
                  f"--output={archive}", "HEAD"])
    steps.append(_tpu_vm(target, "scp", archive,
                         f"{target.name}:~/rg_src.tar.gz", "--worker=all"))
    unpack = [
        f'rm -rf "{REMOTE_DIR}"',
        f'mkdir -p "{REMOTE_DIR}"',
        f'tar -xzf "$HOME/rg_src.tar.gz" -C "{REMOTE_DIR}"',
    ]
    requirement = f'-e "{REMOTE_DIR}[tpu]"'
  else:
    requirement = shlex.quote(f"{package}[tpu]" if "[" not in package
                              else package)
  install = " && ".join([
      *unpack,
      f'python3 -m venv "{VENV}"',
      f'"{VENV}/bin/pip" install -q --upgrade pip',
      f'"{VENV}/bin/pip" install -q {requirement}',
      f'mkdir -p "{LOG_DIR}"',
  ])
  steps.append(ssh_all(target, install))
  return steps


def run(
    target: Target, run_name: str, workdir: str, train_args: list[str]
) -> list[list[str]]:
  """Starts `python -m recurrentgemma_jax.cli.train` on all workers at once.

  Every worker runs the same program (JAX finds its peers on a TPU VM). The
  process is detached with nohup so that closing ssh does not stop it; its
  output goes to `~/rg_logs/<run_name>.log` and its pid to
  `~/rg_logs/<run_name>.pid` on each worker (read by `stop`). A run whose
  trainer is still running there is not started twice.
  """
  log, pid_file = _run_file(run_name, ".log"), _run_file(run_name, ".pid")
  if any(a == "--workdir" or a.startswith("--workdir=") for a in train_args):
    raise LaunchError("give the workdir with --workdir, not after '--'")
  if not workdir.startswith("gs://"):
    raise LaunchError(
        f"--workdir {workdir!r}: multi-host runs need a bucket (gs://...) that"
        " every worker can write"
    )
  args = shlex.join([f"--workdir={workdir}", *train_args])
  remote = (
      f'mkdir -p "{LOG_DIR}" && cd "{REMOTE_DIR}" && '
      f'if {_is_running(pid_file)}; then '
      f'{_echo(f"error: run {run_name} is already running on")} >&2; '
      'exit 1; fi && '
      f'{{ nohup "{VENV}/bin/python" -m {TRAINER} {args} '
      f'> {log} 2>&1 < /dev/null & echo $! > {pid_file}; }}'
  )
  return [ssh_all(target, remote)]


def logs(target: Target, run_name: str, worker: str = "0",
         follow: bool = True) -> list[list[str]]:
  """Streams (or prints) one worker's log of the run."""
  tail = "tail -n +1 -F" if follow else "cat"
  return [ssh_all(target, f"{tail} {_run_file(run_name, '.log')}",
                  worker=worker)]


def stop(target: Target, run_name: str) -> list[list[str]]:
  """SIGTERM to the run's trainer on every worker: it checkpoints and exits.

  Only the process in the run's pid file (written by `run`) is signalled,
  never another run's trainer or a reused pid.
  """
  pid_file = _run_file(run_name, ".pid")
  remote = (
      f'if {_is_running(pid_file)}; then '
      f'kill -TERM "$(cat {pid_file})" && '
      f'{_echo(f"run {run_name}: sent SIGTERM to the trainer on")}; '
      f'else {_echo(f"run {run_name} is not running on")}; fi'
  )
  return [ssh_all(target, remote)]


def delete(target: Target, queued: bool = False) -> list[list[str]]:
  if queued:
    return [[
        "gcloud", "compute", "tpus", "queued-resources", "delete",
        target.name, "--force", "--quiet", *target.common_flags(),
    ]]
  return [_tpu_vm(target, "delete", target.name, "--quiet")]
