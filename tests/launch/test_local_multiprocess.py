"""Multi-process training on CPU (gloo collectives), as on a pod slice.

`launch/local.py` runs 2 processes x 4 simulated devices; the same config on
1 process x 8 devices gives the same losses, checkpoints move between the
two process counts and meshes in both directions, and a process whose peer
dies exits with an error instead of hanging.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
import train_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

# Share compiled programs between the runs (and with tests/train).
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
    tempfile.gettempdir(), "rg_train_tests_jax_cache")

CONFIG_FILE = """
import train_testlib

def get_config(arg=None):
  return train_testlib.tiny_config(
      total_steps=4, checkpoint_every=2, eval_every=100, log_every=1,
      batch_size=8, seq_len=32)
"""

# float32 compute; 2 x 4 and 1 x 8 devices only differ in the order of the
# batch rows (each process reads every other example) and thus in reduction
# orders: losses agree to float32 rounding.
TOLERANCE = 1e-5


def _env(devices: int | None = None, **extra) -> dict[str, str]:
  env = train_testlib.env(
      PYTHONPATH=f"{REPO}:{REPO / 'tests' / 'train'}",
      JAX_COMPILATION_CACHE_DIR=CACHE,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  for name in ("RG_COORDINATOR_ADDRESS", "RG_NUM_PROCESSES", "RG_PROCESS_ID"):
    env.pop(name, None)
  env.update(extra)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _train_args(config_file, workdir, *overrides):
  return [f"--config={config_file}", f"--workdir={workdir}", *overrides]


def _one_process(devices, config_file, workdir, *overrides):
  result = subprocess.run(
      [sys.executable, "-m", "recurrentgemma_jax.train",
       *_train_args(config_file, workdir, *overrides)],
      cwd=REPO, env=_env(devices), text=True, capture_output=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout + result.stderr


def _two_processes(config_file, workdir, *overrides):
  result = subprocess.run(
      [sys.executable, "launch/local.py", "--num_processes=2",
       "--devices_per_process=4", "--timeout=300", "--",
       *_train_args(config_file, workdir, *overrides)],
      cwd=REPO, env=_env(), text=True, capture_output=True, timeout=360)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return result.stdout + result.stderr


def _losses(workdir) -> dict[int, float]:
  return {s: v[-1] for s, v in train_testlib.losses(workdir).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 4-step run on 1 x 8 and on 2 x 4 devices (mesh data=8)."""
  root = tmp_path_factory.mktemp("multiprocess")
  config_file = root / "tiny.py"
  config_file.write_text(CONFIG_FILE)
  one, two = root / "one_x8", root / "two_x4"
  _one_process(8, config_file, one)
  out = _two_processes(config_file, two)
  return root, config_file, one, two, out


def test_two_processes_match_one_process(runs):
  _, _, one, two, out = runs
  losses_one, losses_two = _losses(one), _losses(two)
  assert sorted(losses_two) == [1, 2, 3, 4]
  np.testing.assert_allclose(
      [losses_two[s] for s in range(1, 5)],
      [losses_one[s] for s in range(1, 5)], rtol=0, atol=TOLERANCE)
  # Only process 0 reports; both processes wrote their shards and their
  # data-iterator states into the shared checkpoints.
  assert "[0] step 4/4" in out and "[1] step" not in out
  data = two / "checkpoints" / "4" / "data"
  assert {p.name for p in data.glob("process_*")} == {
      "process_0-of-2.json", "process_1-of-2.json"}


def test_checkpoints_move_between_process_counts_and_meshes(runs):
  root, config_file, one, two, _ = runs
  # 2 processes (data=8) -> 1 process x 2 devices (fsdp=2).
  to_one = root / "two_then_one_x2"
  shutil.copytree(two, to_one)
  out = _one_process(2, config_file, to_one, "--config.total_steps=6",
                     "--config.mesh.data=1", "--config.mesh.fsdp=2")
  assert "resuming from step 4" in out
  assert "written by 2 processes" in out
  # 1 process x 8 (data=8) -> 2 processes (data=2 x fsdp=4).
  to_two = root / "one_then_two"
  shutil.copytree(one, to_two)
  out = _two_processes(config_file, to_two, "--config.total_steps=6",
                       "--config.mesh.data=2", "--config.mesh.fsdp=4")
  assert "resuming from step 4" in out
  a, b = _losses(to_one), _losses(to_two)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
  # Both continue from equal states on the same data (steps 5 and 6).
  np.testing.assert_allclose([a[5], a[6]], [b[5], b[6]], rtol=0,
                             atol=TOLERANCE)
  assert a[6] < a[1]


def test_lost_peer_stops_the_survivor(runs):
  """SIGKILL one of two processes: the other exits non-zero in bounded
  time (the coordination service's heartbeat timeout, 5 s here)."""
  root, config_file, *_ = runs
  workdir = root / "lost_peer"
  port = _free_port()
  procs = []
  for i in range(2):
    env = _env(4, RG_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               RG_NUM_PROCESSES="2", RG_PROCESS_ID=str(i),
               RG_HEARTBEAT_TIMEOUT_S="5")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "recurrentgemma_jax.train",
         *_train_args(config_file, workdir, "--config.total_steps=100000",
                      "--config.checkpoint_every=100000")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=open(root / f"lost_peer_{i}.log", "w")))
  try:
    deadline = time.time() + 180
    while time.time() < deadline:
      if (workdir / "metrics.jsonl").exists() and max(
          train_testlib.losses(workdir), default=0) >= 2:
        break
      assert all(p.poll() is None for p in procs), "a process exited early"
      time.sleep(0.1)
    else:
      pytest.fail("training did not reach step 2")
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    rc = procs[0].wait(timeout=120)
    elapsed = time.time() - killed
    assert rc != 0, (root / "lost_peer_0.log").read_text()[-3000:]
    assert elapsed < 120
    print(f"\nsurvivor exited with {rc} after {elapsed:.1f}s")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
