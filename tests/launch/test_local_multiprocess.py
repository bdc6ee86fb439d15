"""Multi-process training on CPU (gloo collectives), as on a pod slice.

`launch/local.py` runs 2 processes x 4 simulated devices; the same config on
1 process x 8 devices gives the same losses, checkpoints move between the
two process counts and meshes in both directions, and every way a job can
end is bounded in time: a process whose peer dies exits with an error, an
exception on one process ends the job, and the trainers die with a killed
launcher.
"""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
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
      [sys.executable, "-m", "recurrentgemma_jax.cli.train",
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
        [sys.executable, "-m", "recurrentgemma_jax.cli.train",
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


# Training that would run for hours, silently (nothing is written to the
# launcher's pipes after the first step): only a failure or a kill ends it.
ENDLESS = ("--config.total_steps=100000", "--config.checkpoint_every=100000",
           "--config.eval_every=100000", "--config.log_every=100000")
# A job that was told to end must have ended within this many seconds.
BOUND_S = 15


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("bounded") / "tiny.py"
  path.write_text(CONFIG_FILE)
  return path


def _start_launcher(config_file, workdir, log, *overrides):
  """`launch/local.py` (2 x 4 devices) in the background, output in `log`."""
  return subprocess.Popen(
      [sys.executable, "launch/local.py", "--num_processes=2",
       "--devices_per_process=4", "--",
       *_train_args(config_file, workdir, *overrides)],
      cwd=REPO, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
      start_new_session=True)


def _wait_for(log, text, launcher, timeout=180) -> str:
  deadline = time.time() + timeout
  while time.time() < deadline:
    out = log.read_text()
    if text in out:
      return out
    assert launcher.poll() is None, f"launcher exited early:\n{out[-3000:]}"
    time.sleep(0.1)
  pytest.fail(f"no {text!r} within {timeout}s:\n{log.read_text()[-3000:]}")


def _child_pids(out: str) -> list[int]:
  pids = [int(p) for p in re.findall(r"\[launch\] process \d+: pid (\d+)",
                                     out)]
  assert len(pids) == 2, out
  return pids


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
  status = pathlib.Path(f"/proc/{pid}/status")
  if not status.parent.parent.exists():  # no procfs
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True
  try:
    return "\nState:\tZ" not in status.read_text()
  except FileNotFoundError:
    return False


def _wait_gone(pids, timeout) -> float:
  """Seconds until every pid is gone (fails after `timeout`)."""
  start = time.time()
  while any(_alive(p) for p in pids):
    if time.time() - start > timeout:
      pytest.fail(f"{[p for p in pids if _alive(p)]} still running "
                  f"{timeout}s later")
    time.sleep(0.05)
  return time.time() - start


def _kill_leftovers(launcher, pids) -> None:
  if launcher.poll() is None:
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
  for pid in pids:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def test_trainers_die_with_a_killed_launcher(config_file, tmp_path):
  """`kill -9` of the launcher mid-training: both trainers are gone within
  seconds instead of training (or blocking) forever as orphans."""
  log = tmp_path / "launch.log"
  launcher = _start_launcher(config_file, tmp_path / "workdir", log, *ENDLESS)
  pids = []
  try:
    out = _wait_for(log, "compiled and ran the first step", launcher)
    pids = _child_pids(out)
    assert all(_alive(p) for p in pids)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    elapsed = _wait_gone(pids, BOUND_S)
    print(f"\ntrainers gone {elapsed:.1f}s after the launcher")
  finally:
    _kill_leftovers(launcher, pids)


def test_an_exception_on_one_process_ends_the_job(config_file, tmp_path):
  """Process 0 alone raises (its TensorBoard folder is a file, so opening
  the event file fails) while process 1 waits in the first step's
  collective: the launcher exits non-zero within seconds, names process 0
  and repeats its error."""
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "tensorboard").write_text("not a folder")
  log = tmp_path / "launch.log"
  launcher = _start_launcher(config_file, workdir, log, *ENDLESS,
                             "--config.log_every=1")
  pids = []
  try:
    out = _wait_for(log, "[0] NotADirectoryError", launcher)
    pids = _child_pids(out)
    raised = time.time()
    rc = launcher.wait(timeout=BOUND_S + 5)
    elapsed = time.time() - raised
    out = log.read_text()
    assert rc == 1, out[-3000:]
    assert elapsed < BOUND_S, out[-3000:]
    assert "[launch] process 0 exited with exit code 1" in out
    summary = out[out.index("[launch] process 0 failed first"):]
    assert "[launch] [0] NotADirectoryError" in summary, summary
    assert not any(_alive(p) for p in pids)
  finally:
    _kill_leftovers(launcher, pids)


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_process_is_named_and_its_peer_killed(config_file, tmp_path,
                                                       victim):
  """SIGKILL one trainer: the launcher names that one (not the peer that
  aborted because of it), kills the peer at once (not after a SIGTERM grace
  period it cannot use) and exits with 128 + 9."""
  log = tmp_path / "launch.log"
  launcher = _start_launcher(config_file, tmp_path / "workdir", log, *ENDLESS)
  pids = []
  try:
    pids = _child_pids(_wait_for(log, "compiled and ran the first step",
                                 launcher))
    os.kill(pids[victim], signal.SIGKILL)
    killed = time.time()
    rc = launcher.wait(timeout=BOUND_S + 5)
    elapsed = time.time() - killed
    out = log.read_text()
    assert rc == 128 + signal.SIGKILL, out[-3000:]
    assert elapsed < BOUND_S, out[-3000:]
    assert f"[launch] process {victim} exited with signal SIGKILL" in out
    assert f"[launch] process {1 - victim} exited" not in out, out[-3000:]
    assert f"[launch] process {victim} failed first" in out
    assert not any(_alive(p) for p in pids)
  finally:
    _kill_leftovers(launcher, pids)


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_stopping_the_launcher_saves_and_stops(config_file, tmp_path,
                                               ctrl_c):
  """SIGTERM to the launcher, or Ctrl-C (SIGINT to the terminal's whole
  process group), reaches every trainer as SIGTERM: they agree on a step,
  save it and exit; the launcher exits with 143."""
  workdir = tmp_path / "workdir"
  log = tmp_path / "launch.log"
  launcher = _start_launcher(config_file, workdir, log, *ENDLESS)
  pids = []
  try:
    pids = _child_pids(_wait_for(log, "compiled and ran the first step",
                                 launcher))
    if ctrl_c:
      os.killpg(launcher.pid, signal.SIGINT)
    else:
      launcher.send_signal(signal.SIGTERM)
    rc = launcher.wait(timeout=BOUND_S + 5)
    out = log.read_text()
    assert rc == 128 + signal.SIGTERM, out[-3000:]
    assert "still running: SIGKILL" not in out, out[-3000:]
    [step] = re.findall(r"preempted: saved step (\d+)", out)
    assert (workdir / "checkpoints" / step / "commit_success.txt").exists()
    assert not any(_alive(p) for p in pids)
  finally:
    _kill_leftovers(launcher, pids)


def _orphan(tmp_path, grandchild: str, pdeathsig: bool) -> float:
  """Runs the Python code `grandchild` under a parent that starts it as
  `launch/local.py` does (with or without PR_SET_PDEATHSIG), SIGKILLs the
  parent; returns the seconds the grandchild outlived it."""
  preexec = "local._die_with_parent()" if pdeathsig else "None"
  script = tmp_path / "parent.py"
  script.write_text(textwrap.dedent(f"""
      import os, subprocess, sys, time
      sys.path.insert(0, {str(REPO)!r})
      from recurrentgemma_jax.launch import local
      child = subprocess.Popen([sys.executable, "-c", {grandchild!r}],
                               env=local.process_env(0, 1, 1, 1),
                               preexec_fn={preexec})
      print(child.pid, flush=True)
      time.sleep(600)
  """))
  parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, text=True)
  pid = int(parent.stdout.readline())
  try:
    time.sleep(0.5)
    assert _alive(pid)
    parent.kill()
    parent.wait()
    return _wait_gone([pid], BOUND_S)
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="PR_SET_PDEATHSIG is Linux's")
def test_launcher_children_get_sigkill_when_it_dies(tmp_path):
  elapsed = _orphan(tmp_path, "import time; time.sleep(600)",
                    pdeathsig=True)
  assert elapsed < 1


def test_parent_watchdog_ends_an_orphan(tmp_path):
  """The fallback where there is no PR_SET_PDEATHSIG."""
  elapsed = _orphan(tmp_path, textwrap.dedent("""
      import os, time
      from recurrentgemma_jax import distributed
      distributed.watch_parent(int(os.environ["RG_PARENT_PID"]), poll_s=0.1)
      time.sleep(600)
  """), pdeathsig=False)
  assert elapsed < BOUND_S
