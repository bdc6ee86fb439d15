"""Int8 weight-only quantization of a `Griffin` for sampling, and saved
sampling checkpoints that record it.

    qmodel = quantize_int8(model)             # a copy; `model` is unchanged
    Sampler(qmodel, tokenizer)       # or Sampler(model, quantize="int8")
    save_checkpoint(qmodel, "/tmp/rg_int8")   # records quantization "int8"
    qmodel = load_checkpoint("/tmp/rg_int8", quantization="int8")
    quantization_of(qmodel)                   # "int8" (None: float weights)

Every large matmul weight becomes int8 with one float32 scale per output
channel (`nn/quantized.py`): the attention q/k/v/output projections, the
recurrent block's x/y/output projections, both MLP projections and the tied
embedding (per-row scales of the `[V, D]` table, which serve the token
gather and the logits matmul). Norms, biases, the convolution and the
RG-LRU's small block-diagonal gates keep their dtype. The weights' bytes
drop to about half of bfloat16 (a quarter of float32).

A checkpoint folder holds `model.json` (the format, the quantization and
the model config) and `params/` (an Orbax PyTree of the parameters: int8
values and their scales when quantized). `model.json` is written last, so
a folder without it is an incomplete save.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recurrentgemma_jax import weights
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.nn import lora as lora_lib
from recurrentgemma_jax.nn import quantized
from recurrentgemma_jax.nn.embedding import Embedder
from recurrentgemma_jax.nn.linear import Dense
from recurrentgemma_jax.nn.mlp import MLPBlock

# The quantizations a model or a checkpoint can hold (None: float weights).
QUANTIZATIONS = (None, "int8")
FORMAT = "recurrentgemma_jax.sampling_checkpoint"
METADATA = "model.json"
PARAMS = "params"


def check_quantization(field: str, value: Any) -> str | None:
  """`value` if it is one of `QUANTIZATIONS`; else a ValueError naming
  `field` and the allowed values."""
  if value not in QUANTIZATIONS:
    raise ConfigError(f"{field}: {value!r} is not one of {QUANTIZATIONS}")
  return value


def quantization_of(model: nnx.Module) -> str | None:
  """"int8" if `model` holds int8-quantized layers, else None."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, (quantized.QuantizedDense,
                           quantized.QuantizedEmbedder)):
      return "int8"
  return None


def quantize_int8(model: Griffin) -> Griffin:
  """A copy of `model` with int8 weights and per-output-channel scales.

  Quantized once from the model's weights (any float dtype); the compute
  dtype stays the model's. Arrays that are not quantized are shared with
  `model`, which is unchanged.

  Raises:
    ValueError: the model is quantized already, or carries LoRA adapters
      (fold them in first with `merge_lora`).
  """
  if quantization_of(model) is not None:
    raise ValueError("the model's weights are int8-quantized already")
  adapted = lora_lib.adapted_paths(model)
  if adapted:
    raise ValueError(f"the model carries LoRA adapters ({adapted[0]}, ...): "
                     "fold them in with merge_lora before quantizing")
  out = nnx.merge(*nnx.split(model))  # new modules over the same arrays
  for path, module in list(nnx.iter_modules(out)):
    if isinstance(module, Dense):
      _replace(out, path, quantized.QuantizedDense(module))
    elif isinstance(module, Embedder):
      _replace(out, path, quantized.QuantizedEmbedder(module))
    elif isinstance(module, MLPBlock):
      quantized.quantize_mlp(module)
  return out


def _replace(root: nnx.Module, path: tuple[Any, ...], new: Any) -> None:
  parent = root
  for key in path[:-1]:
    parent = parent[key] if isinstance(key, int) else getattr(parent, key)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def dequantize(model: Griffin) -> Griffin:
  """The plain `Griffin` whose weights are `q * scale` of int8 `model`'s,
  in the model's parameter dtype (what the quantized model computes, up
  to the rounding of its products)."""
  if quantization_of(model) is None:
    raise ValueError("the model is not quantized")
  dtype = jnp.dtype(model.config.param_dtype)
  values = nnx.state(model, nnx.Param).to_pure_dict()
  for path, module in nnx.iter_modules(model):
    node = values
    for key in path:
      node = node[key]
    if isinstance(module, quantized.QuantizedDense):  # kernel [in, out]
      name, scale = "kernel", node.pop("scale")[None, :]
    elif isinstance(module, quantized.QuantizedEmbedder):  # table [V, D]
      name, scale = "input_embedding", node.pop("scale")[:, None]
    elif isinstance(module, MLPBlock) and "scale" in module.ffw_up:
      # w [2, D, F], scale [2, 1, 1, F]
      node, name = node["ffw_up"], "w"
      scale = node.pop("scale")[:, :, 0, :]
    else:
      continue
    node[name] = quantized.dequantize(node[name], scale).astype(dtype)
  plain = abstract_model(model.config)
  state = nnx.state(plain, nnx.Param)
  nnx.replace_by_pure_dict(state, values)
  nnx.update(plain, state)
  return plain


