"""Hugging Face interop: `from_hf` / `to_hf` against transformers itself.

transformers (torch, CPU) lives in a second venv, `.venv-hf` (Python 3.11:
the only torch wheel here; `bash scripts/setup.sh --hf` builds it), and is
driven through `tests/model/hf_oracle.py` in one subprocess per direction.
Without it these parity tests skip locally and FAIL under CI (CI=true).

Known differences between transformers' RecurrentGemma and ours, handled by
the config and checked here rather than hidden:
- Window: transformers' local attention shows `attention_window_size`
  tokens, ours (and the official model) `attention_window_size + 1`, so
  `from_hf`/`to_hf` map our window to HF's minus one.
  `test_window_is_hf_window_minus_one` shows that without this the logits
  differ from the first position past the window.
- Packed documents: transformers lets attention and the convolution see
  across a document start; ours does not. Every row here is one document
  (positions 0..T-1), where the two agree.
- transformers always scales the embeddings by sqrt(width) and always
  soft-caps the logits, so "off" cannot be expressed: `to_hf` refuses
  such models and `from_hf` a config saying so (tested below). Different
  soft caps (30, 10, 3 and 2, where the cap bites) are covered.
Sequences are 20 tokens, longer than every window (4 to 8).
"""

import json
import os
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax import hf
from recurrentgemma_jax import safetensors_io
from recurrentgemma_jax.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
ORACLE = pathlib.Path(__file__).with_name("hf_oracle.py")
HF_PYTHON = os.environ.get("RG_HF_PYTHON",
                           str(ROOT / ".venv-hf" / "bin" / "python"))
BATCH, LENGTH, VOCAB = 2, 20, 64
# Tolerance for float32 logits of two implementations (seen: ~1e-6).
TOL = dict(rtol=1e-5, atol=2e-5)


def _hf_base(**changes):
  base = dict(num_hidden_layers=3, vocab_size=VOCAB, hidden_size=32,
              intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=1, attention_window_size=8,
              block_types=["recurrent", "recurrent", "attention"],
              logits_soft_cap=30.0)
  base.update(changes)
  return base


# Checkpoints written by transformers: (config, dtype, max_shard_size).
FROM_HF = {
    "griffin": (_hf_base(), "float32", None),
    "attention_first_lru48_cap2": (_hf_base(
        num_hidden_layers=4, block_types=["attention", "recurrent"],
        lru_width=48, attention_window_size=5, logits_soft_cap=2.0),
                                   "float32", None),
    "hawk": (_hf_base(num_hidden_layers=2, block_types=["recurrent"],
                      logits_soft_cap=10.0), "float32", None),
    "griffin_bf16_sharded": (_hf_base(), "bfloat16", "30KB"),
}


def _ours(**changes):
  base = dict(vocab_size=VOCAB, width=32, mlp_expanded_width=48,
              num_heads=4, block_types=("recurrent", "recurrent",
                                        "attention"),
              attention_window_size=7, logits_soft_cap=30.0,
              embeddings_scale_by_sqrt_dim=True)
  base.update(changes)
  return rg.GriffinConfig(**base)


# Our models exported with to_hf: (config, to_hf dtype, max_shard_size).
TO_HF = {
    "griffin": (_ours(), None, None),
    "mqa_cap3": (_ours(num_heads=2, block_types=("attention", "attention"),
                       attention_window_size=4, logits_soft_cap=3.0),
                 None, None),
    "bf16_sharded": (_ours(block_types=("attention", "recurrent",
                                        "recurrent"),
                           param_dtype="bfloat16"), None, "30KB"),
    "f32_saved_as_bf16": (_ours(lru_width=48), "bfloat16", None),
}


def _tokens():
  return np.random.RandomState(0).randint(0, VOCAB, (BATCH, LENGTH)
                                          ).astype(np.int32)


def _positions():
  return np.tile(np.arange(LENGTH, dtype=np.int32), (BATCH, 1))


@nnx.jit
def _forward(model, tokens, positions):
  return model(tokens, positions)


def _logits(model):
  return np.asarray(_forward(model, _tokens(), _positions()), np.float32)


def _params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _assert_same_params(a, b):
  la, lb = jax.tree.leaves_with_path(_params(a)), jax.tree.leaves_with_path(
      _params(b))
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert x.dtype == y.dtype, path
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=str(path))


