"""`recurrentgemma sample` from released-format weights and from a training
workdir (written by the training code's Checkpointer)."""

import json
import os
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import recurrentgemma_jax as rg
import sampling_testlib as lib
from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import sample as sample_cli
from recurrentgemma_jax.sampling import Sampler


def _sample(args) -> int:
  """`recurrentgemma sample ARGS` in this process; its exit code."""
  return common.call(sample_cli, args)


def _records(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()
          if line.startswith("{")]


def test_official_checkpoint(tmp_path, capsys):
  config, _, params = lib.official_model()
  path = str(tmp_path / "ckpt")
  ocp.PyTreeCheckpointer().save(path, params)
  spm_path = lib.sentencepiece_model_path()
  rc = _sample([
      "--official", path, "--preset", "none", "--window", "8",
      "--soft_cap", "30", "--sqrt_scale", "--tokenizer", spm_path,
      "--prompt", "the cat sat", "--prompt", "a quick fox jumps over",
      "--max_new_tokens", "16", "--no_stop_at_eos", "--json", "--logprobs"])
  assert rc == 0
  records = _records(capsys)
  want = Sampler(lib.ours_from_official(), spm_path).generate(
      ["the cat sat", "a quick fox jumps over"], 16, stop_at_eos=False,
      return_logprobs=True)
  assert [r["tokens"] for r in records] == want.tokens
  assert [r["text"] for r in records] == want.text
  for r, logprobs in zip(records, want.logprobs):
    np.testing.assert_allclose(r["logprobs"], logprobs, atol=1e-4)
  # A preset that does not match the checkpoint is refused with a message.
  assert _sample(["--official", path, "--prompt_tokens", "1,2",
                  "--max_new_tokens", "2"]) == 1
  assert "does not match" in capsys.readouterr().err


def _fake_workdir(workdir, model, config):
  """A workdir as the training loop writes it: config.json and
  checkpoints/<step>/{state, data} through its Checkpointer."""
  from recurrentgemma_jax.training import checkpointing

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  state = {"step": np.int32(7), "params": params,
           "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}}
  data = iter(grain.MapDataset.range(4).to_iter_dataset())
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    keep=2)
  ckpt.save(7, state, data)
  ckpt.wait()
  ckpt.close()


BLOCKS = ("recurrent", "recurrent", "attention")  # griffin, depth 3


def _tiny_workdir(workdir):
  """A workdir of `lib.tiny_model(blocks=BLOCKS)` (vocabulary 61)."""
  from recurrentgemma_jax.training import config as config_lib

  config = config_lib.base_config()
  config.model = config_lib.model_config(
      "", kind="griffin", depth=3, width=24, mlp_expanded_width=48,
      num_heads=3, lru_width=30, attention_window_size=4,
      logits_soft_cap=10.0, embeddings_scale_by_sqrt_dim=True,
      dtype="float32")
  config.data.task = "selective_copy"
  model = lib.tiny_model(blocks=BLOCKS)
  _fake_workdir(workdir, model, config)
  return model


def test_training_workdir(tmp_path, capsys):
  blocks = BLOCKS
  workdir = str(tmp_path / "run")
  model = _tiny_workdir(workdir)
  loaded, tokenizer, step = rg.load_workdir(workdir)
  assert step == 7 and tokenizer is None
  assert loaded.config.vocab_size == 61
  for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)),
                  jax.tree.leaves(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(a, b)
  rc = _sample(["--workdir", workdir, "--prompt_tokens", "5,9,17",
                "--max_new_tokens", "12", "--json"])
  assert rc == 0
  want = lib.tiny_sampler(blocks=blocks).generate([[5, 9, 17]], 12)
  assert [r["tokens"] for r in _records(capsys)] == want.tokens
  with pytest.raises(rg.ConfigError, match="not a complete checkpoint"):
    rg.load_workdir(workdir, step=3)
  assert _sample(["--workdir", workdir, "--prompt", "text"]) == 1
  assert "tokenizer" in capsys.readouterr().err


def test_stream_with_a_stop_string(tmp_path, capsys):
  # `--stream --stop=...` crashed after printing the stop string's start.
  _, _, params = lib.official_model()
  path = str(tmp_path / "ckpt")
  ocp.PyTreeCheckpointer().save(path, params)
  spm_path = lib.sentencepiece_model_path()
  sampler = Sampler(lib.ours_from_official(), spm_path)
  kw = dict(temperature=1.0, seed=5, stop_at_eos=False)
  free = sampler.generate(["the cat sat"], 24, **kw).text[0]
  stop = free.strip()[4:7]
  assert len(stop) == 3
  want = sampler.generate(["the cat sat"], 24, stop=stop, **kw).text[0]
  assert stop not in want
  rc = _sample([
      "--official", path, "--preset", "none", "--window", "8",
      "--soft_cap", "30", "--sqrt_scale", "--tokenizer", spm_path,
      "--prompt", "the cat sat", "--max_new_tokens", "24", "--stream",
      "--temperature", "1", "--seed", "5", "--no_stop_at_eos",
      f"--stop={stop}"])
  assert rc == 0
  assert capsys.readouterr().out == want + "\n"


def test_command_line_without_jax_platforms_is_quiet(tmp_path):
  """`python -m recurrentgemma_jax sample` where JAX_PLATFORMS is unset:
  no libtpu start-up errors (the `tpu` extra is installed here) and no
  runpy warning."""
  from recurrentgemma_jax import platforms  # pylint: disable=g-import-not-at-top

  if platforms.tpu_present():
    pytest.skip("this machine has a TPU")
  workdir = str(tmp_path / "run")
  _tiny_workdir(workdir)
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run(
      [sys.executable, "-m", "recurrentgemma_jax", "sample", "--workdir",
       workdir, "--prompt_tokens", "5,9,17", "--max_new_tokens", "4"],
      env=env, cwd=root, text=True, capture_output=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  want = lib.tiny_sampler(blocks=BLOCKS).generate([[5, 9, 17]], 4)
  assert result.stdout.split() == [str(t) for t in want.tokens[0]]
  for noise in ("Failed to find host bounds", "unexpected worker hostname",
                "Source Location Trace", "RuntimeWarning"):
    assert noise not in result.stderr
