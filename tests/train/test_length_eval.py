"""Length extrapolation: `training/length_eval.py` and the `evaluate` CLI's
`--length_multipliers`, checked against an independent float64 computation
from the restored model's logits."""

import json
import math
import pathlib

import numpy as np
import pytest
from flax import nnx

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.paper import studies
from recurrentgemma_jax.training import length_eval
from recurrentgemma_jax.training import loop

import train_testlib

TRAIN_LEN = 32
BATCH = 8
NUM_TOKENS = 4  # selective copy: the last NUM_TOKENS targets are scored


def _config():
  """Tiny Griffin on selective copy: 4 steps, checkpoints at 2 and 4, one
  evaluation of 2 x 8 sequences at the end."""
  config = train_testlib.tiny_config(
      total_steps=4, warmup_steps=1, checkpoint_every=2, eval_every=4,
      eval_batches=2, log_every=2, batch_size=BATCH, seq_len=TRAIN_LEN)
  config.data = {"task": "selective_copy", "vocab_size": 16,
                 "num_tokens": NUM_TOKENS}
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("length_eval") / "run"
  config = _config()
  result = loop.train(config, str(workdir))
  assert result.step == 4
  return config, workdir


def _final_eval_loss(workdir) -> float:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  records = [json.loads(l) for l in path.read_text().splitlines()]
  (loss,) = [r["eval/loss"] for r in records
             if "eval/loss" in r and r["step"] == 4]
  return loss


def _direct(config, workdir, step, seq_len, batch_size, num_batches):
  """Loss, accuracy and per-position sums in float64 numpy from the logits
  of the restored model on the task's first eval batches."""
  exp = loop.setup(config, str(workdir))
  params = exp.checkpointer.restore(step, exp.spec.abstract)["params"]
  exp.checkpointer.close()
  model = nnx.merge(exp.spec.graphdef, params)
  cfg = config.copy_and_resolve_references()
  cfg.seq_len = seq_len
  cfg.batch_size = batch_size
  task = pipeline.make_task(cfg, 0, 1)
  loss = correct = tokens = 0.0
  pos_loss = np.zeros(seq_len)
  pos_tokens = np.zeros(seq_len)
  eval_iter = iter(task.eval())
  for _ in range(num_batches):
    batch = next(eval_iter)
    logits = np.asarray(model(batch["inputs"], batch["segment_pos"]),
                        np.float64)
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    target = np.take_along_axis(logits, batch["targets"][..., None].astype(
        np.int64), -1)[..., 0]
    nll = log_z - target
    mask = batch["mask"].astype(np.float64)
    loss += (mask * nll).sum()
    correct += (mask * (logits.argmax(-1) == batch["targets"])).sum()
    tokens += mask.sum()
    np.add.at(pos_loss, batch["segment_pos"].ravel(), (mask * nll).ravel())
    np.add.at(pos_tokens, batch["segment_pos"].ravel(), mask.ravel())
  return loss / tokens, correct / tokens, tokens, pos_loss, pos_tokens


