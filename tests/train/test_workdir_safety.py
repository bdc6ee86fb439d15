"""One workdir, one trainer, one config: the lock, refusals that leave the
workdir untouched, damaged checkpoints, read-only evaluation, full disks,
and what a resumed or finished run reports."""

import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import atomicity

from recurrentgemma_jax import loading
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import loop
from recurrentgemma_jax.training import metrics as metrics_lib
from recurrentgemma_jax.training import workdir as workdir_lib
from recurrentgemma_jax.training.workdir import WorkdirError

import train_testlib


def _config(**overrides):
  """The config of `trained`, with `overrides`."""
  return train_testlib.tiny_config(**{"total_steps": 9, "eval_every": 9,
                                      **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 9-step run: checkpoints 3, 6 and 9, evaluated at step 9."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  loop.train(_config(), str(workdir))
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  """A private copy of `trained`."""
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


@pytest.fixture
def stopped(run):
  """`run` as if stopped after saving step 6 (checkpoints 3 and 6)."""
  shutil.rmtree(run / "checkpoints" / "9")
  metrics = run / "metrics.jsonl"
  metrics.write_text("".join(
      line for line in metrics.read_text().splitlines(keepends=True)
      if json.loads(line)["step"] <= 6))
  return run


def _snapshot(root):
  """Every path below `root` with its content's hash (folders: "dir")."""
  out = {}
  for p in sorted(pathlib.Path(root).rglob("*")):
    out[str(p.relative_to(root))] = (
        hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
  return out


def _complete(workdir):
  return checkpointing.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                                    keep=3).complete_steps()


# The lock ---------------------------------------------------------------------

HOLDER = """
import sys, time
from recurrentgemma_jax.training import workdir
workdir.WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(300)
"""

CONFIG_FILE = """
import train_testlib

def get_config(arg=None):
  return train_testlib.tiny_config()
"""


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(run,
                                                                  tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(run)], env=train_testlib.env(),
      cwd=train_testlib.REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = _snapshot(run)
    config_file = tmp_path / "tiny.py"
    config_file.write_text(CONFIG_FILE)
    tests = train_testlib.REPO / "tests" / "train"
    result = train_testlib.python(
        "-m", "recurrentgemma_jax.cli.train", f"--config={config_file}",
        f"--workdir={run}", "--config.total_steps=12",
        env=train_testlib.env(PYTHONPATH=f"{train_testlib.REPO}:{tests}"))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [error] = [l for l in result.stderr.splitlines()
               if l.startswith("error:")]
    assert re.fullmatch(
        rf"error: workdir {run} is in use by another trainer: pid "
        rf"{holder.pid} on host {re.escape(socket.gethostname())} \(started "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); stop it or use another workdir "
        r"\(lock: .*trainer.lock\)", error), error
    # The same from Python, before anything is compiled.
    with pytest.raises(WorkdirError, match=f"pid {holder.pid} on host"):
      loop.train(_config(total_steps=12), str(run))
    assert _snapshot(run) == before
  finally:
    holder.kill()  # SIGKILL: its record stays, the kernel frees the lock
    holder.wait()
  lock = workdir_lib.WorkdirLock(str(run))
  note = lock.acquire()
  assert note.startswith(f"took over the lock of pid {holder.pid} on host ")
  assert note.endswith("which is no longer running")
  lock.release()
  assert not (run / workdir_lib.LOCK_FILE).exists()


def test_without_flock_the_lock_is_a_heartbeat_record(tmp_path):
  """The object-store variant (gs://), exercised on a local folder."""
  path = tmp_path / workdir_lib.LOCK_FILE

  def lock(**kwargs):
    return workdir_lib.WorkdirLock(str(tmp_path), use_flock=False,
                                   heartbeat_s=0.05, **kwargs)

  first = lock()
  assert first.acquire() is None
  beat = json.loads(path.read_text())["heartbeat"]
  time.sleep(0.3)
  assert json.loads(path.read_text())["heartbeat"] > beat
  with pytest.raises(WorkdirError, match=f"pid {os.getpid()} on host"):
    lock().acquire()
  first.release()
  assert not path.exists()
  # Another host's record: stale once not refreshed for stale_after_s.
  record = {"host": "elsewhere", "pid": 1, "started": "2026-01-01 00:00:00"}
  path.write_text(json.dumps({**record, "heartbeat": time.time()}))
  with pytest.raises(WorkdirError, match="pid 1 on host elsewhere"):
    lock(stale_after_s=600).acquire()
  path.write_text(json.dumps({**record, "heartbeat": time.time() - 700}))
  second = lock(stale_after_s=600)
  assert second.acquire() == (
      "took over the lock of pid 1 on host elsewhere (started 2026-01-01 "
      "00:00:00), which is no longer running")
  second.release()


def test_a_heartbeat_never_shows_readers_an_empty_record(tmp_path):
  """A reader between truncate and write would see no holder and take over."""
  path = tmp_path / workdir_lib.LOCK_FILE
  holder = workdir_lib.WorkdirLock(str(tmp_path), use_flock=False,
                                   heartbeat_s=0.0005)
  holder.acquire()
  try:
    texts = [path.read_text() for _ in range(20000)]
  finally:
    holder.release()
  assert len({json.loads(text)["heartbeat"] for text in texts}) > 10
  assert not list(tmp_path.iterdir())  # no record left aside


# Config changes on resume -----------------------------------------------------


@pytest.mark.parametrize("change, fields", [
    ({"model.width": 64, "model.lru_width": 64},
     "model.lru_width 32 -> 64, model.width 32 -> 64"),
    ({"data": {"task": "induction_heads", "vocab_size": 32}},
     'data.num_pairs 4 -> (not recorded), data.task "mqar" -> '
     '"induction_heads"'),
    ({"seed": 1, "optimizer.grad_clip": 0.0},
     "optimizer.grad_clip 1.0 -> 0.0, seed 0 -> 1"),
])
def test_resuming_another_model_or_experiment_is_refused_untouched(
    run, change, fields):
  before = _snapshot(run)
  with pytest.raises(WorkdirError) as error:
    loop.train(_config(total_steps=12, **change), str(run))
  assert str(error.value) == (
      f"workdir {run} holds a run with another config: {fields}. These "
      "fields cannot change on resume: use a new workdir (the run's config "
      f"is {run}/config.json)")
  assert _snapshot(run) == before


def test_safe_changes_are_printed_recorded_and_resumed(run, capsys):
  metrics = run / "metrics.jsonl"
  earlier = metrics_lib.read_records(str(run))
  torn = '{"step": 10, "train/lo'  # a writer killed mid-line
  with open(metrics, "a", encoding="utf-8") as f:
    f.write(torn)
  config = _config(total_steps=11, learning_rate=1e-3, eval_every=2,
                   eval_batches=0)
  result = loop.train(config, str(run))
  assert result.step == 11
  out = capsys.readouterr().out
  for change in ("eval_batches 1 -> 0", "eval_every 9 -> 2",
                 "learning_rate 0.003 -> 0.001", "total_steps 9 -> 11"):
    assert re.search(rf"^changed on resume: {change}  \[", out, re.M)
  [entry] = [json.loads(line) for line in
             (run / "config_history.jsonl").read_text().splitlines()]
  assert entry["step"] == 9
  assert entry["changes"] == {"eval_batches": [1, 0], "eval_every": [9, 2],
                              "learning_rate": [0.003, 0.001],
                              "total_steps": [9, 11]}
  assert json.loads((run / "config.json").read_text())["total_steps"] == 11
  # The torn line stays; the new records start on a fresh line.
  lines = metrics.read_text().splitlines()
  assert torn in lines
  records = metrics_lib.read_records(str(run))
  assert len(records) == len(lines) - 1
  assert records[:len(earlier)] == earlier
  assert [r["step"] for r in records[len(earlier):]
          if "train/loss" in r] == [10, 11]
  # eval_batches=0: no evaluation. Log lines end with the time; a summary.
  assert not [r for r in records if r["step"] > 9 and "eval/loss" in r]
  assert re.search(r"^step 11/11 \| loss .*  \[\d\d:\d\d:\d\d\]$", out,
                   re.M)
  assert re.search(
      r"^done: 2 steps in \d+s \| step 11/11 \| train loss \d\.\d{4} \| "
      r"eval loss \d\.\d{4} \(accuracy \d\.\d{4}\) at step 9 \| best eval "
      r"loss \d\.\d{4} at step 9  \[", out, re.M), out
  assert f"\nfiles: {run}/{{checkpoints, metrics.jsonl, tensorboard, " in out


def test_total_steps_below_the_checkpoint_is_refused(run):
  before = _snapshot(run)
  config = _config(total_steps=4, eval_every=2, checkpoint_every=2)
  with pytest.raises(WorkdirError, match=(
      "holds a run already at step 9, past total_steps=4: set total_steps "
      ">= 9 to continue it, or use a new workdir for a shorter run")):
    loop.train(config, str(run))
  assert _snapshot(run) == before


def test_a_finished_run_is_reported_not_retrained(run, capsys):
  before = _snapshot(run)
  result = loop.train(_config(), str(run))
  out = capsys.readouterr().out
  final = [r for r in metrics_lib.read_records(str(run))
           if "eval/loss" in r][-1]
  assert result.step == 9 and not result.preempted
  assert result.metrics["eval/loss"] == final["eval/loss"]
  assert "train/loss" in result.metrics
  assert out.startswith("the run is already complete: step 9/9 | train loss ")
  assert f"| eval loss {final['eval/loss']:.4f} (accuracy " in out
  assert "compiled" not in out
  assert _snapshot(run) == before
  # Stopped between its final save and its evaluation: evaluated now.
  metrics = run / "metrics.jsonl"
  metrics.write_text("".join(line for line in
                             metrics.read_text().splitlines(keepends=True)
                             if "eval/loss" not in line))
  again = loop.train(_config(), str(run))
  assert again.metrics["eval/loss"] == pytest.approx(final["eval/loss"],
                                                     rel=1e-6)
  assert [r["step"] for r in metrics_lib.read_records(str(run))
          if "eval/loss" in r] == [9]


# Checkpoints it cannot use ------------------------------------------------------


@pytest.mark.parametrize("unmarked", [(3, 6, 9), (9,)])
def test_step_folders_without_a_commit_marker_are_refused(run, unmarked):
  for step in unmarked:
    (run / "checkpoints" / str(step) / checkpointing.COMMIT_MARKER).unlink()
  before = _snapshot(run)
  with pytest.raises(WorkdirError, match=re.escape(
      f"{run}/checkpoints holds step folders without a commit_success.txt "
      f"(a partial copy or an unfinished save): "
      f"{', '.join(map(str, unmarked))}. Refusing to train on top of them")):
    loop.train(_config(total_steps=12), str(run))
  assert _snapshot(run) == before


def _truncate_a_data_file(state):
  data = max((state / "ocdbt.process_0" / "d").iterdir(),
             key=lambda p: p.stat().st_size)
  with open(data, "r+b") as f:
    f.truncate(data.stat().st_size // 2)


DAMAGE = {
    "truncated_data": _truncate_a_data_file,
    "no_manifest": lambda state: (state / "manifest.ocdbt").unlink(),
    "no_metadata": lambda state: (state / "_METADATA").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside(trained, stopped, damage,
                                                  capsys):
  run = stopped
  DAMAGE[damage](run / "checkpoints" / "6" / "state")
  result = loop.train(_config(), str(run))
  assert result.step == 9
  [line] = [l for l in capsys.readouterr().out.splitlines()
            if l.startswith("checkpoint step")]
  assert re.fullmatch(
      r"checkpoint step 6 is damaged \(.+\): resuming from step 3 instead; "
      rf"moved it to {run}/damaged_checkpoints/6  \[[\d:]+\]", line), line
  assert (run / "damaged_checkpoints" / "6" / "state").is_dir()
  assert _complete(run) == [3, 6, 9]
  # Steps 4-9 were run with exactly the losses of the uninterrupted run.
  expected = train_testlib.losses(trained)
  logged = train_testlib.losses(run)
  assert {s: logged[s] for s in range(4, 10)} == {
      s: expected[s] * (2 if s <= 6 else 1) for s in range(4, 10)}


def test_only_damaged_checkpoints_are_refused(stopped):
  run = stopped
  for step in (3, 6):
    (run / "checkpoints" / str(step) / "state" / "manifest.ocdbt").unlink()
  before = _snapshot(run)
  with pytest.raises(WorkdirError, match=(
      r"no checkpoint in .*checkpoints is intact \(step 6: 6/state/"
      r"manifest.ocdbt is missing; step 3: .*\). Refusing to start over")):
    loop.train(_config(), str(run))
  assert _snapshot(run) == before


def test_a_checkpoints_file_is_a_one_line_error(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a folder")
  message = f"{workdir}/checkpoints is a file, not a checkpoint folder"
  with pytest.raises(WorkdirError, match=message):
    loop.train(train_testlib.tiny_config(), str(workdir))
  with pytest.raises(WorkdirError, match=message):
    loop.evaluate(train_testlib.tiny_config(), str(workdir))


def test_a_metrics_folder_is_a_one_line_error(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "metrics.jsonl").mkdir(parents=True)
  with pytest.raises(WorkdirError, match="metrics.jsonl is a folder, not the "
                     "run's metrics file"):
    loop.train(train_testlib.tiny_config(), str(workdir))


# Evaluation --------------------------------------------------------------------


def test_evaluate_and_load_workdir_only_read(run, tmp_path):
  # A trainer on the workdir is writing step 9 right now.
  writing = run / "checkpoints" / "9.orbax-checkpoint-tmp-1234" / "state"
  writing.mkdir(parents=True)
  (writing / "partial").write_text("...")
  before = _snapshot(run / "checkpoints")
  assert loop.evaluate(_config(), str(run))["step"] == 9
  _, _, step = loading.load_workdir(str(run))
  assert step == 9
  assert _snapshot(run / "checkpoints") == before
  missing = tmp_path / "missing"
  with pytest.raises(ConfigError, match="no complete checkpoint in"):
    loop.evaluate(train_testlib.tiny_config(), str(missing))
  assert not missing.exists()
  with pytest.raises(ConfigError, match="eval_batches=0 means no evaluation"):
    loop.evaluate(_config(eval_batches=0), str(run))
  # A damaged checkpoint is a one-line error for both.
  (run / "checkpoints" / "9" / "state" / "manifest.ocdbt").unlink()
  damaged = (f"checkpoint step 9 in {run}/checkpoints is damaged: "
             "9/state/manifest.ocdbt is missing")
  with pytest.raises(ConfigError, match=damaged):
    loop.evaluate(_config(), str(run))
  with pytest.raises(ConfigError, match=damaged):
    loading.load_workdir(str(run))


def test_an_eval_split_smaller_than_a_batch_fails_at_setup(tmp_path):
  text = tmp_path / "tiny.txt"
  text.write_text("".join(f"line {i} of a tiny corpus\n" for i in range(400)))
  config = train_testlib.tiny_config()
  config.data = {"task": "lm", "source": "text", "files": str(text),
                 "data_dir": str(tmp_path / "tfds"), "max_chars": 200,
                 "validation_fraction": 0.01}
  with pytest.raises(ConfigError, match=(
      "the eval split holds less than one batch of 8 x 32 tokens; lower "
      r"batch_size or set eval_batches=0 \(no evaluation\)")):
    loop.setup(config, str(tmp_path / "run"))
  config.eval_batches = 0
  loop.setup(config, str(tmp_path / "run"))


def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step(
    tmp_path, monkeypatch):
  def broken(*_):
    raise RuntimeError("evaluation broke")

  monkeypatch.setattr(loop, "_evaluate", broken)
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError, match="evaluation broke"):
    loop.train(train_testlib.tiny_config(total_steps=2, warmup_steps=1,
                                         eval_every=2, checkpoint_every=2),
               str(workdir))
  assert _complete(workdir) == [2]


# A full disk --------------------------------------------------------------------


def _fail_sync(monkeypatch):
  """CheckpointManager.save raises at once."""
  save = ocp.CheckpointManager.save

  def full(self, step, *args, **kwargs):
    if step == 9:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)


def _fail_async(monkeypatch):
  """The background commit of step 9 fails (Orbax only logs it)."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def full(self, *args, **kwargs):
    if self.get_final().name == "9":
      raise OSError(errno.ENOSPC, "No space left on device")
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full)


@pytest.mark.parametrize("fail", [_fail_sync, _fail_async])
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(
    stopped, fail, monkeypatch, caplog, capsys):
  run = stopped
  # keep_checkpoints=1: Orbax alone would delete step 6 while saving 9.
  config = _config(keep_checkpoints=1, eval_every=100)
  fail(monkeypatch)
  with pytest.raises(WorkdirError) as error:
    loop.train(config, str(run))
  assert re.fullmatch(
      rf"saving the checkpoint of step 9 to {run}/checkpoints failed: no "
      r"space left on device \(filesystem /\S* \([\d.]+ MiB free\)\); the "
      "newest intact checkpoint is step 6; free space there and run again "
      "to resume from it", str(error.value)), str(error.value)
  assert not [r for r in caplog.records if r.exc_info]  # no tracebacks
  assert 6 in _complete(run)
  monkeypatch.undo()  # space freed
  capsys.readouterr()
  assert loop.train(config, str(run)).step == 9
  assert "resuming from step 6 of 9" in capsys.readouterr().out
  assert _complete(run) == [9]
