"""The official-model control (`recurrentgemma_jax/paper/official_control.py`,
`recurrentgemma reproduce control`, study `official_control`): both models
start from the same weights and see the same batches, both learn, a stopped
control resumes exactly, both are evaluated at several lengths, and bad
arguments fail in one line before anything is written."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import reproduce as reproduce_cli
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.paper import official_control
from recurrentgemma_jax.paper import report
from recurrentgemma_jax.paper import studies
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import config as config_lib

import train_testlib

REPO = str(train_testlib.REPO)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(**overrides):
  # MQAR scores several tokens per sequence: a few steps lower the loss.
  return train_testlib.tiny_config(**{"eval_every": 3, **overrides})


def _records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def _train_losses(workdir):
  """{step: (ours, official)} of the logged train losses."""
  return {r["step"]: (r["train/loss"], r["official_train/loss"])
          for r in _records(workdir) if "train/loss" in r}


def test_the_official_model_starts_from_our_weights(tmp_path):
  control = official_control.build(_config(), str(tmp_path / "w"))
  state = official_control.initial_state(control)
  ours = jax.tree.leaves(state["ours"]["params"])
  theirs = jax.tree.leaves(state["official"]["params"])
  assert len(ours) == len(theirs) > 10
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Their own buffers: our donated train step cannot free the official's.
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
  # The same logits on the same batch, through the two implementations.
  batch = jax.device_put(next(iter(control.task.train())),
                         control.program.batch_sharding)
  fns = control.logits_fns()
  np.testing.assert_allclose(
      np.asarray(fns["official"](state["official"]["params"], batch)),
      np.asarray(fns["ours"](state["ours"]["params"], batch)),
      rtol=0, atol=1e-5)


def test_cross_entropy_averages_the_scored_positions_only():
  logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1],
                             [1 / 3, 1 / 3, 1 / 3]]], np.float32))
  targets = np.array([[0, 1, 2]])
  mask = np.array([[1.0, 0.0, 1.0]])
  loss = official_control.cross_entropy(logits, targets, mask)
  np.testing.assert_allclose(float(loss), (np.log(2) + np.log(3)) / 2,
                             rtol=1e-6)


def test_both_learn_from_the_same_start_resume_and_evaluate(
    tmp_path, monkeypatch):
  straight = tmp_path / "straight"
  result = official_control.train(_config(), str(straight))
  assert (result.step, result.preempted) == (6, False)
  losses = _train_losses(straight)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  # Step 1 scores the initial weights on the first batch: the same loss.
  ours0, theirs0 = losses[1]
  assert ours0 == pytest.approx(theirs0, rel=1e-5)
  for i in (0, 1):  # both models learn
    assert np.mean([losses[s][i] for s in (5, 6)]) < losses[1][i] - 0.05
  evals = [r for r in _records(straight) if "eval/loss" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert all(0 <= r[k] <= 1 for r in evals
             for k in ("eval/accuracy", "official_eval/accuracy"))

  # Stopped at step 3 (as by SIGTERM), then resumed: the same run.
  resumed = tmp_path / "resumed"
  stop = {"at": 3}
  should_stop = checkpointing.Checkpointer.should_stop
  monkeypatch.setattr(checkpointing.Checkpointer, "should_stop",
                      lambda self, step: step == stop["at"] or
                      should_stop(self, step))
  first = official_control.train(_config(), str(resumed))
  assert (first.step, first.preempted) == (3, True)
  stop["at"] = None
  second = official_control.train(_config(), str(resumed))
  assert (second.step, second.preempted) == (6, False)
  again = _train_losses(resumed)
  assert sorted(again) == [1, 2, 3, 4, 5, 6]
  for step in again:
    np.testing.assert_allclose(again[step], losses[step], rtol=1e-5)
  # A finished control is reported, not retrained.
  before = (resumed / "metrics.jsonl").read_text()
  assert official_control.train(_config(), str(resumed)).step == 6
  assert (resumed / "metrics.jsonl").read_text() == before

  # Both models on the same sequences at 1x and 2x.
  out = official_control.evaluate(str(straight), [1, 2], examples=8)
  assert out == json.loads(
      (straight / official_control.RESULT_FILE).read_text())
  assert (out["step"], out["train_seq_len"]) == (6, 32)
  assert out["settings"] == {"multipliers": [1, 2], "examples": 8}
  assert [(r["multiplier"], r["seq_len"], r["examples"]) for r in out[
      "lengths"]] == [(1, 32, 8), (2, 64, 8)]
  for row in out["lengths"]:
    for model in official_control.MODELS:
      assert 0 <= row[model]["accuracy"] <= 1
      assert np.isfinite(row[model]["loss"])
    # Trained apart for 6 steps from the same start, still close.
    assert row["ours"]["loss"] == pytest.approx(row["official"]["loss"],
                                                rel=1e-3)
  table = official_control.markdown(out)
  assert table.splitlines()[0] == "| model | 32 (1x) | 64 (2x) |"
  assert table.splitlines()[2].startswith("| Griffin (ours) | ")
  # Another evaluation's settings never replace this result.
  with pytest.raises(ConfigError, match="holds an evaluation with other "
                     "settings"):
    official_control.evaluate(str(straight), [1, 4], examples=8)


@pytest.mark.parametrize("overrides, message", [
    ({"model.attention_window_size": 0}, "global attention"),
    ({"model.lru_num_heads": 1}, "model.lru_num_heads=1: the official"),
    ({"loss.z_loss": 1e-4}, "loss.z_loss=0.0001: the official step"),
    ({"lora.rank": 2}, "lora.rank=2"),
    ({"grad_accum_steps": 2}, "grad_accum_steps=2"),
    ({"model.conv1d_temporal_width": 3}, "conv1d_temporal_width=3"),
    ({"init_from.hf": "/no/such/folder"}, "init_from: the control starts"),
])
def test_configs_the_official_model_cannot_match(tmp_path, overrides,
                                                 message):
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError, match=message):
    official_control.train(_config(**overrides), str(workdir))
  assert not workdir.exists()  # refused before anything was written


def test_a_missing_official_package_is_one_clear_error(monkeypatch):
  model = config_lib.build_model_config(_config().model, 32)
  monkeypatch.setitem(sys.modules, "recurrentgemma", None)  # not installed
  with pytest.raises(ConfigError, match="the control needs the official "
                     "recurrentgemma package .*pip install --no-deps"):
    official_control.official_model_config(model)


def _control(args) -> int:
  return common.call(reproduce_cli, ["control", *args])


def test_control_command_errors(tmp_path, capsys):
  workdir = tmp_path / "w"
  assert _control(["--length_multipliers=1"]) == 2
  assert capsys.readouterr().err == "error: control needs --workdir\n"
  assert _control([f"--workdir={workdir}"]) == 2
  assert "control needs --config (train both models) and/or " \
      "--length_multipliers" in capsys.readouterr().err
  assert _control([f"--workdir={workdir}", "--length_multipliers=1,x"]) == 2
  assert "--length_multipliers=1,x: give integers >= 1" in (
      capsys.readouterr().err)
  assert _control([f"--workdir={workdir}", "--length_multipliers=0"]) == 1
  assert "length multipliers must be integers >= 1, got [0]" in (
      capsys.readouterr().err)
  assert _control([f"--workdir={workdir}", "--length_multipliers=1"]) == 1
  assert capsys.readouterr().err == (
      f"error: no config.json in {workdir}: not a training workdir\n")
  mqa = f"--config={REPO}/experiments/induction_heads.py:model=mqa,runlocal"
  assert _control([mqa, f"--workdir={workdir}"]) == 1
  assert "the official model has local attention only" in (
      capsys.readouterr().err)
  assert not workdir.exists()
  assert _control([f"--workdir={workdir}", "--outdir=x",
                   "--length_multipliers=1"]) == 2
  assert "--outdir not allowed with control" in capsys.readouterr().err
  assert common.call(reproduce_cli, ["run", "--outdir=x",
                                     f"--workdir={workdir}"]) == 2
  assert "--workdir not allowed with run" in capsys.readouterr().err


def test_study_commands():
  (job,) = studies.jobs_for("/out", ["official_control"], studies.MODELS,
                            [2])
  assert job == studies.Job("official_control", "griffin", 2,
                            "/out/official_control/griffin_s2")
  train = studies.train_command(job, "paper", ["total_steps=6200",
                                               "lm:total_steps=1"], {})
  assert train == [
      sys.executable, "-m", "recurrentgemma_jax.cli.reproduce", "control",
      f"--config={REPO}/experiments/induction_heads.py:model=griffin",
      "--config.seed=2", "--workdir=/out/official_control/griffin_s2",
      "--config.total_steps=6200"]
  assert studies.eval_command(job, "paper") == [
      sys.executable, "-m", "recurrentgemma_jax.cli.reproduce", "control",
      "--workdir=/out/official_control/griffin_s2",
      "--length_multipliers=1,2,4,8,16,32,64", "--examples=512"]
  # The App. H model at 256 tokens, as the induction-heads study trains it.
  path, _, arg = train[4][len("--config="):].partition(":")
  config = train_testlib.load_experiment(path).get_config(arg)
  assert (config.seq_len, config.batch_size, config.model.width,
          config.model.attention_window_size) == (256, 128, 64, 128)


def test_run_refuses_models_the_control_does_not_train(tmp_path):
  with pytest.raises(SystemExit, match="--study=official_control trains "
                     "griffin only, not --models=hawk,mqa"):
    common.call(reproduce_cli, ["run", "--study=official_control",
                                "--models=hawk,mqa", f"--outdir={tmp_path}"])


def _fake_control(root, seed, accuracy):
  """A finished control run as `reproduce run` leaves it, by hand."""
  workdir = root / "official_control" / f"griffin_s{seed}"
  workdir.mkdir(parents=True)
  (workdir / "run.json").write_text(json.dumps({
      "study": "official_control", "model": "griffin", "seed": seed,
      "status": "done", "train_seconds": 60.0,
      "train_command": "python -m recurrentgemma_jax.cli.reproduce control"}))
  (workdir / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "eval/accuracy": a,
                  "official_eval/accuracy": a / 2}) + "\n"
      for s, a in ((5, 0.5), (10, 1.0))))
  (workdir / official_control.RESULT_FILE).write_text(json.dumps({
      "step": 10, "train_seq_len": 4,
      "lengths": [{"multiplier": m, "seq_len": 4 * m,
                   "ours": {"loss": 1.0, "accuracy": a},
                   "official": {"loss": 2.0, "accuracy": a - 0.5}}
                  for m, a in zip((1, 2), accuracy)]}))


def test_report_of_the_control(tmp_path):
  _fake_control(tmp_path, 0, (1.0, 0.75))
  _fake_control(tmp_path, 1, (1.0, 0.5))
  text = report.write_report(str(tmp_path), str(tmp_path / "fig"))
  for name in ("official_control_training.png",
               "official_control_lengths.png"):
    assert (tmp_path / "fig" / name).read_bytes()[:8] == PNG_MAGIC
  assert "| model | 4 | 8 |" in text
  assert "| Griffin (ours) | 1.000 | 0.625 |" in text
  assert "| Griffin (official) | 0.500 | 0.125 |" in text
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["official_control"]["lengths"]["official"] == {
      "4": [0.5, 0.5], "8": [0.25, 0.0]}
  assert summary["official_control"]["steps"] == [10, 10]
