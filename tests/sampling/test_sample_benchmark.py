"""benchmarks/sample.py on the tiny model: every row starts from the same
prefix, and each row's greedy tokens are compared with the official's and
with our first row's."""

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


def test_rows_are_compared_with_the_official_and_our_first(tmp_path):
  out = tmp_path / "sample.json"
  assert sample.main(ARGS + ["--impls", "ours_padded,ours_unpadded,official",
                             "--out", str(out)]) == 0
  rows = {(r["impl"], r["steps"]): r
          for r in json.loads(out.read_text())["results"]}
  assert set(rows) == {("ours_padded", 4), ("ours_padded", 8),
                       ("ours_unpadded", 4), ("ours_unpadded", 8),
                       ("official", 8)}
  # On CPU padding changes no bit: our rows agree exactly.
  assert rows["ours_unpadded", 8]["tokens_vs"]["ours_padded"] == {
      "agreement": 1.0, "rows_identical": 2, "first_difference": 8}
  assert rows["ours_unpadded", 4]["tokens_vs"]["ours_padded"][
      "agreement"] == 1.0
  # Against the official loop, from the same prefix on the same weights:
  # on CPU, for this model, every token agrees (on a GPU a bfloat16 near-tie
  # may round the other way, so the benchmark reports it, not requires it).
  for impl in ("ours_padded", "ours_unpadded"):
    assert rows[impl, 8]["tokens_vs"]["official"] == {
        "agreement": 1.0, "rows_identical": 2, "first_difference": 8}
  # Not a degenerate continuation (one repeated token, or the argmax of
  # NaN logits) that would agree whatever the alignment.
  for r in rows.values():
    assert r["distinct_tokens"] > 2, r
  assert "tokens_vs" not in rows["official", 8]
  assert "official" not in rows["ours_padded", 4].get("tokens_vs", {})


def test_token_agreement_counts_positions_rows_and_first_differences():
  reference = np.arange(12).reshape(3, 4)
  got = reference.copy()
  got[1, 2:] = -1  # row 1 differs from step 2 on
  got[2, 0] = -1  # row 2 differs at step 0 only
  assert sample.token_agreement(got, reference) == {
      "agreement": 9 / 12, "rows_identical": 1, "first_difference": 2}


def test_official_type_checks_are_off_inside_and_restored_after():
  import jaxtyping  # pylint: disable=g-import-not-at-top

  before = jaxtyping.config.jaxtyping_disable
  with sample.official_type_checks_off():
    assert jaxtyping.config.jaxtyping_disable is True
  assert jaxtyping.config.jaxtyping_disable == before


def test_unknown_impl_is_a_one_line_error(capsys):
  with pytest.raises(SystemExit):
    sample.main(["--tiny", "--impls", "ours_pad16"])
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].endswith("--impls: unknown 'ours_pad16'; allowed: ours, "
                          "ours_padded, ours_unpadded, official")
