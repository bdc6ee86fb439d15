"""Int8 weight-only quantization for sampling: the round-trip bound, what
the quantized model computes, greedy agreement with bfloat16, saved
checkpoints, bad input, and ahead-of-time compilation for TPU v5e."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
import sampling_testlib as lib
from recurrentgemma_jax.nn import quantized
from recurrentgemma_jax.sampling import Sampler
from recurrentgemma_jax.sampling import decode as decode_lib
from recurrentgemma_jax.sampling import logits as logits_lib
from recurrentgemma_jax.sampling import quantize as qlib
from recurrentgemma_jax.sampling import stopping

needs_libtpu = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("libtpu"),
    reason='libtpu is not installed (pip install "jax[tpu]==0.11.2")')


def _config(**overrides) -> rg.GriffinConfig:
  kw = dict(vocab_size=256, width=64, mlp_expanded_width=192, num_heads=4,
            block_types=("recurrent", "recurrent", "attention"),
            attention_window_size=32, logits_soft_cap=30.0,
            embeddings_scale_by_sqrt_dim=True)
  return rg.GriffinConfig(**{**kw, **overrides})


def _forward(model, rows: np.ndarray) -> np.ndarray:
  seg = np.tile(np.arange(rows.shape[1], dtype=np.int32), (len(rows), 1))
  return np.asarray(model(rows, seg), np.float32)


@pytest.mark.parametrize("shape,axis,dtype", [
    ((48, 40), 0, jnp.float32),         # a Dense kernel [in, out]
    ((100, 24), 1, jnp.bfloat16),       # the embedding table [V, D]
    ((2, 24, 36), 1, jnp.float32),      # the MLP's stacked up projection
])
def test_round_trip_error_is_at_most_half_a_step(shape, axis, dtype):
  # Channels of very different magnitudes, and one zero entry.
  channel = tuple(1 if i == axis else n for i, n in enumerate(shape))
  keys = jax.random.split(jax.random.key(0))
  w = jax.random.normal(keys[0], shape) * jnp.exp(
      2 * jax.random.normal(keys[1], channel))
  w = w.at[(0,) * len(shape)].set(0.0).astype(dtype)
  q, scale = quantized.quantize(w, axis=axis)
  assert q.dtype == jnp.int8 and q.shape == w.shape
  assert scale.shape == channel
  err = jnp.abs(w.astype(jnp.float32) - quantized.dequantize(q, scale))
  # Half a quantization step per channel; w / scale (up to 127) is rounded
  # to float32 before it is rounded to an integer: 127 x 2^-23 < 2e-5 more.
  assert bool(jnp.all(err <= scale * (0.5 + 2e-5))), float(
      jnp.max(err / scale))
  # The scale is tight: each channel's largest weight is +-127 exactly.
  assert bool(jnp.all(jnp.max(jnp.abs(q.astype(jnp.int32)), axis=axis) ==
                      127))


def test_an_all_zero_channel_stays_zero():
  w = jnp.zeros((8, 3)).at[:, 1].set(jnp.arange(8.0))
  q, scale = quantized.quantize(w, axis=0)
  assert np.asarray(q[:, 0]).tolist() == [0] * 8
  assert float(scale[0, 0]) == 1.0
  deq = np.asarray(quantized.dequantize(q, scale))
  assert not deq[:, 0].any() and not deq[:, 2].any()
  np.testing.assert_allclose(deq[:, 1], np.arange(8.0), atol=7 / 127 / 2)


def test_quantized_model_computes_its_dequantized_weights():
  model = rg.Griffin(_config(), rngs=nnx.Rngs(0))
  qmodel = rg.quantize_int8(model)
  assert qlib.quantization_of(model) is None
  assert qlib.quantization_of(qmodel) == "int8"
  # Every large matmul weight is int8; the input model is unchanged.
  int8 = {"/".join(map(str, p)) for p, v in
          nnx.to_flat_state(nnx.state(qmodel, nnx.Param))
          if v[...].dtype == jnp.int8}
  assert "embedder/input_embedding" in int8
  for name in ("linear_x", "linear_y", "linear_out"):
    assert f"blocks/0/recurrent_block/{name}/kernel" in int8
  for name in ("proj_q", "proj_k", "proj_v", "proj_final"):
    assert f"blocks/2/attention_block/{name}/kernel" in int8
  assert {"blocks/1/mlp_block/ffw_up/w",
          "blocks/1/mlp_block/ffw_down/kernel"} <= int8
  assert len(int8) == 1 + 3 * 2 + 4 + 2 * 3
  assert model.embedder.input_embedding[...].dtype == jnp.float32
  rows = np.random.default_rng(0).integers(0, 256, (3, 40)).astype(np.int32)
  want = _forward(model, rows)
  got = _forward(qmodel, rows)
  # Exactly the float model on the dequantized weights (scales applied
  # after the dot, float32 rounding apart) ...
  deq = _forward(qlib.dequantize(qmodel), rows)
  np.testing.assert_allclose(got, deq, atol=2e-5 * np.abs(deq).max())
  # ... and close to the original: the quality cost of int8.
  err = np.abs(got - want).max()
  assert 0 < err < 0.02 * np.abs(want).max(), (err, np.abs(want).max())


def test_greedy_tokens_agree_with_bfloat16():
  config = _config(dtype="bfloat16", param_dtype="bfloat16")
  model = rg.Griffin(config, rngs=nnx.Rngs(1))
  prompts = [list(r) for r in
             np.random.default_rng(1).integers(0, 256, (8, 8))]
  want = Sampler(model).generate(prompts, 64)
  quant = Sampler(model, quantize="int8")
  assert qlib.quantization_of(quant.model) == "int8"
  got = quant.generate(prompts, 64)
  free = np.mean(np.array(got.tokens) == np.array(want.tokens))
  # Teacher-forced: the int8 model's argmax on the bfloat16 model's tokens
  # (one early flip cannot cascade into a whole row).
  rows = np.array([p + t for p, t in zip(prompts, want.tokens)], np.int32)
  forced = _forward(quant.model, rows).argmax(-1)[:, 7:-1]
  teacher = np.mean(forced == np.array(want.tokens))
  print(f"greedy agreement over 8 x 64 tokens: {free:.3f} free-running, "
        f"{teacher:.3f} teacher-forced")
  assert teacher >= 0.95 and free >= 0.8


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_checkpoint_round_trip(tmp_path, quantize):
  model = rg.Griffin(_config(param_dtype="bfloat16"), rngs=nnx.Rngs(2))
  if quantize:
    model = rg.quantize_int8(model)
  path = qlib.save_checkpoint(model, str(tmp_path / "ckpt"))
  with open(os.path.join(path, qlib.METADATA), encoding="utf-8") as f:
    assert json.load(f)["quantization"] == quantize
  loaded = qlib.load_checkpoint(path, quantization=quantize)
  assert qlib.quantization_of(loaded) == quantize
  saved = nnx.to_flat_state(nnx.state(model, nnx.Param))
  back = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
  assert len(back) == len(saved)
  for key, value in saved:
    assert back[key][...].dtype == value[...].dtype, key
    np.testing.assert_array_equal(np.asarray(back[key][...], np.float32),
                                  np.asarray(value[...], np.float32))
  rows = np.arange(1, 21, dtype=np.int32)[None]
  np.testing.assert_array_equal(_forward(loaded, rows), _forward(model, rows))
  # Never overwritten.
  with pytest.raises(rg.ConfigError, match="exists"):
    qlib.save_checkpoint(model, path)


def test_loading_the_other_quantization_is_an_error(tmp_path):
  model = rg.Griffin(_config(param_dtype="bfloat16"), rngs=nnx.Rngs(3))
  plain = qlib.save_checkpoint(model, str(tmp_path / "bf16"))
  int8 = qlib.save_checkpoint(rg.quantize_int8(model), str(tmp_path / "q"))
  with pytest.raises(rg.ConfigError,
                     match=r"quantization: .* holds int8-quantized weights, "
                     r"not float .*quantization='int8'"):
    qlib.load_checkpoint(int8)
  with pytest.raises(rg.ConfigError,
                     match=r"quantization: .* holds float .* not "
                     r"int8-quantized ones.*quantization=None"):
    qlib.load_checkpoint(plain, quantization="int8")
  with pytest.raises(ValueError,
                     match=r"quantization: 'int4' is not one of "
                     r"\(None, 'int8'\)"):
    qlib.load_checkpoint(int8, quantization="int4")
  with pytest.raises(rg.ConfigError, match="no model.json"):
    qlib.load_checkpoint(str(tmp_path))


def test_bad_quantize_options_are_errors():
  model = lib.tiny_model()
  with pytest.raises(ValueError,
                     match=r"quantize: 'int4' is not one of \(None, 'int8'\)"):
    Sampler(model, quantize="int4")
  with pytest.raises(ValueError, match="already"):
    rg.quantize_int8(rg.quantize_int8(model))
  adapted = rg.add_lora(nnx.clone(model), rg.LoRAConfig(rank=2),
                        rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="merge_lora"):
    rg.quantize_int8(adapted)


def _fused_computations(hlo: str) -> set[str]:
  return set(re.findall(r"fusion\(.*?calls=%?([\w.\-]+)", hlo))


def _materialised(hlo: str, shape: tuple[int, ...]) -> list[str]:
  """Instructions outside every fusion that produce a floating-point
  array of `shape` (e.g. a dequantized weight)."""
  fused = _fused_computations(hlo)
  dims = ",".join(map(str, shape))
  out, inside = [], False
  for line in hlo.splitlines():
    header = re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      inside = header.group(1) in fused
      continue
    if not inside and re.search(rf"= (bf16|f16|f32)\[{dims}\]", line):
      out.append(line.strip()[:200])
  return out


@needs_libtpu
def test_quantized_sampler_compiles_for_tpu_v5e():
  """The int8 model's prefill (the Pallas TPU scan) and decode loop compile
  for TPU v5e ahead of time, reading the int8 weights inside the matmuls:
  no dequantized copy of a weight is materialised."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  devices = topologies.get_topology_desc(platform="tpu",
                                         topology_name="v5e:2x2").devices
  mesh = jax.sharding.Mesh(np.array(devices[:1]), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  vocab, width = 1024, 256
  config = _config(vocab_size=vocab, width=width, mlp_expanded_width=768,
                   num_heads=2, attention_window_size=64, dtype="bfloat16",
                   param_dtype="bfloat16", scan_impl="pallas_tpu")
  sampler = Sampler(qlib.abstract_model(config, "int8"))
  on_tpu = lambda tree: jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      tree)
  params = on_tpu(sampler.params)
  b, length = 4, 128
  tokens = on_tpu(jax.ShapeDtypeStruct((b, length), jnp.int32))
  prefill = sampler._prefill.lower(  # pylint: disable=protected-access
      params, tokens, tokens).compile().as_text()
  assert "tpu_custom_call" in prefill  # the Mosaic scan, not a fallback
  state = on_tpu(jax.eval_shape(
      lambda p, t: decode_lib.prefill(sampler.graphdef, p, t, t), params,
      tokens))
  inputs = on_tpu(jax.eval_shape(lambda: decode_lib.DecodeInputs.create(
      64, jax.random.split(jax.random.key(0), b), stopping.StopCriteria())))
  options = decode_lib.DecodeOptions(
      capacity=64, sampling=logits_lib.SamplingMode(), sync_every=8)
  decode = sampler._decode[False].lower(  # pylint: disable=protected-access
      params, state, inputs, options).compile().as_text()
  for hlo in (prefill, decode):
    assert f"s8[{vocab},{width}]" in hlo  # the int8 table is an input
    for shape in ((vocab, width), (width, vocab), (2, width, 768),
                  (768, width), (width, width)):
      assert not _materialised(hlo, shape), _materialised(hlo, shape)


