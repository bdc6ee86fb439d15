"""`recurrentgemma launch-tpu --dry_run` (`launch/tpu.py` in a checkout):
the exact gcloud commands of a pod launch, and what their remote shell
commands do when a worker's shell runs them. The launcher runs in this
process (`common.call`); one test runs the script itself."""

import contextlib
import io
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import launch_tpu
from recurrentgemma_jax.launch import tpu_commands as tc

ROOT = pathlib.Path(__file__).resolve().parents[2]

ACTIONS = ["create", "setup", "run", "logs", "stop", "delete"]
COMMON = ["--name", "rg-pod", "--zone", "z", "--accelerator", "v4-32"]
AWKWARD_ARGS = [
    "--config=experiments/lm.py:model=griffin,data_dir=gs://b/my data",
    "--config.model.note=it's a \"test\" with $HOME and `ticks`",
    "--config.learning_rate=3e-4",
]


def launch(*args: str) -> tuple[int, str, str]:
  """`(exit code, stdout, stderr)` of `recurrentgemma launch-tpu ARGS`."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = common.call(launch_tpu, args)
  return code, out.getvalue(), err.getvalue()


def _commands(out: str) -> list[list[str]]:
  lines = [l for l in out.splitlines() if l.startswith("[dry-run] ")]
  assert lines and len(lines) == len(out.splitlines()), out
  return [shlex.split(l[len("[dry-run] "):]) for l in lines]


def dry_run(*args: str) -> list[list[str]]:
  code, out, err = launch(args[0], "--dry_run", *args[1:])
  assert code == 0, err
  return _commands(out)


def test_the_checkout_script_runs_the_launcher():
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "tpu.py"), "create",
       "--dry_run", *COMMON],
      capture_output=True, text=True, check=True,
  ).stdout
  assert _commands(out) == dry_run("create", *COMMON)


def test_setup_without_a_checkout_needs_a_package(monkeypatch, tmp_path):
  monkeypatch.setattr(launch_tpu, "REPO", str(tmp_path))
  code, out, err = launch("setup", "--dry_run", *COMMON)
  assert (code, out) == (2, "")
  assert err == (f"error: setup ships a git checkout, and {tmp_path} is "
                 "none: pass --package (e.g. a git URL)\n")
  [cmd] = dry_run("setup", *COMMON, "--package", "git+https://x/y.git")
  assert "git+https://x/y.git[tpu]" in remote_command(cmd)


def remote_command(cmd: list[str]) -> str:
  [flag] = [a for a in cmd if a.startswith("--command=")]
  return flag[len("--command="):]


TARGETS = {
    "v5p-64": "v2-alpha-tpuv5",
    "v4-32": "tpu-ubuntu2204-base",
}


@pytest.mark.parametrize("accelerator", list(TARGETS))
def test_create(accelerator):
  [cmd] = dry_run("create", "--name", "rg-pod", "--zone", "us-east5-a",
                  "--accelerator", accelerator, "--project", "my-proj",
                  "--spot")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create",
                     "rg-pod"]
  assert f"--accelerator-type={accelerator}" in cmd
  assert f"--version={TARGETS[accelerator]}" in cmd
  assert {"--spot", "--zone=us-east5-a", "--project=my-proj"} <= set(cmd)


def test_create_queued_reserved():
  [cmd] = dry_run("create", "--name", "rg-pod", "--zone", "us-central2-b",
                  "--accelerator", "v4-32", "--queued", "--reserved")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources",
                     "create", "rg-pod"]
  assert {"--node-id=rg-pod", "--runtime-version=tpu-ubuntu2204-base",
          "--reserved"} <= set(cmd)


@pytest.mark.parametrize("accelerator", list(TARGETS))
def test_run_forwards_flags_to_every_worker(accelerator):
  [cmd] = dry_run("run", "--name", "rg-pod", "--zone", "us-east5-a",
                  "--accelerator", accelerator, "--workdir",
                  "gs://bucket/runs/exp 1", "--run_name", "exp1", "--",
                  *AWKWARD_ARGS)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rg-pod"]
  assert "--worker=all" in cmd
  remote = remote_command(cmd)
  # What the workers' shell will execute, word by word.
  words = shlex.split(remote)
  start = words.index("-m")
  assert words[start + 1] == "recurrentgemma_jax.cli.train"
  end = words.index(">")
  assert words[start + 2:end] == ["--workdir=gs://bucket/runs/exp 1",
                                  *AWKWARD_ARGS]
  assert words[end + 1] == "$HOME/rg_logs/exp1.log"
  assert words[:2] == ["mkdir", "-p"] and "nohup" in words
  # Detached, and its pid recorded for `stop`.
  assert words[end + 2:] == ["2>&1", "<", "/dev/null", "&", "echo", "$!",
                             ">", "$HOME/rg_logs/exp1.pid;", "}"]


def test_setup_installs_on_all_workers():
  cmds = dry_run("setup", "--name", "rg-pod", "--zone", "z",
                 "--accelerator", "v5p-64")
  assert cmds[0][:2] == ["git", "-C"] and "archive" in cmds[0]
  assert "--worker=all" in cmds[1] and "scp" in cmds[1]
  remote = remote_command(cmds[2])
  assert "--worker=all" in cmds[2]
  assert 'pip" install -q -e "$HOME/recurrentgemma_jax[tpu]"' in remote


def test_logs_stop_delete():
  common = COMMON
  [logs] = dry_run("logs", *common, "--run_name", "exp1")
  assert "--worker=0" in logs
  assert shlex.split(remote_command(logs)) == [
      "tail", "-n", "+1", "-F", "$HOME/rg_logs/exp1.log"]
  [stop] = dry_run("stop", *common, "--run_name", "exp1")
  assert "--worker=all" in stop
  remote = remote_command(stop)
  # The run's own process, from its pid file; never a pattern match.
  assert 'kill -TERM "$(cat "$HOME/rg_logs"/exp1.pid)"' in remote
  assert "pkill" not in remote
  [delete] = dry_run("delete", *common)
  assert delete[4:6] == ["delete", "rg-pod"] and "--quiet" in delete


@pytest.mark.parametrize(
    "args,message",
    [
        (["create", "--accelerator", "v9-8"], "--accelerator 'v9-8'"),
        (["run", "--accelerator", "v4-32", "--workdir", "/tmp/x"],
         "need a bucket"),
        (["run", "--accelerator", "v4-32"], "needs --workdir"),
        (["run", "--accelerator", "v4-32", "--workdir", "gs://b/x", "--",
          "--workdir=gs://other"], "not after '--'"),
        (["stop", "--accelerator", "v4-32", "--", "--x=1"], "only go with"),
        (["logs", "--accelerator", "v4-32", "--worker", "0;id"],
         "--worker '0;id'"),
    ],
)
def test_bad_requests_fail_before_running_anything(args, message):
  # --dry_run: a regression prints the commands instead of running gcloud.
  code, out, err = launch(args[0], "--dry_run", "--name", "rg-pod", "--zone",
                          "z", *args[1:])
  assert code == 2
  assert message in err
  assert "gcloud" not in out


MALICIOUS_NAMES = ["x$(touch PWNED)", "x`touch PWNED`", "x;touch PWNED",
                   "x' PWNED", 'x" PWNED', "a b", "../x", "-x", ""]


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_rejects_a_malicious_run_name(action, tmp_path):
  name = f"x$(touch {tmp_path}/PWNED)"
  workdir = ["--workdir", "gs://b/x"] if action == "run" else []
  code, out, err = launch(action, "--dry_run", *COMMON, "--run_name", name,
                          *workdir)
  assert code == 2, out
  assert f"--run_name {name!r}" in err
  assert out == ""


@pytest.mark.parametrize("name", MALICIOUS_NAMES)
def test_command_builders_reject_a_malicious_run_name(name):
  target = tc.Target("rg-pod", "z", "v4-32")
  for build in (lambda: tc.run(target, name, "gs://b/x", []),
                lambda: tc.logs(target, name), lambda: tc.stop(target, name)):
    with pytest.raises(tc.LaunchError, match="--run_name"):
      build()


# Stands in for the workers' venv python: runs until SIGTERM, then leaves
# a mark named after its pid (and never outlives a broken test by > 60 s).
FAKE_TRAINER = """#!/bin/sh
trap 'touch "$HOME/terminated.$$"; exit 143' TERM
i=0
while [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
"""


def _worker_home(tmp_path) -> pathlib.Path:
  home = tmp_path / "home"
  (home / "recurrentgemma_jax").mkdir(parents=True)
  python = home / "rg_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(FAKE_TRAINER)
  python.chmod(0o755)
  return home


def _on_worker(home, cmd) -> subprocess.CompletedProcess:
  """Runs `cmd`'s remote command as a worker's shell would."""
  return subprocess.run(["sh", "-c", remote_command(cmd)],
                        env={**os.environ, "HOME": str(home)},
                        capture_output=True, text=True, timeout=30)


def _running(pid: int) -> bool:
  try:
    return "\nState:\tZ" not in pathlib.Path(
        f"/proc/{pid}/status").read_text()
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"),
                    reason="the remote commands target Linux workers")
def test_stop_signals_only_its_own_run(tmp_path):
  """Two runs on a worker (both `recurrentgemma_jax.cli.train`): `stop` ends
  the named one only; `run` refuses to start a running run twice."""
  home = _worker_home(tmp_path)
  pids = {}

  def run(name):
    [cmd] = dry_run("run", *COMMON, "--workdir", "gs://b/x", "--run_name",
                    name)
    return _on_worker(home, cmd)

  try:
    for name in ("exp1", "other"):
      assert run(name).returncode == 0
      pids[name] = int((home / "rg_logs" / f"{name}.pid").read_text())
    assert all(_running(p) for p in pids.values())
    again = run("exp1")
    assert again.returncode == 1
    assert "run exp1 is already running" in again.stderr
    [stop] = dry_run("stop", *COMMON, "--run_name", "exp1")
    out = _on_worker(home, stop)
    assert out.returncode == 0 and "exp1: sent SIGTERM" in out.stdout
    deadline = time.time() + 10
    while _running(pids["exp1"]) and time.time() < deadline:
      time.sleep(0.05)
    assert (home / f"terminated.{pids['exp1']}").exists()
    assert not _running(pids["exp1"])
    assert _running(pids["other"])
    assert not (home / f"terminated.{pids['other']}").exists()
    out = _on_worker(home, stop)
    assert out.returncode == 0 and "exp1 is not running" in out.stdout
  finally:
    for pid in pids.values():
      if _running(pid):
        os.kill(pid, signal.SIGKILL)
