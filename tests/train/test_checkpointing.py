"""Checkpoints: half-written ones are ignored; a run stopped by SIGTERM or
Ctrl-C (SIGINT) or killed with SIGKILL resumes with exactly the losses of an
uninterrupted run."""

import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np

from recurrentgemma_jax.training import checkpointing

import train_testlib


def test_half_written_checkpoints_are_never_the_newest(tmp_path):
  directory = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpointer(str(directory), keep=3)
  iterator = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
  next(iterator)
  state = {"w": jnp.arange(4.0), "step": jnp.int32(1)}
  ckpt.save(1, state, iterator)
  saved_next = next(iterator)  # advancing after save() does not leak in
  ckpt.wait()
  # A killed writer leaves a temporary folder; a partial copy lacks the
  # commit marker. Neither counts.
  (directory / "9.orbax-checkpoint-tmp-123" / "state").mkdir(parents=True)
  (directory / "7" / "state").mkdir(parents=True)
  assert ckpt.complete_steps() == [1]
  assert ckpt.latest_step() == 1
  fresh = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
  restored = ckpt.restore(1, jax.eval_shape(lambda: state), fresh)
  np.testing.assert_array_equal(restored["w"], state["w"])
  np.testing.assert_array_equal(next(fresh), saved_next)
  ckpt.close()


CONFIG_FILE = """
import train_testlib

def get_config(arg=None):
  return train_testlib.tiny_config(
      total_steps=18, checkpoint_every=3, eval_every=100, log_every=1)
"""


def _command(config_file, workdir):
  return [sys.executable, "-m", "recurrentgemma_jax.cli.train",
          f"--config={config_file}", f"--workdir={workdir}"]


def _env():
  tests = train_testlib.REPO / "tests" / "train"
  return train_testlib.env(PYTHONPATH=f"{train_testlib.REPO}:{tests}")


def _run_until(config_file, workdir, step, sig):
  """Starts a run, sends `sig` once `step` is logged; returns the exit code
  and the run's output."""
  output = workdir.parent / f"{workdir.name}_{sig.name}.log"
  with open(output, "w") as f:
    proc = subprocess.Popen(_command(config_file, workdir), env=_env(),
                            cwd=train_testlib.REPO, stdout=f,
                            stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  try:
    while time.time() < deadline and proc.poll() is None:
      if (workdir / "metrics.jsonl").exists() and max(
          train_testlib.losses(workdir), default=0) >= step:
        proc.send_signal(sig)
        break
      time.sleep(0.05)
    return proc.wait(timeout=300), output.read_text()
  finally:
    if proc.poll() is None:
      proc.kill()


def test_stopped_and_killed_runs_resume_with_identical_losses(tmp_path):
  config_file = tmp_path / "tiny.py"
  config_file.write_text(CONFIG_FILE)
  reference = tmp_path / "reference"
  subprocess.run(_command(config_file, reference), env=_env(),
                 cwd=train_testlib.REPO, check=True, capture_output=True)
  expected = {s: v[0] for s, v in train_testlib.losses(reference).items()}
  assert sorted(expected) == list(range(1, 19))

  workdir = tmp_path / "interrupted"
  ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"), keep=3)
  # Preemption: SIGTERM saves a checkpoint of the current step and exits 143.
  code, _ = _run_until(config_file, workdir, 4, signal.SIGTERM)
  assert code == 143
  stopped_at = max(train_testlib.losses(workdir))
  assert ckpt.latest_step() == stopped_at
  # Ctrl-C does the same, with no traceback, and says how to resume.
  code, output = _run_until(config_file, workdir, stopped_at + 2,
                            signal.SIGINT)
  stopped_at = max(train_testlib.losses(workdir))
  assert code == 143, output[-3000:]
  assert ckpt.latest_step() == stopped_at
  assert f"interrupted: saved step {stopped_at}; run the same command" in output
  assert "Traceback" not in output and "Fatal Python error" not in output
  # A hard kill at whatever step it lands on; an async save may be torn.
  code, _ = _run_until(config_file, workdir, stopped_at + 4, signal.SIGKILL)
  assert code == -signal.SIGKILL
  subprocess.run(_command(config_file, workdir), env=_env(),
                 cwd=train_testlib.REPO, check=True, capture_output=True)

  logged = train_testlib.losses(workdir)
  assert sorted(logged) == list(range(1, 19))
  assert any(len(v) > 1 for v in logged.values())  # steps were redone
  for step, values in logged.items():
    for value in values:
      assert value == expected[step], (step, value, expected[step])
