"""`recurrentgemma convert` (`recurrentgemma_jax.conversion`): official Orbax
<-> Hugging Face safetensors, and a training workdir's checkpoint -> either,
exactly.

The HF checkpoints here are written by our `to_hf` (transformers' own
loading of them is tested in tests/model/test_hf_interop.py); every
conversion is compared tensor by tensor with the source.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax import conversion as convert
from recurrentgemma_jax import safetensors_io
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import loop

import train_testlib

HYPERS = dict(attention_window_size=7, logits_soft_cap=30.0,
              embeddings_scale_by_sqrt_dim=True)
HYPER_FLAGS = ["--preset=", "--attention_window_size=7",
               "--logits_soft_cap=30", "--embeddings_scale_by_sqrt_dim"]


def _model(seed=0, **changes):
  config = rg.GriffinConfig(**{
      **dict(vocab_size=64, width=32, mlp_expanded_width=48, num_heads=4,
             block_types=("recurrent", "attention", "recurrent"), **HYPERS),
      **changes})
  model = rg.Griffin(config, rngs=nnx.Rngs(seed))
  leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [
      (x + 0.1 * jax.random.normal(k, x.shape)).astype(x.dtype)
      for x, k in zip(leaves, keys)]))
  return model


def _cli(*args):
  return train_testlib.python("-m", "recurrentgemma_jax.cli.convert", *args,
                              timeout=300)


def _tensors(path):
  return safetensors_io.read(str(path))


def _assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_hf_official_hf_round_trip_on_the_command_line(tmp_path):
  rg.to_hf(_model(), tmp_path / "hf", max_shard_size="20KB")
  result = _cli("--from=hf", "--to=official", f"--src={tmp_path / 'hf'}",
                f"--dst={tmp_path / 'official'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "read back and equal; load it with attention_window_size=7" in (
      result.stdout)
  result = _cli("--from=official", "--to=hf", f"--src={tmp_path / 'official'}",
                f"--dst={tmp_path / 'hf2'}", "--max_shard_size=20KB",
                *HYPER_FLAGS)
  assert result.returncode == 0, result.stderr[-2000:]
  _assert_same_tensors(_tensors(tmp_path / "hf"), _tensors(tmp_path / "hf2"))
  assert json.loads((tmp_path / "hf" / "config.json").read_text()) == (
      json.loads((tmp_path / "hf2" / "config.json").read_text()))
  assert sorted(os.listdir(tmp_path / "hf")) == sorted(
      os.listdir(tmp_path / "hf2"))


def test_dtype_conversion_keeps_bfloat16_values(tmp_path):
  model = _model(param_dtype="bfloat16")
  rg.to_hf(model, tmp_path / "hf")
  convert.convert("hf", "official", str(tmp_path / "hf"),
                  str(tmp_path / "official"))
  back = convert.load("official", str(tmp_path / "official"), preset=None,
                      **HYPERS)
  assert back.config.param_dtype == "bfloat16"  # the stored dtype is kept
  summary = convert.convert("official", "hf", str(tmp_path / "official"),
                            str(tmp_path / "hf32"), preset=None,
                            dtype="float32", **HYPERS)
  assert "in float32, read back and equal" in summary
  up = _tensors(tmp_path / "hf32")
  for name, value in _tensors(tmp_path / "hf").items():
    assert up[name].dtype == np.float32
    np.testing.assert_array_equal(up[name], value.astype(np.float32))


def test_workdir_to_hf_and_official(tmp_path):
  config = train_testlib.tiny_config(total_steps=2, checkpoint_every=2,
                                     eval_every=2)
  config.model.update(logits_soft_cap=30.0, embeddings_scale_by_sqrt_dim=True)
  loop.train(config, str(tmp_path / "run"))
  trained, _, step = rg.load_workdir(str(tmp_path / "run"))
  assert step == 2
  convert.convert("workdir", "hf", str(tmp_path / "run"),
                  str(tmp_path / "hf"))
  exported = rg.from_hf(tmp_path / "hf")
  tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % 32
  positions = np.tile(np.arange(12, dtype=np.int32), (2, 1))
  np.testing.assert_array_equal(np.asarray(exported(tokens, positions)),
                                np.asarray(trained(tokens, positions)))
  summary = convert.convert("workdir", "official", str(tmp_path / "run"),
                            str(tmp_path / "official"), dtype="bfloat16")
  assert "attention_window_size=8" in summary
  with pytest.raises(ConfigError, match="exists; choose another folder or "
                     "pass --overwrite"):
    convert.convert("workdir", "official", str(tmp_path / "run"),
                    str(tmp_path / "official"))
  # --overwrite replaces a checkpoint of the same layout, never a workdir.
  convert.convert("workdir", "official", str(tmp_path / "run"),
                  str(tmp_path / "official"), overwrite=True)
  with pytest.raises(ConfigError, match="is no official checkpoint"):
    convert.convert("hf", "official", str(tmp_path / "hf"),
                    str(tmp_path / "run"), overwrite=True)
  assert rg.load_workdir(str(tmp_path / "run"))[2] == 2


def test_a_model_transformers_cannot_express_is_refused_before_writing(
    tmp_path):
  rg.to_hf(_model(), tmp_path / "hf")
  convert.convert("hf", "official", str(tmp_path / "hf"),
                  str(tmp_path / "official"))
  flags = [f if "soft_cap" not in f else "--logits_soft_cap=0"
           for f in HYPER_FLAGS]
  result = _cli("--from=official", "--to=hf",
                f"--src={tmp_path / 'official'}", f"--dst={tmp_path / 'x'}",
                *flags)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: to_hf: logits_soft_cap=0.0 cannot be expressed in "
      "transformers' RecurrentGemma (allowed: > 0: transformers always "
      "soft-caps the logits)")
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["--from=hf", "--to=workdir"], "flag --to=workdir: value should be one "
     "of <official|hf>"),
    (["--from=orbax", "--to=hf"], "flag --from=orbax: value should be one of"),
    (["--from=hf", "--to=official", "--src=/nonexistent/x"],
     "--src: no folder /nonexistent/x"),
])
def test_command_line_errors_are_one_line(tmp_path, args, message):
  if not any(a.startswith("--src") for a in args):
    args = [*args, f"--src={tmp_path}"]
  result = _cli(*args, f"--dst={tmp_path / 'out'}")
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert message in result.stderr.strip().splitlines()[-1]


def test_layout_errors_name_the_fix(tmp_path):
  rg.to_hf(_model(), tmp_path / "hf")
  convert.convert("hf", "official", str(tmp_path / "hf"),
                  str(tmp_path / "official"))
  with pytest.raises(ConfigError, match="looks like an official checkpoint, "
                     "not hf: pass --from=official"):
    convert.convert("hf", "hf", str(tmp_path / "official"),
                    str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="looks like a hf checkpoint"):
    convert.convert("official", "hf", str(tmp_path / "hf"),
                    str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="does not match preset "
                     "'recurrentgemma-2b': width is 32.*pass --preset="):
    convert.convert("official", "hf", str(tmp_path / "official"),
                    str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="--preset= needs "
                     "--attention_window_size, --logits_soft_cap"):
    convert.convert("official", "hf", str(tmp_path / "official"),
                    str(tmp_path / "x"), preset=None)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match="no config.json .not a Hugging Face"):
    convert.convert("hf", "official", str(tmp_path / "empty"),
                    str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="not a training workdir"):
    convert.convert("workdir", "hf", str(tmp_path / "empty"),
                    str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="--src and --dst are the same"):
    convert.convert("hf", "hf", str(tmp_path / "hf"), str(tmp_path / "hf"))
  with pytest.raises(ConfigError, match="already holds a checkpoint"):
    convert.convert("official", "hf", str(tmp_path / "official"),
                    str(tmp_path / "hf"), preset=None, **HYPERS)
  assert not (tmp_path / "x").exists()

