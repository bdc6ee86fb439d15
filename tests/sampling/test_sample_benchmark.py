"""benchmarks/sample.py on the tiny model: our rows with padding on, off
and by default generate the same greedy tokens, and a difference fails the
run."""

import importlib.util
import json
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                     "sample.py")
_spec = importlib.util.spec_from_file_location("sample_benchmark", _PATH)
sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample)

ARGS = ["--tiny", "--batches", "2", "--extra_batches", "", "--steps", "8",
        "--short_steps", "4"]


@pytest.fixture(autouse=True)
def _fresh_clock(monkeypatch):
  monkeypatch.setenv("JAXTYPING_DISABLE", "1")  # main() sets it; restored


def test_padded_unpadded_and_default_rows_agree(tmp_path):
  out = tmp_path / "sample.json"
  assert sample.main(ARGS + ["--impls", "ours_padded,ours_unpadded,ours",
                             "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["results"]
  assert [(r["impl"], r["steps"]) for r in rows] == [
      ("ours_padded", 4), ("ours_padded", 8), ("ours_unpadded", 4),
      ("ours_unpadded", 8), ("ours", 4), ("ours", 8)]
  for r in rows[2:]:
    assert r["tokens_equal_to"] == "ours_padded" and r["tokens_equal"]
  assert "tokens_equal" not in rows[0]


def test_different_tokens_fail_the_run(tmp_path, monkeypatch, capsys):
  run = sample.Ours.run

  def unpadded_rows_go_wrong(self, steps):
    elapsed = run(self, steps)
    if self.sampler.pad_small_rows is False:
      self.tokens = np.asarray(self.tokens) + 1
    return elapsed

  monkeypatch.setattr(sample.Ours, "run", unpadded_rows_go_wrong)
  out = tmp_path / "sample.json"
  assert sample.main(ARGS + ["--impls", "ours_padded,ours_unpadded",
                             "--out", str(out)]) == 1
  assert "CHECK FAILED" in capsys.readouterr().out
  rows = json.loads(out.read_text())["results"]
  assert [r.get("tokens_equal") for r in rows] == [None, None, False, False]


def test_unknown_impl_is_a_one_line_error(capsys):
  with pytest.raises(SystemExit):
    sample.main(["--tiny", "--impls", "ours_pad16"])
  assert "--impls: unknown 'ours_pad16'" in capsys.readouterr().err