def _random_model(config, seed=0):
  """A model whose every parameter (biases, norm scales too) is random
  (NumPy values: no initialiser to compile)."""
  model = nnx.eval_shape(lambda: rg.Griffin(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  rng = np.random.RandomState(seed)
  nnx.update(model, jax.tree.map(
      lambda s: jax.numpy.asarray(rng.normal(0, 0.2, s.shape), s.dtype),
      state))
  return model


def _run_oracle(jobs, tmp: pathlib.Path):
  if not os.path.exists(HF_PYTHON):
    message = (f"the transformers oracle venv is missing ({HF_PYTHON}); "
               "build it with: bash scripts/setup.sh --hf")
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  path = tmp / "jobs.json"
  path.write_text(json.dumps(jobs))
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
             OMP_NUM_THREADS="1")
  result = subprocess.run([HF_PYTHON, str(ORACLE), str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def from_transformers(tmp_path_factory):
  """name -> (checkpoint folder, transformers' float32 logits)."""
  tmp = tmp_path_factory.mktemp("from_hf")
  np.save(tmp / "tokens.npy", _tokens())
  jobs = []
  for name, (config, dtype, shard) in FROM_HF.items():
    jobs.append(dict(op="make", dir=str(tmp / name), config=config, seed=1,
                     dtype=dtype, max_shard_size=shard))
    jobs.append(dict(op="logits", dir=str(tmp / name),
                     tokens=str(tmp / "tokens.npy"),
                     out=str(tmp / f"{name}.npy")))
  _run_oracle(jobs, tmp)
  return {name: (tmp / name, np.load(tmp / f"{name}.npy"))
          for name in FROM_HF}


@pytest.fixture(scope="module")
def to_transformers(tmp_path_factory):
  """name -> (our model, exported folder, transformers' logits of it)."""
  tmp = tmp_path_factory.mktemp("to_hf")
  np.save(tmp / "tokens.npy", _tokens())
  out, jobs = {}, []
  for seed, (name, (config, dtype, shard)) in enumerate(TO_HF.items()):
    model = _random_model(config, seed)
    kwargs = {"max_shard_size": shard} if shard else {}
    hf.to_hf(model, tmp / name, dtype=dtype, **kwargs)
    jobs.append(dict(op="logits", dir=str(tmp / name),
                     tokens=str(tmp / "tokens.npy"),
                     out=str(tmp / f"{name}.npy")))
    out[name] = (model, tmp / name)
  _run_oracle(jobs, tmp)
  return {name: (*out[name], np.load(tmp / f"{name}.npy")) for name in out}


# Parity with transformers ----------------------------------------------------


@pytest.mark.parametrize("name", FROM_HF)
def test_from_hf_gives_transformers_logits(from_transformers, name):
  path, theirs = from_transformers[name]
  model = rg.from_hf(path)
  hf_config, dtype, shard = FROM_HF[name]
  assert model.config.param_dtype == dtype  # stored values, exactly
  assert model.config.attention_window_size == (
      hf_config["attention_window_size"] - 1)
  if shard:
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")
                ]) > 1
  np.testing.assert_allclose(_logits(model), theirs, **TOL)


def test_from_hf_keeps_transformers_tensors_bitwise(from_transformers,
                                                    tmp_path):
  """to_hf(from_hf(d)) writes back exactly the tensors transformers saved."""
  for name in FROM_HF:
    path, _ = from_transformers[name]
    hf.to_hf(rg.from_hf(path), tmp_path / name)
    want = safetensors_io.read(str(path))
    got = safetensors_io.read(str(tmp_path / name))
    assert sorted(want) == sorted(got)
    for key, value in want.items():
      assert got[key].dtype == value.dtype, key
      np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_from_hf_reads_a_state_dict(from_transformers):
  path, theirs = from_transformers["griffin"]
  hf_config, tensors = hf.read_hf_checkpoint(path)
  tensors["lm_head.weight"] = tensors[hf.EMBEDDING]  # as state_dict() has
  model = rg.from_hf(tensors, config=hf_config)
  np.testing.assert_allclose(_logits(model), theirs, **TOL)
  with pytest.raises(ValueError, match="untied output embeddings"):
    rg.from_hf({**tensors, "lm_head.weight": tensors[hf.EMBEDDING] + 1},
               config=hf_config)
  with pytest.raises(ConfigError, match="a state dict needs config="):
    rg.from_hf(tensors)


def test_window_is_hf_window_minus_one(from_transformers):
  """With our window set to HF's number, logits agree only up to the
  window: transformers shows `window` tokens, ours `window + 1`."""
  path, theirs = from_transformers["griffin"]
  window = FROM_HF["griffin"][0]["attention_window_size"]
  wrong = _logits(rg.from_hf(path, attention_window_size=window))
  np.testing.assert_allclose(wrong[:, :window], theirs[:, :window], **TOL)
  assert np.abs(wrong[:, window:] - theirs[:, window:]).max(
      axis=(0, 2)).min() > 1e-3


@pytest.mark.parametrize("name", TO_HF)
def test_to_hf_loads_in_transformers_with_equal_logits(to_transformers,
                                                       name):
  model, path, theirs = to_transformers[name]
  _, dtype, shard = TO_HF[name]
  if dtype:  # saved in another dtype: compare with the model as saved
    model = rg.from_hf(path, param_dtype="float32")
  if shard:
    assert os.path.isfile(path / safetensors_io.INDEX_FILE)
  np.testing.assert_allclose(_logits(model), theirs, **TOL)


# Round trips without torch ---------------------------------------------------


@pytest.mark.parametrize("name", TO_HF)
def test_round_trip_is_bitwise(tmp_path, name):
  config, dtype, shard = TO_HF[name]
  model = _random_model(config, seed=3)
  if dtype:
    model = _random_model(config.replace(param_dtype=dtype), seed=3)
  written = hf.to_hf(model, tmp_path / "ckpt",
                     **({"max_shard_size": shard} if shard else {}))
  assert written[-1] == "config.json"
  back = rg.from_hf(tmp_path / "ckpt")
  _assert_same_params(model, back)
  for field in ("width", "mlp_expanded_width", "num_heads",
                "lru_width", "block_types", "attention_window_size",
                "logits_soft_cap", "embeddings_scale_by_sqrt_dim",
                "param_dtype", "vocab_size"):
    assert getattr(back.config, field) == getattr(model.config, field), field


def test_bf16_export_of_a_float32_model_rounds_once(tmp_path):
  model = _random_model(_ours())
  hf.to_hf(model, tmp_path / "ckpt", dtype="bfloat16")
  back = rg.from_hf(tmp_path / "ckpt")
  assert back.config.param_dtype == "bfloat16"
  want = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16),
                      _params(model))
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(_params(back))):
    np.testing.assert_array_equal(x, np.asarray(y))