def test_command_line_quantize(tmp_path, capsys):
  from recurrentgemma_jax.cli import common  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.cli import sample as sample_cli  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  _, _, params = lib.official_model()
  path = str(tmp_path / "ckpt")
  ocp.PyTreeCheckpointer().save(path, params)
  args = ["--official", path, "--preset", "none", "--window", "8",
          "--soft_cap", "30", "--sqrt_scale", "--prompt_tokens", "5,9,17",
          "--max_new_tokens", "12", "--json"]
  assert common.call(sample_cli, args + ["--quantize", "int8",
                                         "--logprobs"]) == 0
  got = [json.loads(line) for line in capsys.readouterr().out.splitlines()
         if line.startswith("{")]
  want = Sampler(lib.ours_from_official(), quantize="int8").generate(
      [[5, 9, 17]], 12, return_logprobs=True)
  plain = Sampler(lib.ours_from_official()).generate(
      [[5, 9, 17]], 12, return_logprobs=True)
  assert [r["tokens"] for r in got] == want.tokens
  # The int8 model's log-probabilities, not the float model's.
  np.testing.assert_allclose(got[0]["logprobs"], want.logprobs[0], atol=2e-5)
  n = min(len(want.logprobs[0]), len(plain.logprobs[0]))
  assert np.abs(got[0]["logprobs"][:n] - plain.logprobs[0][:n]).max() > 1e-3
  with pytest.raises(SystemExit):
    common.call(sample_cli, args + ["--quantize", "int4"])
  assert "int8" in capsys.readouterr().err
