"""Import and export of the official RecurrentGemma parameter tree.

The official Flax Linen model (and the released Kaggle checkpoints) store
parameters as nested dicts with top-level keys `embedder`, `blocks.{i}` (a
literal dotted key) and `final_norm`, kernels `[in, out]`. Our NNX modules use
the same names below the block level, so conversion only renames blocks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from recurrentgemma_jax import presets
from recurrentgemma_jax import weights
from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.nn import quantized

_UNSET = object()


def config_from_official(
    params: Mapping[str, Any],
    *,
    attention_window_size: int | None,
    logits_soft_cap: float,
    embeddings_scale_by_sqrt_dim: bool,
    **overrides,
) -> GriffinConfig:
  """Infers a `GriffinConfig` from the shapes of an official parameter tree."""
  params = params.get("params", params)
  vocab_size, width = np.shape(params["embedder"]["input_embedding"])
  block_types, num_heads, lru_width, lru_heads = [], None, None, None
  i = 0
  while f"blocks.{i}" in params:
    block = params[f"blocks.{i}"]
    if "recurrent_block" in block:
      block_types.append(BlockType.RECURRENT)
      lru_heads, head, _ = np.shape(block["recurrent_block"]["rg_lru"]
                                    ["a_gate"]["w"])
      lru_width = lru_heads * head
    elif "attention_block" in block:
      block_types.append(BlockType.ATTENTION)
      head_dim = np.shape(block["attention_block"]["proj_k"]["kernel"])[1]
      num_heads = width // head_dim
    else:
      raise ConfigError(
          f"blocks.{i}: neither recurrent_block nor attention_block in "
          f"{sorted(block)}"
      )
    i += 1
  if not block_types:
    raise ConfigError("params: no `blocks.{i}` entries found")
  if num_heads is None:  # Hawk: no attention block reveals the head count.
    num_heads = lru_heads
  mlp_width = np.shape(params["blocks.0"]["mlp_block"]["ffw_up"]["w"])[-1]
  return GriffinConfig(
      vocab_size=int(vocab_size),
      width=int(width),
      mlp_expanded_width=int(mlp_width),
      num_heads=int(num_heads),
      lru_width=None if lru_width is None else int(lru_width),
      lru_num_heads=(
          None if lru_heads in (None, num_heads) else int(lru_heads)
      ),
      block_types=tuple(block_types),
      attention_window_size=attention_window_size,
      logits_soft_cap=logits_soft_cap,
      embeddings_scale_by_sqrt_dim=embeddings_scale_by_sqrt_dim,
      **overrides,
  )


def _to_ours(params: Mapping[str, Any], num_blocks: int) -> dict[str, Any]:
  tree = {k: v for k, v in params.items() if not k.startswith("blocks.")}
  tree["blocks"] = {i: params[f"blocks.{i}"] for i in range(num_blocks)}
  return tree


def from_official(
    params: Mapping[str, Any],
    *,
    attention_window_size: int | None,
    logits_soft_cap: float,
    embeddings_scale_by_sqrt_dim: bool,
    **config_overrides,
) -> Griffin:
  """Our `Griffin` holding the weights of an official parameter tree.

  Args:
    params: `Griffin(...).init(...)["params"]` of the official package, or a
      restored released checkpoint (a `{"params": ...}` wrapper is accepted).
    attention_window_size, logits_soft_cap, embeddings_scale_by_sqrt_dim: the
      hyper-parameters that shapes do not reveal.
    **config_overrides: other `GriffinConfig` fields (dtype, scan_impl, ...).

  Returns:
    A `Griffin` whose parameters equal `params` (cast to `param_dtype`).
  """
  params = params.get("params", params)
  config = config_from_official(
      params,
      attention_window_size=attention_window_size,
      logits_soft_cap=logits_soft_cap,
      embeddings_scale_by_sqrt_dim=embeddings_scale_by_sqrt_dim,
      **config_overrides,
  )
  return weights.griffin_from_params(config,
                                     _to_ours(params, config.num_layers))


def to_official(model: Griffin) -> dict[str, Any]:
  """The official parameter tree of `model` (inverse of `from_official`)."""
  if any(isinstance(m, (quantized.QuantizedDense, quantized.QuantizedEmbedder))
         for _, m in nnx.iter_modules(model)):
    raise ValueError("to_official: the model has int8 weights, which the "
                     "official model cannot read; export the float model "
                     "(before rg.quantize_int8)")
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tree = {k: v for k, v in pure.items() if k != "blocks"}
  for i, block in pure["blocks"].items():
    tree[f"blocks.{i}"] = block
  return _plain(tree)


def load_official_checkpoint(
    path: str | os.PathLike,
    preset: str | None = "recurrentgemma-2b",
    *,
    attention_window_size: Any = _UNSET,
    logits_soft_cap: Any = _UNSET,
    embeddings_scale_by_sqrt_dim: Any = _UNSET,
    **config_overrides,
) -> Griffin:
  """Restores a released RecurrentGemma Orbax checkpoint directory.

  Args:
    path: the checkpoint directory (the Kaggle Flax weights' `2b` or `9b`
      folder, holding an Orbax PyTree).
    preset: the preset whose window, soft cap and embedding scaling apply;
      explicit keyword arguments take precedence.
    **config_overrides: other `GriffinConfig` fields (dtype, scan_impl, ...).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  base = presets.get(preset) if preset is not None else None
  hypers = {}
  for name, value in (
      ("attention_window_size", attention_window_size),
      ("logits_soft_cap", logits_soft_cap),
      ("embeddings_scale_by_sqrt_dim", embeddings_scale_by_sqrt_dim),
  ):
    if value is _UNSET:
      if base is None:
        raise ConfigError(f"{name}: give it, or a preset to take it from")
      value = getattr(base, name)
    hypers[name] = value
  checkpointer = ocp.PyTreeCheckpointer()
  # Restore onto the host as NumPy: no sharding metadata is needed, and the
  # model's own sharding rules place the weights afterwards.
  metadata = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata
  )
  params = checkpointer.restore(path, restore_args=restore_args)
  model = from_official(params, **hypers, **config_overrides)
  if base is not None:
    _check_matches_preset(model.config, base, preset)
  return model


def _check_matches_preset(config, base, preset: str) -> None:
  for field in ("width", "mlp_expanded_width", "num_heads", "block_types"):
    if getattr(config, field) != getattr(base, field):
      raise ConfigError(
          f"checkpoint does not match preset {preset!r}: {field} is "
          f"{getattr(config, field)!r}, the preset has {getattr(base, field)!r}"
      )


def _plain(tree):
  """Nested dicts with string keys and array leaves."""
  if isinstance(tree, Mapping):
    return {str(k): _plain(v) for k, v in tree.items()}
  return tree
