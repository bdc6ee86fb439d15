"""`launch/tpu.py --dry_run`: the exact gcloud commands of a pod launch."""

import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
AWKWARD_ARGS = [
    "--config=experiments/lm.py:model=griffin,data_dir=gs://b/my data",
    "--config.model.note=it's a \"test\" with $HOME and `ticks`",
    "--config.learning_rate=3e-4",
]


def dry_run(*args: str) -> list[list[str]]:
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "tpu.py"), args[0], "--dry_run",
       *args[1:]],
      capture_output=True, text=True, check=True,
  ).stdout
  lines = [l for l in out.splitlines() if l.startswith("[dry-run] ")]
  assert lines and len(lines) == len(out.splitlines()), out
  return [shlex.split(l[len("[dry-run] "):]) for l in lines]


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
  assert words[start + 1] == "recurrentgemma_jax.train"
  end = words.index(">")
  assert words[start + 2:end] == ["--workdir=gs://bucket/runs/exp 1",
                                  *AWKWARD_ARGS]
  assert words[end + 1] == "$HOME/rg_logs/exp1.log"
  assert words[:2] == ["mkdir", "-p"] and "nohup" in words
  assert remote.rstrip().endswith("&")


def test_setup_installs_on_all_workers():
  cmds = dry_run("setup", "--name", "rg-pod", "--zone", "z",
                 "--accelerator", "v5p-64")
  assert cmds[0][:2] == ["git", "-C"] and "archive" in cmds[0]
  assert "--worker=all" in cmds[1] and "scp" in cmds[1]
  remote = remote_command(cmds[2])
  assert "--worker=all" in cmds[2]
  assert 'pip" install -q -e "$HOME/recurrentgemma_jax[tpu]"' in remote


def test_logs_stop_delete():
  common = ["--name", "rg-pod", "--zone", "z", "--accelerator", "v4-32"]
  [logs] = dry_run("logs", *common, "--run_name", "exp1")
  assert "--worker=0" in logs and "tail" in remote_command(logs)
  [stop] = dry_run("stop", *common)
  assert "--worker=all" in stop
  assert "pkill -TERM -f recurrentgemma_jax.train" in remote_command(stop)
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
    ],
)
def test_bad_requests_fail_before_running_anything(args, message):
  proc = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "tpu.py"), args[0],
       "--name", "rg-pod", "--zone", "z", *args[1:]],
      capture_output=True, text=True,
  )
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "gcloud" not in proc.stdout