def abstract_model(config: GriffinConfig, quantize: str | None = None
                   ) -> Griffin:
  """`Griffin(config)`, int8-quantized if `quantize`, with abstract arrays
  (nothing is initialised)."""
  check_quantization("quantize", quantize)
  if quantize is None:
    return nnx.eval_shape(lambda: Griffin(config, rngs=nnx.Rngs(0)))
  return nnx.eval_shape(
      lambda: quantize_int8(Griffin(config, rngs=nnx.Rngs(0))))


# Checkpoints ------------------------------------------------------------------


def _describe(q: str | None) -> str:
  return "int8-quantized" if q == "int8" else "float (not quantized)"


def save_checkpoint(model: Griffin, path: str) -> str:
  """Saves `model` (quantized or not) to a new folder `path`; returns its
  absolute path. `model.json` records the quantization and the config.

  Raises:
    ConfigError: `path` exists (a checkpoint is never overwritten), or the
      model carries LoRA adapters (fold them in first with `merge_lora`).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path):
    raise ConfigError(f"{path} exists: save a checkpoint to a new folder")
  if lora_lib.adapted_paths(model):
    raise ConfigError("the model carries LoRA adapters: fold them in with "
                      "merge_lora before saving")
  params = nnx.state(model, nnx.Param).to_pure_dict()
  ocp.PyTreeCheckpointer().save(os.path.join(path, PARAMS),
                                jax.tree.map(np.asarray, params))
  metadata = {"format": FORMAT, "version": 1,
              "quantization": quantization_of(model),
              "config": model.config.to_dict()}
  tmp = os.path.join(path, METADATA + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=1)
  os.replace(tmp, os.path.join(path, METADATA))
  return path


def read_metadata(path: str) -> dict[str, Any]:
  """The `model.json` of checkpoint folder `path`.

  Raises:
    ConfigError: `path` is not a complete checkpoint of `save_checkpoint`.
  """
  file = os.path.join(path, METADATA)
  try:
    with open(file, encoding="utf-8") as f:
      metadata = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"{path}: no {METADATA}; not a checkpoint written by "
                      "save_checkpoint, or an incomplete one") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{file}: unreadable ({e})") from None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    raise ConfigError(f"{file}: not a {FORMAT} file")
  return metadata


def load_checkpoint(path: str, *, quantization: str | None = None
                    ) -> Griffin:
  """The model saved by `save_checkpoint` in `path`.

  Args:
    path: the checkpoint folder.
    quantization: the quantization the checkpoint must hold: None (float
      weights, e.g. bfloat16) or "int8".

  Raises:
    ConfigError: `quantization` is not an allowed value, or not the
      checkpoint's (int8 values read as float weights, or float weights
      read as int8 ones, would be silently wrong); the folder is not a
      complete checkpoint, or its parameters do not fit its config.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  check_quantization("quantization", quantization)
  path = os.path.abspath(os.path.expanduser(path))
  metadata = read_metadata(path)
  stored = metadata.get("quantization")
  if stored not in QUANTIZATIONS:
    raise ConfigError(f"{path}/{METADATA}: quantization {stored!r} is not "
                      f"one of {QUANTIZATIONS}")
  if stored != quantization:
    raise ConfigError(
        f"quantization: {path} holds {_describe(stored)} weights, not "
        f"{_describe(quantization)} ones: load it with "
        f"quantization={stored!r} (allowed values: {QUANTIZATIONS})")
  try:
    config = GriffinConfig(**metadata["config"])
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f"{path}/{METADATA}: no model config this version "
                      f"reads ({e})") from None
  model = abstract_model(config, stored)
  state = nnx.state(model, nnx.Param)
  expected = state.to_pure_dict()
  where = os.path.join(path, PARAMS)
  checkpointer = ocp.PyTreeCheckpointer()
  stored_tree = checkpointer.metadata(where)
  tree = getattr(stored_tree, "item_metadata", stored_tree).tree
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  values = weights.keyed_like(expected, checkpointer.restore(
      where, args=ocp.args.PyTreeRestore(item=tree,
                                         restore_args=restore_args)), where)

  def as_model(e, v):
    if (np.dtype(v.dtype) == np.int8) != (np.dtype(e.dtype) == np.int8):
      raise ConfigError(f"{where}: a {v.dtype} parameter where the model "
                        f"has {e.dtype}")
    return jnp.asarray(v, e.dtype)

  nnx.replace_by_pure_dict(state, jax.tree.map(as_model, expected, values))
  nnx.update(model, state)
  return model
