"""Import and export of Hugging Face `RecurrentGemmaForCausalLM` checkpoints.

    model = rg.from_hf("/ckpts/rg-2b-hf")  # config.json + *.safetensors
    rg.to_hf(model, "/tmp/exported")   # transformers' from_pretrained loads it

Both directions are exact: parameters round-trip bit for bit, and the model
gives transformers' logits. The conventions that differ from ours:
- Linear weights are stored `[out, in]` (ours `[in, out]`); the GeGLU up
  projection is two Linears (`gate_proj` = our `ffw_up.w[0]`, the GELU
  branch; `up_proj` = `w[1]`), so `intermediate_size` is twice our
  `mlp_expanded_width`.
- The convolution is a depthwise `nn.Conv1d`, weight `[E, 1, W]` (ours
  `[W, E]`); tap `W-1` multiplies the current token in both.
- transformers' local attention sees `attention_window_size` tokens where
  ours sees `attention_window_size + 1`: our window is HF's minus one.
  (The released checkpoints were trained by the official model with window
  2048, i.e. 2049 tokens; pass `attention_window_size=2048` to `from_hf` to
  get that behaviour instead of transformers'.)
- transformers always scales the embeddings by sqrt(width) (rounded to
  bfloat16, as ours) and always soft-caps the logits: a model without
  either cannot be exported, and is refused.
- The embedding is tied: only `model.embed_tokens.weight` is stored.
- The RG-LRU gates use `num_attention_heads` blocks, attention is
  multi-query (`num_key_value_heads = 1`), RoPE on half of each head with
  base 10000.
transformers also lets attention and the convolution see across packed
documents; ours does not, so the two agree on rows holding one document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recurrentgemma_jax import safetensors_io
from recurrentgemma_jax import weights
from recurrentgemma_jax import config as config_lib
from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.nn.attention import MAX_WAVELENGTH

CONFIG_FILE = "config.json"
MODEL_TYPE = "recurrent_gemma"
ARCHITECTURE = "RecurrentGemmaForCausalLM"
ACTIVATION = "gelu_pytorch_tanh"
RMS_NORM_EPS = 1e-6
ROTARY_FRACTION = 0.5
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
_HF_BLOCK = {"recurrent": BlockType.RECURRENT, "attention": BlockType.ATTENTION}
# transformers' `RecurrentGemmaConfig` defaults, for keys a config.json
# leaves out.
_HF_DEFAULTS = {
    "num_hidden_layers": 26, "vocab_size": 256000, "hidden_size": 2560,
    "intermediate_size": 3 * 2560, "num_attention_heads": 10,
    "lru_width": None, "attention_window_size": 2048, "conv1d_width": 4,
    "logits_soft_cap": 30.0, "rms_norm_eps": RMS_NORM_EPS,
    "hidden_activation": ACTIVATION,
    "block_types": ["recurrent", "recurrent", "attention"],
    "num_key_value_heads": None, "attention_bias": False,
    "tie_word_embeddings": True,
}
_FLOAT_DTYPES = config_lib.DTYPES  # the dtypes a checkpoint may store


# Configs -------------------------------------------------------------------


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> GriffinConfig:
  """The `GriffinConfig` of a transformers RecurrentGemma `config.json`.

  Args:
    hf_config: the parsed `config.json` (or `RecurrentGemmaConfig.to_dict()`).
    **overrides: other `GriffinConfig` fields (dtype, param_dtype, scan_impl,
      ...), or ones to change (e.g. attention_window_size).

  Raises:
    ConfigError: naming the key whose value our model cannot reproduce.
  """
  if not isinstance(hf_config, Mapping):
    raise ConfigError(f"config.json: expected a JSON object, got "
                      f"{type(hf_config).__name__}")
  model_type = hf_config.get("model_type")
  if model_type != MODEL_TYPE:
    raise ConfigError(
        f"config.json: model_type is {model_type!r}, not {MODEL_TYPE!r}: not "
        f"a {ARCHITECTURE} checkpoint")

  def get(key):
    value = hf_config.get(key)
    return _HF_DEFAULTS.get(key) if value is None else value

  def require(key, ok: bool, allowed: str):
    if not ok:
      raise ConfigError(f"config.json: {key}={get(key)!r} is not supported "
                        f"(allowed: {allowed})")

  layers = get("num_hidden_layers")
  pattern = list(get("block_types"))
  require("block_types", bool(pattern) and all(b in _HF_BLOCK for b in pattern),
          "a list of 'recurrent' and 'attention'")
  # transformers repeats the pattern this way (and fails past 100 cycles).
  per_layer = (pattern * 100)[:layers]
  require("num_hidden_layers",
          isinstance(layers, int) and 0 < layers == len(per_layer),
          "a positive integer within 100 repeats of block_types")
  block_types = tuple(_HF_BLOCK[b] for b in per_layer)
  has_attention = BlockType.ATTENTION in block_types
  heads = get("num_attention_heads")
  kv_heads = hf_config.get("num_key_value_heads") or heads
  if has_attention:
    require("num_key_value_heads", kv_heads == 1,
            "1: the model is multi-query")
    require("attention_bias", get("attention_bias") is False, "false")
  window = get("attention_window_size")
  require("attention_window_size", isinstance(window, int) and window >= 2,
          "an integer >= 2 (transformers' window; ours is one less)")
  intermediate = get("intermediate_size")
  require("intermediate_size",
          isinstance(intermediate, int) and intermediate % 2 == 0,
          "an even integer (gate_proj and up_proj each take half)")
  cap = get("logits_soft_cap")
  require("logits_soft_cap", isinstance(cap, (int, float)) and cap > 0,
          "a number > 0: transformers always soft-caps the logits")
  if hf_config.get("embeddings_scale_by_sqrt_dim") is False:
    raise ConfigError(
        "config.json: embeddings_scale_by_sqrt_dim=false is not supported "
        "(allowed: true): transformers always scales the embeddings")
  require("rms_norm_eps", get("rms_norm_eps") == RMS_NORM_EPS,
          str(RMS_NORM_EPS))
  require("hidden_activation", get("hidden_activation") == ACTIVATION,
          repr(ACTIVATION))
  require("tie_word_embeddings", get("tie_word_embeddings") is True,
          "true: input and output embeddings are one table")
  rope = dict(hf_config.get("rope_parameters") or {})
  for key, want in (("rope_type", "default"), ("rope_theta", MAX_WAVELENGTH),
                    ("partial_rotary_factor", ROTARY_FRACTION)):
    # transformers 4.x keeps rope_theta and partial_rotary_factor at the
    # top level.
    value = rope.get(key, hf_config.get(key, want))
    if value != want:
      raise ConfigError(f"config.json: {key}={value!r} is not supported "
                        f"(allowed: {want!r})")
  fields = dict(
      vocab_size=get("vocab_size"),
      width=get("hidden_size"),
      mlp_expanded_width=intermediate // 2,
      num_heads=heads,
      lru_width=get("lru_width") or get("hidden_size"),
      block_types=block_types,
      attention_window_size=window - 1,
      logits_soft_cap=float(cap),
      embeddings_scale_by_sqrt_dim=True,
      conv1d_temporal_width=get("conv1d_width"),
  )
  fields.update(overrides)
  return GriffinConfig(**fields)


def config_to_hf(config: GriffinConfig, *, dtype: str = "float32"
                 ) -> dict[str, Any]:
  """The transformers `config.json` of `config` (inverse of `config_from_hf`).

  Raises:
    ConfigError: `config` has something transformers' RecurrentGemma cannot
      express (named in the message).
  """

  def refuse(field, value, allowed):
    raise ConfigError(f"to_hf: {field}={value!r} cannot be expressed in "
                      f"transformers' RecurrentGemma (allowed: {allowed})")

  if not config.embeddings_scale_by_sqrt_dim:
    refuse("embeddings_scale_by_sqrt_dim", False,
           "True: transformers always scales the embeddings")
  if config.logits_soft_cap <= 0:
    refuse("logits_soft_cap", config.logits_soft_cap,
           "> 0: transformers always soft-caps the logits")
  if config.lru_num_heads != config.num_heads:
    refuse("lru_num_heads", config.lru_num_heads,
           f"None or num_heads={config.num_heads}: transformers' RG-LRU uses "
           "num_attention_heads gate blocks")
  window = config.attention_window_size
  if window is None:
    if config.has_attention:
      refuse("attention_window_size", None,
             "an integer: transformers' attention is always local")
    window = 2047  # unused without attention blocks
  if dtype not in _FLOAT_DTYPES:
    refuse("dtype", dtype, _FLOAT_DTYPES)
  types = [b.value for b in config.block_types]
  return {
      "architectures": [ARCHITECTURE],
      "model_type": MODEL_TYPE,
      "vocab_size": config.vocab_size,
      "hidden_size": config.width,
      "intermediate_size": 2 * config.mlp_expanded_width,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": 1,
      "head_dim": config.head_dim,
      "lru_width": config.lru_width,
      "attention_window_size": window + 1,
      "conv1d_width": config.conv1d_temporal_width,
      "logits_soft_cap": config.logits_soft_cap,
      "rms_norm_eps": RMS_NORM_EPS,
      "hidden_activation": ACTIVATION,
      "block_types": types,
      "attention_bias": False,
      "tie_word_embeddings": True,
      "rope_parameters": {"rope_type": "default",
                          "rope_theta": float(MAX_WAVELENGTH),
                          "partial_rotary_factor": ROTARY_FRACTION},
      # transformers 4.x reads these two at the top level.
      "rope_theta": float(MAX_WAVELENGTH),
      "partial_rotary_factor": ROTARY_FRACTION,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "bos_token_id": 2,
      "dtype": dtype,
      "torch_dtype": dtype,
  }


# Parameter layout ----------------------------------------------------------


def _t(x):
  return x.T


def _block_to_hf(block: Mapping[str, Any]) -> dict[str, Any]:
  """One residual block's params -> HF tensors (suffixes of
  `model.layers.{i}.`), as views."""
  mlp = block["mlp_block"]
  out = {
      "temporal_pre_norm.weight": block["temporal_pre_norm"]["scale"],
      "channel_pre_norm.weight": block["channel_pre_norm"]["scale"],
      "mlp_block.gate_proj.weight": _t(mlp["ffw_up"]["w"][0]),
      "mlp_block.gate_proj.bias": mlp["ffw_up"]["b"][0, 0, 0],
      "mlp_block.up_proj.weight": _t(mlp["ffw_up"]["w"][1]),
      "mlp_block.up_proj.bias": mlp["ffw_up"]["b"][1, 0, 0],
      "mlp_block.down_proj.weight": _t(mlp["ffw_down"]["kernel"]),
      "mlp_block.down_proj.bias": mlp["ffw_down"]["bias"],
  }
  t = "temporal_block."
  if "recurrent_block" in block:
    rec = block["recurrent_block"]
    for name in ("linear_x", "linear_y", "linear_out"):
      out[f"{t}{name}.weight"] = _t(rec[name]["kernel"])
      out[f"{t}{name}.bias"] = rec[name]["bias"]
    out[f"{t}conv_1d.weight"] = _t(rec["conv_1d"]["w"])[:, None, :]
    out[f"{t}conv_1d.bias"] = rec["conv_1d"]["b"]
    lru = rec["rg_lru"]
    out[f"{t}rg_lru.recurrent_param"] = lru["a_param"]
    for ours, theirs in (("input_gate", "input_gate"),
                         ("a_gate", "recurrent_gate")):
      out[f"{t}rg_lru.{theirs}_weight"] = lru[ours]["w"]
      out[f"{t}rg_lru.{theirs}_bias"] = lru[ours]["b"]
  else:
    att = block["attention_block"]
    for ours, theirs in (("proj_q", "q_proj"), ("proj_k", "k_proj"),
                         ("proj_v", "v_proj"), ("proj_final", "o_proj")):
      out[f"{t}{theirs}.weight"] = _t(att[ours]["kernel"])
    out[f"{t}o_proj.bias"] = att["proj_final"]["bias"]
  return out


def _block_from_hf(take, block_type: BlockType) -> dict[str, Any]:
  """Inverse of `_block_to_hf`; `take(suffix)` returns an HF tensor."""
  out = {
      "temporal_pre_norm": {"scale": take("temporal_pre_norm.weight")},
      "channel_pre_norm": {"scale": take("channel_pre_norm.weight")},
      "mlp_block": {
          "ffw_up": {
              "w": np.stack([_t(take("mlp_block.gate_proj.weight")),
                             _t(take("mlp_block.up_proj.weight"))]),
              "b": np.stack([take("mlp_block.gate_proj.bias"),
                             take("mlp_block.up_proj.bias")])[:, None, None],
          },
          "ffw_down": {"kernel": _t(take("mlp_block.down_proj.weight")),
                       "bias": take("mlp_block.down_proj.bias")},
      },
  }
  t = "temporal_block."
  if block_type == BlockType.RECURRENT:
    rec = {name: {"kernel": _t(take(f"{t}{name}.weight")),
                  "bias": take(f"{t}{name}.bias")}
           for name in ("linear_x", "linear_y", "linear_out")}
    rec["conv_1d"] = {"w": _t(take(f"{t}conv_1d.weight")[:, 0, :]),
                      "b": take(f"{t}conv_1d.bias")}
    rec["rg_lru"] = {"a_param": take(f"{t}rg_lru.recurrent_param")}
    for ours, theirs in (("input_gate", "input_gate"),
                         ("a_gate", "recurrent_gate")):
      rec["rg_lru"][ours] = {"w": take(f"{t}rg_lru.{theirs}_weight"),
                             "b": take(f"{t}rg_lru.{theirs}_bias")}
    out["recurrent_block"] = rec
  else:
    att = {ours: {"kernel": _t(take(f"{t}{theirs}.weight"))}
           for ours, theirs in (("proj_q", "q_proj"), ("proj_k", "k_proj"),
                                ("proj_v", "v_proj"), ("proj_final", "o_proj"))}
    att["proj_final"]["bias"] = take(f"{t}o_proj.bias")
    out["attention_block"] = att
  return out


def hf_tensors(params: Mapping[str, Any]) -> dict[str, Any]:
  """Our parameter tree (`nnx.to_pure_dict` of a `Griffin`'s params) as
  transformers' state dict (views of `params`' arrays)."""
  out = {EMBEDDING: params["embedder"]["input_embedding"],
         "model.final_norm.weight": params["final_norm"]["scale"]}
  for i in sorted(params["blocks"], key=int):
    for suffix, value in _block_to_hf(params["blocks"][i]).items():
      out[f"model.layers.{i}.{suffix}"] = value
  return out


def _abstract_params(config: GriffinConfig) -> dict[str, Any]:
  """`Griffin(config)`'s parameter tree as ShapeDtypeStructs."""
  abstract = nnx.eval_shape(lambda: Griffin(config, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def _expected_shapes(config: GriffinConfig) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> shape for `config`, without allocating weights."""
  params = jax.tree.map(
      lambda s: np.broadcast_to(np.zeros((), np.int8), s.shape),
      _abstract_params(config))
  return {k: tuple(v.shape) for k, v in hf_tensors(params).items()}


def params_from_hf(tensors: Mapping[str, Any], config: GriffinConfig
                   ) -> dict[str, Any]:
  """transformers' state dict -> our parameter tree (NumPy, stored dtype).

  Raises:
    ValueError: a tensor is missing, unexpected, of the wrong shape or not
      floating point; or an untied `lm_head.weight`.
  """
  expected = _expected_shapes(config)
  tensors = dict(tensors)
  if LM_HEAD in tensors:
    head = tensors.pop(LM_HEAD)
    if EMBEDDING not in tensors or not np.array_equal(
        np.asarray(head), np.asarray(tensors[EMBEDDING])):
      raise ValueError(f"{LM_HEAD} differs from {EMBEDDING}: untied output "
                       "embeddings are not supported")
  missing = sorted(set(expected) - set(tensors))
  extra = sorted(set(tensors) - set(expected))
  if missing or extra:
    raise ValueError(
        f"checkpoint tensors do not match the config: missing "
        f"{_first(missing)}, unexpected {_first(extra)}")
  for name, shape in expected.items():
    value = np.asarray(tensors[name])
    if tuple(value.shape) != shape:
      raise ValueError(f"{name}: shape {tuple(value.shape)} does not match "
                       f"the config's {shape}")
    if value.dtype.name not in _FLOAT_DTYPES:
      raise ValueError(f"{name}: dtype {value.dtype.name} is not one of "
                       f"{_FLOAT_DTYPES}")
    tensors[name] = value

  def block(i):
    return _block_from_hf(lambda s: tensors[f"model.layers.{i}.{s}"],
                          config.block_types[i])

  return {
      "embedder": {"input_embedding": tensors[EMBEDDING]},
      "final_norm": {"scale": tensors["model.final_norm.weight"]},
      "blocks": {i: block(i) for i in range(config.num_layers)},
  }


def _first(names: list[str], n: int = 5) -> str:
  if not names:
    return "none"
  more = f" and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


# Public API ----------------------------------------------------------------


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  """The `config.json` of a checkpoint folder, as a dict.

  Raises:
    FileNotFoundError: the folder or its config.json is missing.
    ConfigError: config.json is not JSON.
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Hugging Face checkpoint folder not found: "
                            f"{path}")
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a Hugging Face "
                            "checkpoint folder)")
  try:
    with open(config_path) as f:
      return json.load(f)
  except ValueError as e:
    raise ConfigError(f"{config_path}: not valid JSON ({e})") from None


