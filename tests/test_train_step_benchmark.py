"""benchmarks/train_step.py end to end on a tiny model: ours with the real
and the plain step give a row each with the compiled step's memory, and a
bad model name fails before anything is built."""

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                     "train_step.py")
_spec = importlib.util.spec_from_file_location("train_step_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TINY = ["--width", "32", "--depth", "3", "--heads", "2", "--window", "8",
        "--vocab", "64", "--batch", "4", "--seq_len", "16", "--steps", "2",
        "--warmup", "1"]


def test_rows_for_the_real_and_the_plain_step(tmp_path):
  out = tmp_path / "rows.jsonl"
  bench.main(TINY + ["--models", "griffin,griffin-plain", "--out", str(out)])
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["model"] for r in rows] == ["griffin", "griffin-plain"]
  for r in rows:
    assert r["batch"] == 4 and r["seq_len"] == 16
    assert r["min_ms"] <= r["step_ms"] <= r["max_ms"]
    assert 0 < r["pipelined_ms"] < 10 * r["max_ms"]
    assert r["tokens_per_s"] == pytest.approx(64 / (r["step_ms"] / 1e3))
    # The state (params + two Adam moments in float32) is part of the step.
    assert r["step_bytes"] >= 3 * 4 * r["params"]
    assert r["loss"] > 0 and r["compile_s"] > 0 and r["init_s"] > 0
  # Both steps train the same model from the same initialisation and batch.
  assert rows[0]["params"] == rows[1]["params"]
  assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-3)


def test_unknown_model_is_refused(capsys):
  with pytest.raises(SystemExit):
    bench.main(TINY + ["--models", "griffin,official-plain"])
  assert "unknown model 'official-plain'" in capsys.readouterr().err
