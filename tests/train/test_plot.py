"""`recurrentgemma_jax.plotting` and `recurrentgemma plot`: damaged metrics
files, single points, chance."""

import json

import numpy as np
import pytest
from matplotlib import pyplot as plt

import recurrentgemma_jax as rg
from recurrentgemma_jax import plotting as plot
from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import plot as plot_cli


def _workdir(path, lines, config=None):
  path.mkdir()
  with open(path / "metrics.jsonl", "wb") as f:
    for line in lines:
      if isinstance(line, dict):
        line = json.dumps(line)
      f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
  if config is not None:
    (path / "config.json").write_text(json.dumps(config))
  return str(path)


def test_bad_lines_are_skipped_with_a_warning(tmp_path):
  workdir = _workdir(tmp_path / "run", [
      {"step": 1, "train/loss": 2.0},
      '{"step": 2, "train/lo',  # a run killed while writing
      b"\xff\xfe garbage",
      {"train/loss": 9.0},  # no step
      "[1, 2]",
      {"step": 3, "train/loss": 1.5, "eval/accuracy": 0.25},
  ])
  with pytest.warns(UserWarning, match="skipped a bad line") as record:
    series = plot.read_metrics(workdir)
  assert len(record) == 4
  assert series == {"train/loss": {1: 2.0, 3: 1.5}, "eval/accuracy": {3: 0.25}}
  with pytest.warns(UserWarning, match="skipped a bad line"):
    out = plot.plot([workdir], str(tmp_path / "curves.png"))
  assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_single_points_are_visible_and_chance_is_marked(tmp_path):
  config = {"seq_len": 64, "seed": 0,
            "data": {"task": "selective_copy", "vocab_size": 16,
                     "num_tokens": 8}}
  workdir = _workdir(tmp_path / "run", [
      {"step": 5, "train/loss": 2.0, "train/accuracy": 0.1},
  ], config)
  assert plot.chance_accuracy(workdir) == pytest.approx(1 / 14)
  fig = plot.figure([workdir])
  try:
    loss, accuracy = fig.axes
    (train_loss,) = loss.lines
    assert train_loss.get_marker() not in (None, "", "None")
    chance = [l for l in accuracy.lines if l.get_label().startswith("chance")]
    assert len(chance) == 1
    np.testing.assert_allclose(chance[0].get_ydata(), 1 / 14)
  finally:
    plt.close(fig)


def test_no_chance_line_without_a_known_task(tmp_path):
  workdir = _workdir(tmp_path / "lm", [{"step": 1, "train/accuracy": 0.1}],
                     {"seq_len": 64, "seed": 0, "data": {"task": "lm"}})
  assert plot.chance_accuracy(workdir) is None
  assert plot.chance_accuracy(str(tmp_path)) is None  # no config.json
  fig = plot.figure([workdir])
  try:
    assert not [l for l in fig.axes[1].lines
                if l.get_label().startswith("chance")]
  finally:
    plt.close(fig)


def test_a_metrics_folder_is_a_one_line_error(tmp_path, capsys):
  (tmp_path / "run" / "metrics.jsonl").mkdir(parents=True)
  assert common.call(plot_cli, [str(tmp_path / "run"), "--out",
                                str(tmp_path / "c.png")]) == 1
  assert "metrics.jsonl is a folder" in capsys.readouterr().err
  assert common.call(plot_cli, ["--out=c.png"]) == 2  # no workdir
  assert capsys.readouterr().err == (
      "error: give one or more training workdirs\n")


def test_plot_metrics_is_the_library_plot():
  assert rg.plot_metrics is plot.plot
