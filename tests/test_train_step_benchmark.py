"""benchmarks/train_step.py end to end on a tiny model: ours with the real
and the plain step give a row each with the compiled step's memory, and a
bad model name fails before anything is built."""

import importlib.util
import json
import math
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


def test_config_overrides_make_ab_rows_in_one_process(tmp_path):
  out = tmp_path / "rows.jsonl"
  bench.main(TINY + ["--models", "griffin,griffin@mlp_expanded_width=64",
                     "--out", str(out)])
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["overrides"] for r in rows] == [{}, {"mlp_expanded_width": 64}]
  # The override reached the model: a narrower MLP has fewer parameters.
  assert rows[1]["params"] < rows[0]["params"]


@pytest.mark.parametrize("name, parsed", [
    ("griffin", ("griffin", False, {})),
    ("hawk-plain@fused_rg_lru=false@attention_impl=xla",
     ("hawk", True, {"fused_rg_lru": False, "attention_impl": "xla"})),
    ("mqa@attention_window_size=512@lru_width=none",
     ("mqa", False, {"attention_window_size": 512, "lru_width": None})),
])
def test_parse_model(name, parsed):
  assert bench.parse_model(name) == parsed


@pytest.mark.parametrize("name, message", [
    ("griffin@widht=3", "'widht=3' is not FIELD=VALUE with a GriffinConfig"),
    ("griffin@fused_rg_lru=maybe", "fused_rg_lru takes true or false"),
    ("official@width=3", "the official model takes no overrides"),
    ("griffin@width=wide", "width takes int, got 'wide'"),
    ("griffin@block_types=rra", "block_types (tuple"),
    ("griffin@attention_impl=fast", "attention_impl: 'fast' is not one of"),
])
def test_bad_overrides_are_refused_before_anything_runs(name, message,
                                                         capsys):
  with pytest.raises(SystemExit):
    bench.main(TINY + ["--models", f"griffin,{name}"])
  assert message in capsys.readouterr().err


def test_an_ab_row_records_its_own_settings_and_profile(tmp_path):
  out = tmp_path / "rows.jsonl"
  bench.main(TINY + ["--models", "griffin@attention_impl=xla@vocab_size=48",
                     "--out", str(out), "--profile", str(tmp_path / "prof")])
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert row["attention_impl"] == "xla"
  assert math.isfinite(row["loss"])  # the batch's ids fit the 48 tokens
  names = {p.name for p in (tmp_path / "prof").iterdir()}
  assert "griffin_attention_impl_xla_vocab_size_48_4x16.hlo.txt" in names