def test_shards_respect_max_shard_size(tmp_path):
  model = _random_model(_ours())
  written = hf.to_hf(model, tmp_path / "ckpt", max_shard_size="20KB")
  shards = [f for f in written if f.endswith(".safetensors")]
  assert len(shards) > 2 and safetensors_io.INDEX_FILE in written
  index = json.loads((tmp_path / "ckpt" / safetensors_io.INDEX_FILE
                      ).read_text())
  assert sorted(set(index["weight_map"].values())) == sorted(shards)
  for shard in shards:  # a shard exceeds the limit only to hold one tensor
    size = os.path.getsize(tmp_path / "ckpt" / shard)
    names = [n for n, f in index["weight_map"].items() if f == shard]
    assert size <= 20_000 + 4096 or len(names) == 1
  assert not [f for f in os.listdir(tmp_path / "ckpt") if f.startswith(".")]


def test_parse_size():
  assert safetensors_io.parse_size("5GB") == 5 * 10**9
  assert safetensors_io.parse_size("2GiB") == 2 * 2**30
  assert safetensors_io.parse_size(1234) == 1234
  for bad in ("5 parsecs", "-1", 0, "GB"):
    with pytest.raises(ValueError, match="max_shard_size"):
      safetensors_io.parse_size(bad)


# Refusals --------------------------------------------------------------------


