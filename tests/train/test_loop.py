"""The shared loop end to end: training, logging, evaluation, plotting,
profiling, resuming, and the errors users see."""

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from recurrentgemma_jax import presets
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import flops
from recurrentgemma_jax.training import loop

import train_testlib


def _records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_logs_evaluates_checkpoints_and_resumes(tmp_path, capsys):
  workdir = tmp_path / "run"
  config = train_testlib.tiny_config(profile_steps=(2, 3))
  result = loop.train(config, str(workdir))
  assert (result.step, result.preempted) == (6, False)

  losses = train_testlib.losses(workdir)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  assert losses[6][0] < losses[1][0]
  records = _records(workdir)
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [6]
  assert evals[0]["eval/perplexity"] == pytest.approx(
      np.exp(evals[0]["eval/loss"]), rel=1e-6)
  assert 0 <= evals[0]["eval/accuracy"] <= 1
  assert any("perf/tokens_per_s" in r for r in records)

  out = capsys.readouterr().out
  assert "step 6/6 | loss" in out and "tok/s" in out and "ETA" in out
  assert "MFU n/a" in out  # no known peak for the CPU
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((workdir / "config.json").read_text())["seq_len"] == 32
  assert list((workdir / "profile").rglob("*.xplane.pb"))
  complete = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                    if p.name.isdigit())
  assert complete == [3, 6]

  # Evaluating the final checkpoint reproduces the final evaluation.
  metrics = loop.evaluate(config, str(workdir))
  assert metrics["step"] == 6
  assert metrics["eval/loss"] == pytest.approx(evals[0]["eval/loss"],
                                               rel=1e-6)

  # Running again with the same workdir resumes: nothing left to train.
  again = loop.train(config, str(workdir))
  assert again.step == 6 and train_testlib.losses(workdir) == losses

  # The command-line tools on the same workdir.
  result = train_testlib.python("-m", "recurrentgemma_jax.cli.evaluate",
                                f"--workdir={workdir}", "--step=3")
  assert result.returncode == 0, result.stderr[-2000:]
  printed = json.loads(result.stdout[result.stdout.index("{"):])
  assert printed["step"] == 3 and np.isfinite(printed["eval/loss"])
  assert not re.findall(r"^I\d{4} .*", result.stderr, re.M)  # no INFO logs
  png = tmp_path / "curves.png"
  result = train_testlib.python("-m", "recurrentgemma_jax.cli.plot",
                                str(workdir), f"--out={png}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path,
                                                           monkeypatch):
  workdir = str(tmp_path / "run")
  loop.train(train_testlib.tiny_config(total_steps=4, checkpoint_every=2,
                                       eval_every=100), workdir)
  real = loop._global_batch  # pylint: disable=protected-access

  def poisoned(local, *args):  # NaN loss weights from step 5 on
    return real({**local, "mask": local["mask"] * np.float32("nan")}, *args)

  monkeypatch.setattr(loop, "_global_batch", poisoned)
  with pytest.raises(loop.NonFiniteLossError, match="step 5.*step 4"):
    loop.train(train_testlib.tiny_config(total_steps=8, checkpoint_every=1,
                                         eval_every=100), workdir)
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir()
                if p.name.isdigit()) == [2, 4]
  assert max(train_testlib.losses(workdir)) == 4


def _lm_config(tmp_path, **overrides):
  config = train_testlib.tiny_config(**overrides)
  config.data = {"task": "lm", "source": "text",
                 "files": train_testlib.sample_text(tmp_path / "sample.txt"),
                 "data_dir": str(tmp_path / "tfds")}
  return config


@pytest.mark.parametrize("change, match", [
    ({"mesh.data": 3}, "mesh: axes .* multiply to 3 but there are 1"),
    ({"grad_accum_steps": 3}, "batch_size=8 is not divisible by the "
     "data-parallel size .* grad_accum_steps=3"),
    ({"model.num_heads": 3}, "num_heads: 3 must divide width=32"),
    ({"model.preset": "griffin-7"}, "unknown preset 'griffin-7'"),
])
def test_setup_rejects_bad_configs_before_compiling(tmp_path, change, match):
  with pytest.raises(ConfigError, match=match):
    loop.setup(train_testlib.tiny_config(**change), str(tmp_path))