def read_hf_checkpoint(path: str | os.PathLike
                       ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """`(config.json as a dict, tensors by name)` of a checkpoint folder.

  Raises:
    FileNotFoundError: the folder, its config.json or its weights are
      missing.
    ConfigError: config.json is not JSON.
  """
  hf_config = read_hf_config(path)
  return hf_config, safetensors_io.read(
      os.path.abspath(os.path.expanduser(os.fspath(path))))


def stored_dtype(tensors: Any) -> str:
  """The checkpoint's float dtype when all tensors share one, else float32.

  `tensors`: a tree whose leaves have a `dtype` (arrays, or the array
  metadata of an Orbax checkpoint).
  """
  dtype = lambda v: v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
  names = {np.dtype(dtype(v)).name for v in jax.tree.leaves(tensors)}
  return names.pop() if len(names) == 1 and names <= set(_FLOAT_DTYPES) else (
      "float32")


def from_hf(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    *,
    config: GriffinConfig | Mapping[str, Any] | None = None,
    **config_overrides,
) -> Griffin:
  """Our `Griffin` holding a transformers `RecurrentGemmaForCausalLM`
  checkpoint.

  Args:
    path_or_state_dict: a checkpoint folder (`config.json` plus
      `model.safetensors`, or shards with `model.safetensors.index.json`),
      or a state dict (name -> array, e.g. from `safetensors`).
    config: the model config: a `GriffinConfig`, or a transformers config
      dict; by default the folder's `config.json` (a state dict needs one).
    **config_overrides: other `GriffinConfig` fields (dtype, scan_impl,
      remat, ...). `param_dtype` defaults to the checkpoint's dtype
      (bfloat16 or float32), so the parameters are its values exactly.

  Returns:
    A `Griffin` whose logits equal transformers' on rows holding one
    document each (see the module docstring for the window convention).

  Raises:
    FileNotFoundError: a missing folder, config.json or weights file.
    ConfigError: a config that our model cannot reproduce.
    ValueError: tensors that do not match the config.
  """
  if isinstance(path_or_state_dict, Mapping):
    tensors = dict(path_or_state_dict)
    if config is None:
      raise ConfigError("from_hf: a state dict needs config= (a "
                        "GriffinConfig or the checkpoint's config.json dict)")
  else:
    hf_config, tensors = read_hf_checkpoint(path_or_state_dict)
    config = hf_config if config is None else config
  if isinstance(config, GriffinConfig):
    griffin = config.replace(**config_overrides) if config_overrides else (
        config)
  else:
    config_overrides.setdefault("param_dtype", stored_dtype(tensors))
    griffin = config_from_hf(config, **config_overrides)
  return weights.griffin_from_params(griffin, params_from_hf(tensors, griffin))


def to_hf(
    model: Griffin,
    out_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> list[str]:
  """Writes `model` as a transformers `RecurrentGemmaForCausalLM` checkpoint.

  `transformers.RecurrentGemmaForCausalLM.from_pretrained(out_dir)` loads
  it; `from_hf(out_dir)` gives `model`'s parameters back bit for bit.

  Args:
    model: the model (fully addressable arrays: one process).
    out_dir: the folder to write (created if missing). Other files in it
      (e.g. a tokenizer) are kept.
    dtype: storage dtype ("float32", "bfloat16", "float16"); default the
      model's `param_dtype`.
    max_shard_size: bytes per safetensors file (int, or e.g. "5GB",
      "500MiB"); larger checkpoints are sharded with an index.
    overwrite: replace a checkpoint already in `out_dir` (otherwise
      FileExistsError).

  Returns:
    The file names written.

  Raises:
    ConfigError: the model has something transformers cannot express (a
      global-attention or un-capped model, ...), before anything is written.
  """
  config = model.config
  dtype = config.param_dtype if dtype is None else config_lib.dtype_name("to_hf: dtype", dtype)
  hf_config = config_to_hf(config, dtype=dtype)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]}
  extra = paths(params) - paths(_abstract_params(config))
  if extra:
    raise ConfigError(
        "to_hf: the model has parameters beyond Griffin's "
        f"({_first(sorted(extra))}): merge adapters into the base weights "
        "first")
  # Host copies in the stored dtype; the HF layout is views of them.
  tensors = hf_tensors(jax.tree.map(
      lambda v: np.asarray(jax.device_get(v)).astype(jnp.dtype(dtype),
                                                   copy=False),
      params))
  return safetensors_io.write(
      os.path.abspath(os.path.expanduser(os.fspath(out_dir))),
      dict(sorted(tensors.items())), max_shard_size=max_shard_size,
      extra_files={CONFIG_FILE: json.dumps(hf_config, indent=2) + "\n"},
      overwrite=overwrite)