@pytest.mark.parametrize("changes, field", [
    (dict(logits_soft_cap=0.0), "logits_soft_cap"),
    (dict(embeddings_scale_by_sqrt_dim=False), "embeddings_scale_by_sqrt_dim"),
    (dict(attention_window_size=None), "attention_window_size"),
    (dict(lru_num_heads=2), "lru_num_heads"),
])
def test_to_hf_refuses_what_transformers_cannot_express(tmp_path, changes,
                                                        field):
  model = nnx.eval_shape(lambda: rg.Griffin(_ours(**changes),
                                            rngs=nnx.Rngs(0)))
  with pytest.raises(ConfigError, match=f"to_hf: {field}="):
    hf.to_hf(model, tmp_path / "ckpt")
  assert not (tmp_path / "ckpt").exists()


def test_to_hf_never_mixes_two_checkpoints(tmp_path):
  first = _random_model(_ours(), seed=0)
  hf.to_hf(first, tmp_path / "ckpt", max_shard_size="20KB")
  (tmp_path / "ckpt" / "tokenizer.model").write_text("kept")
  before = {f: (tmp_path / "ckpt" / f).read_bytes()
            for f in os.listdir(tmp_path / "ckpt")}
  second = _random_model(_ours(), seed=1)
  with pytest.raises(FileExistsError, match="already holds a checkpoint"):
    hf.to_hf(second, tmp_path / "ckpt")
  assert {f: (tmp_path / "ckpt" / f).read_bytes()
          for f in os.listdir(tmp_path / "ckpt")} == before
  with pytest.raises(ConfigError, match=r"to_hf: dtype: .int8. is not one of"):
    hf.to_hf(second, tmp_path / "ckpt", dtype="int8", overwrite=True)
  hf.to_hf(second, tmp_path / "ckpt", overwrite=True)  # one file now
  assert sorted(os.listdir(tmp_path / "ckpt")) == [
      "config.json", "model.safetensors", "tokenizer.model"]
  _assert_same_params(second, rg.from_hf(tmp_path / "ckpt"))


def test_from_hf_errors_name_the_problem(tmp_path):
  ckpt = tmp_path / "ckpt"
  with pytest.raises(FileNotFoundError, match="folder not found"):
    rg.from_hf(ckpt)
  hf.to_hf(_random_model(_ours()), ckpt)
  config = json.loads((ckpt / "config.json").read_text())

  def with_config(**changes):
    (ckpt / "config.json").write_text(json.dumps({**config, **changes}))

  for changes, match in [
      (dict(model_type="gemma"), "model_type is 'gemma'"),
      (dict(num_key_value_heads=4), "num_key_value_heads=4"),
      (dict(rope_parameters={"rope_type": "default", "rope_theta": 5e5,
                             "partial_rotary_factor": 0.5}),
       "rope_theta=500000.0"),
      (dict(logits_soft_cap=0.0), "logits_soft_cap=0.0"),
      (dict(embeddings_scale_by_sqrt_dim=False),
       "embeddings_scale_by_sqrt_dim=false"),
      (dict(hidden_activation="relu"), "hidden_activation='relu'"),
      (dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
      (dict(intermediate_size=95), "intermediate_size=95"),
  ]:
    with_config(**changes)
    with pytest.raises(ConfigError, match=f"config.json: {match}"):
      rg.from_hf(ckpt)
  with_config(hidden_size=48, num_attention_heads=4)
  with pytest.raises(ValueError, match="embed_tokens.weight: shape"):
    rg.from_hf(ckpt)
  with_config(num_hidden_layers=4, block_types=["recurrent"])
  with pytest.raises(ValueError, match=(
      r"missing model\.layers\.2\.temporal_block\.conv_1d\.bias, .* and 29 "
      r"more, unexpected model\.layers\.2\.temporal_block\.k_proj")):
    rg.from_hf(ckpt)
  with_config()
  (ckpt / "model.safetensors").rename(ckpt / "elsewhere")
  with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
    rg.from_hf(ckpt)
  (ckpt / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    rg.from_hf(ckpt)


def test_a_missing_shard_is_named(tmp_path):
  written = hf.to_hf(_random_model(_ours()), tmp_path / "ckpt",
                     max_shard_size="20KB")
  (tmp_path / "ckpt" / written[1]).unlink()
  with pytest.raises(FileNotFoundError, match=f"{written[1]}: named by"):
    rg.from_hf(tmp_path / "ckpt")