@pytest.mark.parametrize("key,bad_id", [("inputs", 32), ("targets", -1)])
def test_batches_with_ids_outside_the_vocabulary_are_refused(key, bad_id):
  # Inside the jitted step such ids would silently embed as NaN or wrap.
  mesh = jax.make_mesh((1,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = {"inputs": np.ones((2, 4), np.int32),
           "targets": np.ones((2, 4), np.int32)}
  assert set(loop._global_batch(batch, sharding, 32)) == set(batch)
  batch[key] = batch[key].copy()
  batch[key][1, 2] = bad_id
  with pytest.raises(ConfigError, match=f"token id {bad_id} at index "
                     r"\(1, 2\).*\[0, 32\)"):
    loop._global_batch(batch, sharding, 32)


def test_setup_rejects_bad_data_and_workdirs(tmp_path):
  config = _lm_config(tmp_path, **{"model.vocab_size": 100})
  with pytest.raises(ConfigError, match=r"vocabulary \(259 ids\) is larger "
                     "than the model's vocab_size=100"):
    loop.setup(config, str(tmp_path / "a"))
  config = _lm_config(tmp_path)
  config.data.source = "tfds"
  config.data.name = "no_such_dataset_xyz"
  with pytest.raises(ConfigError, match="no_such_dataset_xyz.*not found"):
    loop.setup(config, str(tmp_path / "b"))
  (tmp_path / "file").write_text("not a folder")
  with pytest.raises(ConfigError, match="is not writable"):
    loop.setup(train_testlib.tiny_config(), str(tmp_path / "file" / "run"))


def test_lm_default_vocabulary_is_padded_for_sharding(tmp_path):
  exp = loop.setup(_lm_config(tmp_path), str(tmp_path / "run"))
  assert exp.task.vocab_size == 259 and exp.model_config.vocab_size == 384


def test_command_line_errors_are_one_line(tmp_path):
  result = train_testlib.python(
      "-m", "recurrentgemma_jax.cli.train",
      "--config=experiments/mqar.py:runlocal", f"--workdir={tmp_path}",
      "--config.mesh.data=3")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert errors == ["error: mesh: axes {'data': 3, 'fsdp': 1, 'tensor': 1, "
                    "'sequence': 1} multiply to 3 but there are 1 devices"]


def test_flop_count():
  assert flops.mean_visible_keys(4, None) == 2.5  # (1 + 2 + 3 + 4) / 4
  assert flops.mean_visible_keys(6, 1) == (1 + 2 + 2 + 2 + 2 + 2) / 6
  # Hawk has no attention: 3 forward passes of 2 FLOPs per matmul weight is
  # 6N; the conv and RG-LRU elementwise work add, the biases, norms and
  # Lambda (parameters without a matmul) subtract, < 1% in all.
  config = presets.get("hawk-100m")
  n = _num_params(config)
  per_token = flops.train_flops_per_token(config, 2048)
  assert abs(per_token / (6 * n) - 1) < 0.01
  # Local attention costs grow with the window until it covers the sequence.
  griffin = presets.get("griffin-100m")
  small = flops.forward_flops_per_token(griffin, 4096)
  large = flops.forward_flops_per_token(
      griffin.replace(attention_window_size=2048), 4096)
  full = flops.forward_flops_per_token(
      griffin.replace(attention_window_size=None), 4096)
  assert small < large < full
  assert flops.peak_flops_per_device(jax.devices("cpu")[0]) is None


def _num_params(config) -> int:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top

  model = nnx.eval_shape(lambda: Griffin(config, rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_fine_tuning_starts_from_released_weights(tmp_path):
  """`init_from.checkpoint`: an official-format Orbax checkpoint (built here
  from a tiny model) becomes the initial parameters."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top

  config = train_testlib.tiny_config()
  released = Griffin(config_lib.build_model_config(config.model, 32),
                     rngs=nnx.Rngs(7))
  ocp.PyTreeCheckpointer().save(tmp_path / "ckpt",
                                official.to_official(released))
  config.init_from.checkpoint = str(tmp_path / "ckpt")
  config.init_from.preset = ""  # window etc. from config.model
  config.model.logits_soft_cap = 0.0
  config.model.embeddings_scale_by_sqrt_dim = False
  exp = loop.setup(config, str(tmp_path / "run"))
  assert exp.model_config.width == 32 and exp.model_config.vocab_size == 32
  state = state_lib.init_train_state(exp.spec, exp.tx, seed=0,
                                     params=exp.init_params)
  want = nnx.state(released, nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)
  config.init_from.checkpoint = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="init_from.checkpoint"):
    loop.setup(config, str(tmp_path / "run2"))


def test_memory_line_reports_the_fullest_device_or_nothing():
  from recurrentgemma_jax.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  gpu = {"peak_bytes_in_use": 55_226_950_400, "bytes_limit": 150_100_000_000}
  small = {"peak_bytes_in_use": 1_000_000_000, "bytes_limit": 150_100_000_000}
  assert (metrics_lib.memory_line([gpu]) ==
          "device memory: peak 55.2 GB of 150.1 GB")
  assert (metrics_lib.memory_line([small, gpu]) ==
          "device memory: peak 55.2 GB of 150.1 GB "
          "(the fullest of 2 local devices)")
  assert metrics_lib.memory_line([None]) is None  # XLA:CPU reports nothing
  assert metrics_lib.memory_line([gpu, None]) is None
  assert metrics_lib.memory_line([]) is None
