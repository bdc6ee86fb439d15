"""benchmarks/quantize_quality.py on a tiny language model trained here:
the float eval loss is the one the run recorded, the int8 one stays close,
and the report holds every field."""

import importlib.util
import json
import os
import pathlib
import sys

import pytest

from recurrentgemma_jax.training import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
import train_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

_spec = importlib.util.spec_from_file_location(
    "quantize_quality", REPO / "benchmarks" / "quantize_quality.py")
qq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qq)

STEPS = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 3-block width-32 Griffin trained for 40 steps on bytes of text."""
  tmp = tmp_path_factory.mktemp("quality")
  text = train_testlib.sample_text(tmp / "corpus.txt", lines=1500)
  config = train_testlib.tiny_config(
      total_steps=STEPS, eval_every=STEPS, checkpoint_every=STEPS,
      eval_batches=2, log_every=STEPS)
  config.data = {"task": "lm", "source": "text", "files": text,
                 "data_dir": str(tmp / "tfds"), "max_chars": 2000,
                 "validation_fraction": 0.1}
  run = tmp / "run"
  loop.train(config, str(run))
  return run


def test_report_of_a_trained_language_model(workdir, tmp_path):
  out = tmp_path / "quality.json"
  assert qq.main(["--workdir", str(workdir), "--prompts", "2",
                  "--prompt_len", "8", "--new_tokens", "32",
                  "--out", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["step"] == STEPS and r["eval_batches"] == 2
  assert r["eval_batch_shape"] == [8, 32]
  # The held-out split is the run's own: the float loss is what its eval
  # at the last step recorded.
  recorded = [json.loads(line) for line in
              (workdir / "metrics.jsonl").read_text().splitlines()]
  final = [m for m in recorded if "eval/loss" in m and m["step"] == STEPS]
  assert r["float"]["loss"] == pytest.approx(final[-1]["eval/loss"],
                                             rel=1e-5)
  assert r["float"]["accuracy"] == pytest.approx(
      final[-1]["eval/accuracy"], abs=1e-6)
  assert r["float"]["loss"] < 4.0  # trained: ln(384) = 5.95 is uniform
  # int8 costs little, and it really is another model.
  assert abs(r["loss_delta"]) < 0.02
  assert r["loss_delta"] == pytest.approx(
      r["int8"]["loss"] - r["float"]["loss"])
  assert abs(r["int8"]["accuracy"] - r["float"]["accuracy"]) < 0.02
  assert r["int8"]["tokens"] == r["float"]["tokens"] > 0
  assert 0 < r["max_logit_error"] < 0.1 * r["max_abs_logit"]
  assert r["argmax_agreement"] >= 0.95
  assert r["positions"] == r["float"]["tokens"]
  assert r["weight_bytes"]["int8"] < 0.5 * r["weight_bytes"]["float"]
  g = r["greedy"]
  assert (g["prompts"], g["prompt_len"], g["new_tokens"]) == (2, 8, 32)
  assert len(g["identical_prefix"]) == 2
  assert all(0 <= p <= 32 for p in g["identical_prefix"])
  assert 0 <= g["agreement"] <= 1
  assert g["all_identical"] == (g["identical_prefix"] == [32, 32])


def test_bad_input_is_a_one_line_error(workdir, tmp_path, capsys):
  assert qq.main(["--workdir", str(tmp_path / "none")]) == 1
  assert "no config.json in" in capsys.readouterr().err
  assert qq.main(["--workdir", str(workdir), "--prompts", "9"]) == 1
  assert ("9 prompts of 64 tokens: the eval batches hold 8 rows of 32 "
          "tokens") in capsys.readouterr().err
  assert qq.main(["--workdir", str(workdir), "--eval_batches", "0"]) == 1
  assert "eval_batches=0: give --eval_batches >= 1" in (
      capsys.readouterr().err)
  assert qq.main(["--workdir", str(workdir), "--new_tokens", "0"]) == 1
  assert "must be >= 1" in capsys.readouterr().err
  assert os.listdir(tmp_path) == []  # nothing written for a bad call
