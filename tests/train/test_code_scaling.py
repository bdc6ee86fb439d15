"""The code scaling study (`reproduce run --study=code_scaling`,
experiments/lm.py sizes 1m / 4m / 16m, `recurrentgemma_jax/paper/scaling.py`):
its runs, their step counts (20 tokens per non-embedding parameter), bad
sizes, and the report's figures and numbers from finished runs."""

import json
import math

import jax
import pytest
from flax import nnx

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import reproduce as reproduce_cli
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.paper import report
from recurrentgemma_jax.paper import scaling
from recurrentgemma_jax.paper import studies
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import flops as flops_lib

import train_testlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LM = train_testlib.load_experiment("lm")
BYTES_VOCAB = 384  # 259 byte-tokenizer ids, padded to a multiple of 128


def _config_of(flag: str):
  path, _, arg = flag[len("--config="):].partition(":")
  return train_testlib.load_experiment(path).get_config(arg)


def _non_embedding(config) -> int:
  model = config_lib.build_model_config(config.model, BYTES_VOCAB)
  abstract = nnx.eval_shape(lambda: Griffin(model, rngs=nnx.Rngs(0)))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(abstract,
                                                         nnx.Param)))
  return total - BYTES_VOCAB * model.width  # the embedding is tied


def test_the_study_trains_three_families_at_three_sizes():
  jobs = studies.jobs_for("/out", ["code_scaling"], studies.MODELS, [0, 1])
  assert len(jobs) == 2 * 3 * 3
  assert {(j.model, j.variant, j.seed) for j in jobs} == {
      (m, v, s) for m in ("hawk", "griffin", "mqa")
      for v in ("1m", "4m", "16m") for s in (0, 1)}
  params = {}
  for job in jobs:
    assert job.workdir == (f"/out/code_scaling/{job.model}_{job.variant}"
                           f"_s{job.seed}")
    cmd = studies.train_command(job, "paper", [], {})
    assert cmd[3].endswith(f"lm.py:model={job.model},size={job.variant}")
    assert cmd[4:6] == [f"--config.seed={job.seed}",
                        f"--workdir={job.workdir}"]
    if job.seed:
      continue
    c = _config_of(cmd[3])
    # The default corpus (the standard library's source), bytes.
    assert (c.data.source, c.data.tokenizer) == ("python", "bytes")
    assert not c.data.python_site_packages
    assert (c.batch_size, c.seq_len, c.model.depth) == (64, 512, 9)
    n = _non_embedding(c)
    assert n == LM.SCALING_PARAMS[job.variant][job.model]
    assert c.total_steps == round(20 * n / (64 * 512))
    params[job.model, job.variant] = n
    width = c.model.width
    assert (c.model.mlp_expanded_width, c.model.lru_width) == (
        3 * width, 4 * width // 3)
    assert c.model.attention_window_size == (
        0 if job.model == "mqa" else 256)
  for model in studies.MODELS:  # about 1M, 4M and 16M, x4 per size
    sizes = [params[model, v] for v in ("1m", "4m", "16m")]
    assert 0.9e6 < sizes[0] < 1.5e6 and 3.5e6 < sizes[1] < 5.5e6
    assert 14e6 < sizes[2] < 20e6
    assert all(3.4 < b / a < 4.1 for a, b in zip(sizes, sizes[1:]))
  eval_cmd = studies.eval_command(jobs[0], "paper")
  assert eval_cmd[4:] == ["--length_multipliers=1,2,4,8", "--examples=4096",
                          "--length_eval_file=length_eval.json",
                          "--per_position"]


@pytest.mark.parametrize("arg, message", [
    ("size=2m", "size='2m' is not one of 100m, small, 1m, 4m, 16m"),
    ("size=4m,runlocal", "size=4m has no runlocal variant"),
])
def test_bad_sizes(arg, message):
  with pytest.raises(ConfigError, match=message):
    LM.get_config(arg)


def test_the_study_has_no_runlocal_size(tmp_path):
  with pytest.raises(SystemExit, match="--study=code_scaling has no "
                     "--size=runlocal; its sizes are paper"):
    common.call(reproduce_cli, ["run", "--study=code_scaling",
                                f"--outdir={tmp_path}"])
  assert not list(tmp_path.iterdir())


def _fake_run(root, model, variant, losses, length_losses):
  """A finished code_scaling run as `reproduce run` leaves it, by hand:
  run.json, the config.json training saves, metrics.jsonl, log.txt and the
  study's length evaluation."""
  workdir = root / "code_scaling" / f"{model}_{variant}_s0"
  workdir.mkdir(parents=True)
  (workdir / "run.json").write_text(json.dumps({
      "study": "code_scaling", "model": model, "seed": 0,
      "variant": variant, "status": "done", "train_seconds": 90.0,
      "train_command": "python -m recurrentgemma_jax.cli.train ..."}))
  config = LM.get_config(f"model={model},size={variant}")
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  (workdir / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "eval/loss": v}) + "\n"
      for s, v in losses.items()))
  (workdir / "log.txt").write_text("lm: 1.29M parameters, ...\n")
  (workdir / "length_eval.json").write_text(json.dumps({
      "step": max(losses), "train_seq_len": 512,
      "lengths": [{"multiplier": m, "seq_len": 512 * m, "loss": loss,
                   "per_position_loss": [loss] * (512 * m),
                   "per_position_tokens": [2.0] * (512 * m)}
                  for m, loss in length_losses.items()]}))
  return config


