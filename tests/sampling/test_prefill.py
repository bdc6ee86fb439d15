"""Chunked prefill: `decode.extend` keeps only the last token's logits, and
benchmarks/prefill.py (ours against the official prefill) runs its checks
and writes its rows."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax.sampling import DecodeState
from recurrentgemma_jax.sampling import Sampler

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                     "prefill.py")
_spec = importlib.util.spec_from_file_location("prefill_benchmark", _PATH)
prefill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prefill)

# Small enough to compile in seconds; two cases, two chunk sizes each.
ARGS = ["--tiny", "--dtype", "float32", "--cases", "1x32,2x16",
        "--max_chunks", "4,32", "--repeats", "1"]


def test_a_chunk_does_not_build_the_logits_of_every_token():
  """[B, T, vocab] logits of a 512-token chunk would be 268 MB; only the
  last token's are computed (`Griffin(..., last_only=True)`): no array of
  that shape exists in the compiled chunk."""
  config = rg.GriffinConfig(
      vocab_size=32768, width=32, mlp_expanded_width=64, num_heads=2,
      lru_width=32, block_types=("recurrent", "attention"),
      attention_window_size=16)
  model = rg.Griffin(config, rngs=nnx.Rngs(0))
  sampler = Sampler(model)
  b, t = 4, 512
  state = DecodeState(cache=model.init_cache(b),
                      logits=jnp.zeros((b, config.vocab_size)),
                      segment_pos=jnp.zeros((b,), jnp.int32))
  compiled = sampler._extend.lower(  # pylint: disable=protected-access
      sampler.params, state, jax.ShapeDtypeStruct((b, t), jnp.int32)
  ).compile()
  hlo = compiled.as_text()
  assert f"{config.vocab_size}]" in hlo  # the last token's logits are made
  assert f"[{b},{t},{config.vocab_size}]" not in hlo


def test_tiny_run_checks_against_a_forward_pass_and_the_official(
    tmp_path, monkeypatch):
  # As if the module had been imported hours ago (a long suite collects it
  # long before it runs): --budget_s counts from main()'s start.
  monkeypatch.setattr(prefill.sample, "T0", prefill.sample.T0 - 1e4)
  out = tmp_path / "prefill.json"
  assert prefill.main(ARGS + ["--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["checks_passed"] is True and report["finished"] is True
  rows = {(r["impl"], r["case"], r.get("max_chunk")): r
          for r in report["results"]}
  assert set(rows) == {("official", "1x32", None), ("ours", "1x32", 4),
                       ("ours", "1x32", 32), ("official", "2x16", None),
                       ("ours", "2x16", 4), ("ours", "2x16", 16)}
  assert rows["ours", "1x32", 4]["chunks"] == 8
  assert rows["ours", "1x32", 32]["chunks"] == 1
  for r in rows.values():
    assert r["tokens_per_s"] == pytest.approx(
        r["batch"] * r["prompt_len"] / r["seconds"])
    assert r["compile_s"] > 0 and len(r["times"]) == 1
  assert "api_s" in rows["ours", "1x32", 4]
  assert len(report["ratios"]) == 4
  for check in report["checks"]:
    assert set(check["chunks"]) in ({"4", "32"}, {"4", "16"})
    for chunk, c in check["chunks"].items():
      assert c["ok"], (check["case"], chunk, c)
      for name in ("prefill_vs_forward", "next_vs_forward",
                   "ours_vs_official"):
        assert c[name]["rel"] < 1e-4 and c[name]["argmax_agree"] == 1.0
    assert check["chunks"]["4"]["api_equal"] is True


def test_a_mismatch_fails_the_run(tmp_path, monkeypatch, capsys):
  """The check compares with the reference it is given: shifted reference
  logits fail it, and the exit status says so."""
  reference = prefill.reference_logits
  monkeypatch.setattr(prefill, "reference_logits",
                      lambda model, tokens: reference(model, tokens) + 0.5)
  out = tmp_path / "prefill.json"
  rc = prefill.main(["--tiny", "--dtype", "float32", "--cases", "1x16",
                     "--max_chunks", "16", "--repeats", "1", "--impls",
                     "ours", "--out", str(out)])
  assert rc == 1
  assert "CHECK FAILED" in capsys.readouterr().out
  report = json.loads(out.read_text())
  assert report["checks_passed"] is False
  c = report["checks"][0]["chunks"]["16"]
  assert c["prefill_vs_forward"]["max_abs"] == pytest.approx(0.5, abs=1e-4)
  assert "ours_vs_official" not in c


def test_chunk_plan_is_the_samplers():
  assert prefill.chunk_plan(8192, 1024) == [1024] * 8
  assert prefill.chunk_plan(100, 32) == [32, 32, 32, 4]
  assert prefill.chunk_plan(100, 24) == [32, 32, 32, 4]  # rounded up
  assert prefill.chunk_plan(2048, 8192) == [2048]
  assert prefill.chunk_plan(3, 1) == [1, 1, 1]


@pytest.mark.parametrize("flags, message", [
    (["--cases", "8"], "--cases: '8' is not BATCHxLENGTH"),
    (["--cases", "0x64"], "needs batch >= 1 and length >= 2"),
    (["--max_chunks", "64,x"], "--max_chunks: '64,x' is not a list"),
    (["--max_chunks", "0"], "--max_chunks: '0' needs integers >= 1"),
    (["--impls", "ours,theirs"], "--impls: 'ours,theirs' is not a list"),
    (["--repeats", "0"], "--repeats and --check_rows must be >= 1"),
])
def test_bad_flags_are_one_line_errors(flags, message, capsys):
  with pytest.raises(SystemExit) as e:
    prefill.main(["--tiny"] + flags)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


def test_compare_measures_relative_to_the_largest_reference_logit():
  ref = np.array([[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]])
  got = ref + np.array([[0.0, 0.2, 0.0], [0.0, 0.0, 0.0]])
  c = prefill.compare(got, ref)
  assert c["max_abs"] == pytest.approx(0.2)
  assert c["rel"] == pytest.approx(0.05)
  assert c["argmax_agree"] == 1.0
  assert prefill.compare(ref[:, ::-1], ref)["argmax_agree"] == 0.0


def test_a_run_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch,
                                                     capsys):
  """The report is written after every case: a time limit that kills the
  run in its second case leaves the first case's rows and checks."""
  reference = prefill.reference_logits
  calls = []

  def killed_in_the_second_case(model, tokens):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt("the time limit")
    return reference(model, tokens)

  monkeypatch.setattr(prefill, "reference_logits", killed_in_the_second_case)
  out = tmp_path / "prefill.json"
  with pytest.raises(KeyboardInterrupt):
    prefill.main(["--tiny", "--dtype", "float32", "--cases", "1x16,2x16",
                  "--max_chunks", "16", "--repeats", "1", "--impls", "ours",
                  "--out", str(out)])
  report = json.loads(out.read_text())
  assert [r["case"] for r in report["results"]] == ["1x16"]
  assert [c["case"] for c in report["checks"]] == ["1x16"]
  assert report["checks_passed"] is True and report["finished"] is False
  assert not (tmp_path / "prefill.json.tmp").exists()
  assert "check 1x16 chunk 16: worst relative logit error" in (
      capsys.readouterr().out)