def test_scores_each_length_like_a_direct_forward_pass(trained):
  config, workdir = trained
  result = length_eval.evaluate_lengths(config, str(workdir), (1, 2, 4),
                                        examples=10, per_position=True)
  # Written to a file named by the settings.
  name = "length_eval_step4_x1-2-4_n10_positions.json"
  assert length_eval.default_result_file(4, [1, 2, 4], 10, True) == name
  written = json.loads((workdir / name).read_text())
  assert written == json.loads(json.dumps(result))
  assert result["step"] == 4 and result["train_seq_len"] == TRAIN_LEN
  assert result["settings"] == {"multipliers": [1, 2, 4], "examples": 10,
                                "per_position": True}
  rows = result["lengths"]
  assert [r["multiplier"] for r in rows] == [1, 2, 4]
  assert [r["seq_len"] for r in rows] == [32, 64, 128]
  # About the training batch's tokens per batch: 8 x 32, 4 x 64, 2 x 128.
  assert [r["batch_size"] for r in rows] == [8, 4, 2]
  assert [r["batch_size"] for r in rows] == [
      length_eval.length_batch_size(BATCH, m, 1) for m in (1, 2, 4)]
  # Whole batches until at least 10 sequences: 2 x 8, 3 x 4, 5 x 2.
  assert [r["examples"] for r in rows] == [16, 12, 10]
  for row in rows:
    assert row["tokens"] == row["examples"] * NUM_TOKENS
    assert math.isfinite(row["loss"]) and row["loss"] > 0
    assert 0 <= row["accuracy"] <= 1
    # Per position: the token-weighted mean is the row's loss, only the
    # copied tokens (the last NUM_TOKENS positions) are scored.
    losses, counts = row["per_position_loss"], row["per_position_tokens"]
    assert len(losses) == len(counts) == row["seq_len"]
    assert sum(counts) == row["tokens"]
    assert counts[-NUM_TOKENS:] == [row["examples"]] * NUM_TOKENS
    assert set(counts[:-NUM_TOKENS]) == {0}
    assert all(l is None for l in losses[:-NUM_TOKENS])
    weighted = sum(l * c for l, c in zip(losses, counts) if l is not None)
    assert weighted / sum(counts) == pytest.approx(row["loss"], rel=1e-6)

  # 1x and 4x against the restored model's logits, in float64.
  for row in (rows[0], rows[2]):
    loss, accuracy, tokens, pos_loss, pos_tokens = _direct(
        config, workdir, 4, row["seq_len"], row["batch_size"],
        row["examples"] // row["batch_size"])
    assert row["tokens"] == tokens
    assert row["loss"] == pytest.approx(loss, rel=1e-5)
    assert row["accuracy"] == pytest.approx(accuracy, rel=1e-5)
    np.testing.assert_array_equal(row["per_position_tokens"], pos_tokens)
    scored = pos_tokens > 0
    np.testing.assert_allclose(
        np.array(row["per_position_loss"], dtype=float)[scored],
        pos_loss[scored] / pos_tokens[scored], rtol=1e-5)
  # 1x over 16 sequences is exactly the loop's final evaluation (2 x 8).
  assert rows[0]["loss"] == pytest.approx(_final_eval_loss(workdir),
                                          rel=1e-5)


def test_no_evaluation_replaces_a_result_of_other_settings(trained,
                                                           monkeypatch):
  config, workdir = trained
  named = workdir / "lengths.json"
  first = length_eval.evaluate_lengths(config, str(workdir), (1,),
                                       examples=16, per_position=True,
                                       result_file="lengths.json")
  assert json.loads(named.read_text()) == json.loads(json.dumps(first))
  # Another step and settings: another file; the first stays.
  older = length_eval.evaluate_lengths(config, str(workdir), (1,), step=2,
                                       examples=16)
  assert older["step"] == 2 and len(older["lengths"]) == 1
  assert older["lengths"][0]["loss"] != pytest.approx(
      first["lengths"][0]["loss"], rel=1e-4)
  assert "per_position_loss" not in older["lengths"][0]
  assert json.loads(
      (workdir / "length_eval_step2_x1_n16.json").read_text()) == older
  assert json.loads(named.read_text()) == json.loads(json.dumps(first))

  # The named file with other settings: refused before anything is built.
  def setup_attempt(*_):
    raise AssertionError("set up the run")

  monkeypatch.setattr(length_eval.loop, "setup", setup_attempt)
  for multipliers, examples, per_position in [((1, 2), 16, True),
                                              ((1,), 8, True),
                                              ((1,), 16, False)]:
    with pytest.raises(ConfigError, match="lengths.json holds a length "
                       "evaluation with other settings"):
      length_eval.evaluate_lengths(config, str(workdir), multipliers,
                                   examples=examples,
                                   per_position=per_position,
                                   result_file="lengths.json")
  with pytest.raises(ConfigError, match="give a file name"):
    length_eval.evaluate_lengths(config, str(workdir), (1,),
                                 result_file="../lengths.json")
  monkeypatch.undo()
  # The same settings replace it (here: from an older checkpoint).
  again = length_eval.evaluate_lengths(config, str(workdir), (1,), step=2,
                                       examples=16, per_position=True,
                                       result_file="lengths.json")
  assert json.loads(named.read_text())["step"] == again["step"] == 2


@pytest.mark.parametrize("multipliers", [[0], [], [1.5], [2, -1], ["2"]])
def test_bad_multipliers_fail_before_anything_is_built(tmp_path, multipliers):
  workdir = tmp_path / "never_created"
  with pytest.raises(ConfigError, match="length multipliers must be "
                     r"integers >= 1, got \["):
    length_eval.evaluate_lengths(_config(), str(workdir), multipliers)
  assert not workdir.exists()  # raised before loop.setup


def test_missing_checkpoints_fail_before_compiling(trained, tmp_path,
                                                   monkeypatch):
  config, workdir = trained

  def compile_attempt(*_):
    raise AssertionError("built the scoring function")

  monkeypatch.setattr(length_eval, "_token_losses", compile_attempt)
  with pytest.raises(ConfigError, match="examples=0 must be >= 1"):
    length_eval.evaluate_lengths(config, str(workdir), (1,), examples=0)
  with pytest.raises(ConfigError, match="no complete checkpoint in .*empty"):
    length_eval.evaluate_lengths(config, str(tmp_path / "empty"), (1, 2))
  with pytest.raises(ConfigError,
                     match="no complete checkpoint at step 3 in .*run"):
    length_eval.evaluate_lengths(config, str(workdir), (1,), step=3)


def test_command_line(trained):
  _, workdir = trained
  # A study's result (`reproduce run`'s file) that the command must leave be.
  study = workdir / studies.LENGTH_EVAL_FILE
  study.write_text(json.dumps({"step": 4, "lengths": [], "settings": {
      "multipliers": [1, 2, 4, 8], "examples": 128, "per_position": True}}))
  before = study.read_text()
  result = train_testlib.python(
      "-m", "recurrentgemma_jax.cli.evaluate", f"--workdir={workdir}",
      "--length_multipliers=1,2", "--examples=8", "--per_position")
  assert result.returncode == 0, result.stderr[-2000:]
  assert study.read_text() == before
  path = workdir / "length_eval_step4_x1-2_n8_positions.json"
  assert f"wrote {path}" in result.stdout
  printed = json.loads(result.stdout[result.stdout.index("{"):])
  assert printed["step"] == 4
  rows = printed["lengths"]
  assert [(r["seq_len"], r["batch_size"], r["examples"]) for r in rows] == [
      (32, 8, 8), (64, 4, 8)]
  assert all(math.isfinite(r["loss"]) for r in rows)
  # The per-position arrays stay in the file, out of the printout.
  assert not any("per_position_loss" in r for r in rows)
  saved = json.loads(path.read_text())
  assert [len(r["per_position_loss"]) for r in saved["lengths"]] == [32, 64]
  assert [r["loss"] for r in saved["lengths"]] == [r["loss"] for r in rows]

  # Naming the study's file with other settings: a one-line error.
  clash = train_testlib.python(
      "-m", "recurrentgemma_jax.cli.evaluate", f"--workdir={workdir}",
      "--length_multipliers=1,2", "--examples=8",
      f"--length_eval_file={studies.LENGTH_EVAL_FILE}")
  assert clash.returncode == 1 and "Traceback" not in clash.stderr
  errors = [l for l in clash.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, clash.stderr
  assert "holds a length evaluation with other settings" in errors[0]
  assert study.read_text() == before

  bad = train_testlib.python(
      "-m", "recurrentgemma_jax.cli.evaluate", f"--workdir={workdir}",
      "--length_multipliers=a")
  assert bad.returncode == 1
  assert "Traceback" not in bad.stderr
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "--length_multipliers" in errors[0], bad.stderr
  assert "(got a)" in errors[0]


@pytest.mark.parametrize("batch, multiplier, dp, want", [
    (8, 1, 1, 8),
    (8, 2, 1, 4),
    (8, 3, 1, 2),  # floor(8 / 3)
    (8, 16, 1, 1),  # never fewer than one row
    (32, 2, 4, 16),
    (32, 3, 4, 8),  # floor(32 / 3) = 10, rounded down to a multiple of 4
    (8, 4, 4, 4),  # 2 rows is fewer than the 4 data-parallel devices
    (64, 64, 8, 8),
    (128, 8, 8, 16),
])
def test_length_batch_size(batch, multiplier, dp, want):
  got = length_eval.length_batch_size(batch, multiplier, dp)
  assert got == want
  assert got % dp == 0 and got >= dp