def test_report_of_two_finished_runs(tmp_path):
  griffin = _fake_run(tmp_path, "griffin", "1m", {100: 2.0, 766: 1.5},
                      {1: 1.5, 2: 1.45, 4: 1.44, 8: 1.44})
  mqa = _fake_run(tmp_path, "mqa", "1m", {100: 2.2, 596: 1.7},
                  {1: 1.7, 2: 2.5, 4: 3.5, 8: 4.0})
  text = report.write_report(str(tmp_path), str(tmp_path / "fig"))
  for name in ("code_scaling_flops.png", "code_scaling_tokens.png",
               "code_scaling_positions_by_length.png"):
    data = (tmp_path / "fig" / name).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, name
  points = json.loads((tmp_path / "summary.json").read_text())[
      "code_scaling"]["points"]
  for model, config, steps, loss in (("griffin", griffin, 766, 1.5),
                                     ("mqa", mqa, 596, 1.7)):
    (point,) = points[model]
    model_config = config_lib.build_model_config(config.model, BYTES_VOCAB)
    tokens = steps * 64 * 512
    assert point["variant"] == "1m"
    assert point["tokens"] == tokens
    assert point["flops"] == pytest.approx(
        tokens * flops_lib.train_flops_per_token(model_config, 512))
    assert point["losses"] == [loss] and point["steps"] == [steps]
    assert point["non_embedding_params"] == LM.SCALING_PARAMS["1m"][model]
  # 20 tokens per non-embedding parameter: about 6 x 20 N^2 FLOPs.
  n = LM.SCALING_PARAMS["1m"]["griffin"]
  assert 0.9 < points["griffin"][0]["flops"] / (6 * 20 * n * n) < 1.3
  assert ("| Griffin | 1m | 1.25M | 2.51e+07 | "
          f"{points['griffin'][0]['flops']:.3g} | 1 | 766 | 1.500 | 1.5 |"
          in text)
  assert "| MQA | 1m | 0.98M |" in text


def test_compute_matched_interpolates_the_baseline_in_log_flops():
  points = {
      "mqa": [{"variant": "1m", "flops": 1e15, "loss": 2.0},
              {"variant": "4m", "flops": 1e17, "loss": 1.0}],
      "griffin": [{"variant": "1m", "flops": 1e16, "loss": 1.4},
                  {"variant": "4m", "flops": 1e18, "loss": 0.9}],
  }
  (matched,) = scaling.compute_matched(points)  # 1e18 is out of range
  assert matched["variant"] == "1m"
  assert matched["baseline_loss"] == pytest.approx(1.5)
  assert matched["difference"] == pytest.approx(-0.1)
  assert math.isclose(matched["flops"], 1e16)


@pytest.mark.parametrize("size, models, expected", [
    # The official-model control only when named (it needs the official
    # package: test_reproduce.py).
    ("runlocal", ["hawk", "griffin", "mqa"],
     ["selective_copy", "induction_heads", "mqar", "lm"]),
    ("paper", ["hawk"],
     ["selective_copy", "induction_heads", "mqar", "mqar_wide", "lm",
      "code_scaling"]),
])
def test_all_studies_are_those_with_the_size_and_models(size, models,
                                                        expected):
  assert reproduce_cli.chosen_studies("all", size, models) == expected
  assert reproduce_cli.chosen_studies("lm,code_scaling", "paper",
                                      ["mqa"]) == ["lm", "code_scaling"]


def test_a_reused_workdir_gets_its_new_cost(tmp_path):
  """run_cost is cached by the config's text, not by the path: the same
  workdir holding another run (a notebook rerun) is costed anew."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  for variant in ("1m", "4m"):
    config = LM.get_config(f"model=griffin,size={variant}")
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    cost = scaling.run_cost(str(workdir))
    assert cost["non_embedding_params"] == (
        LM.SCALING_PARAMS[variant]["griffin"])
