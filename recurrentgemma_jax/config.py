"""`GriffinConfig`: the hyper-parameters of a Griffin, Hawk or MQA model.

The fields mirror the official RecurrentGemma config (`vocab_size`, `width`,
`mlp_expanded_width`, `num_heads`, `lru_width`, `block_types`,
`attention_window_size`, `logits_soft_cap`, `embeddings_scale_by_sqrt_dim`)
and add what a training framework needs (dtypes, scan implementation, remat).
Every invalid value raises `ConfigError` naming the field and what is allowed.
Named configurations live in `presets` (`presets.get("griffin-100m")`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels

SCAN_IMPLS = pallas_kernels.IMPLS  # Defined once, with the kernel table.
# Local attention of the training forward (`nn.attention.local_attention`).
ATTENTION_IMPLS = ("auto", "xla", "pallas_gpu")
DTYPES = ("float32", "bfloat16", "float16")
# `remat` names -> the `jax.checkpoint` policy of each residual block:
# "none" is no rematerialisation, "full" (policy None) saves nothing and
# recomputes the whole block.
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
# Fields that, left None, follow another field (also under `replace`).
_FOLLOWS = {"lru_width": "width", "lru_num_heads": "num_heads"}


class ConfigError(ValueError):
  """An invalid model configuration; the message names the field."""


class BlockType(str, enum.Enum):
  """The temporal-mixing layer of a residual block."""

  RECURRENT = "recurrent"
  ATTENTION = "attention"

  @classmethod
  def parse(cls, value: Any) -> "BlockType":
    """Accepts a BlockType, its value, or an official enum / its name."""
    if isinstance(value, cls):
      return value
    name = getattr(value, "name", value)  # official TemporalBlockType enums
    if isinstance(name, str) and name.lower() in {m.value for m in cls}:
      return cls(name.lower())
    raise ConfigError(
        f"block_types: unknown block type {value!r}; allowed: "
        f"{[m.value for m in cls]}"
    )


def dtype_name(field: str, value: Any) -> str:
  """The name of dtype `value` if it is one of `DTYPES`, else a ConfigError
  naming `field`."""
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = None
  if name not in DTYPES:
    raise ConfigError(f"{field}: {value!r} is not one of {DTYPES}")
  return name


@dataclasses.dataclass(frozen=True, kw_only=True)
class GriffinConfig:
  """Hyper-parameters of a Griffin-family language model.

  Attributes:
    vocab_size: number of tokens in the vocabulary.
    width: model width D (embeddings and residual stream).
    mlp_expanded_width: hidden width of the GeGLU MLP.
    num_heads: attention query heads; must divide `width`.
    block_types: the temporal block of each residual block, in order.
    attention_window_size: local attention sees the last `window + 1` tokens;
      None means global causal attention (the paper's MQA Transformer).
    logits_soft_cap: `cap * tanh(logits / cap)` when > 0.
    embeddings_scale_by_sqrt_dim: scale embeddings by sqrt(width), rounded
      to bfloat16 as in the released checkpoints.
    lru_width: RG-LRU width; None (the default) means `width`.
    lru_num_heads: diagonal blocks of the RG-LRU gates; None (the default)
      means `num_heads`, as in the official model; must divide `lru_width`.
      Both hold the resolved value after construction, and a field left
      None keeps following under `replace` (`replace(width=...)` changes
      `lru_width` too).
    conv1d_temporal_width: taps of the causal depthwise convolution.
    dtype: compute dtype name ("float32", "bfloat16", "float16"; layers
      take `jnp.dtype(config.dtype)`).
    param_dtype: parameter storage dtype name.
    scan_impl: RG-LRU scan implementation (see `pallas_kernels.IMPLS`).
    fused_rg_lru: use the fused RG-LRU kernel when the scan impl has one.
    attention_impl: local attention without a cache (training, prefill of
      a whole prompt): "xla" (blocked, logits materialised per block),
      "pallas_gpu" (flash kernel, `pallas_kernels.gpu_local_attention`) or
      "auto" (the flash kernel on a single GPU, else "xla":
      `nn.attention.resolve_attention_impl`).
    remat: rematerialisation policy for each residual block.
  """

  vocab_size: int
  width: int
  mlp_expanded_width: int
  num_heads: int
  block_types: tuple[BlockType, ...]
  attention_window_size: int | None = 2048
  logits_soft_cap: float = 0.0
  embeddings_scale_by_sqrt_dim: bool = False
  lru_width: int | None = None
  lru_num_heads: int | None = None
  conv1d_temporal_width: int = 4
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_impl: str = "auto"
  fused_rg_lru: bool = True
  attention_impl: str = "auto"
  remat: str = "none"

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    if isinstance(self.block_types, (str, bytes)) or not isinstance(
        self.block_types, Iterable
    ):
      raise ConfigError(
          f"block_types: expected a sequence of block types, got "
          f"{self.block_types!r}"
      )
    set_("block_types", tuple(BlockType.parse(b) for b in self.block_types))
    if not self.block_types:
      raise ConfigError("block_types: at least one block is required")
    for field in ("vocab_size", "width", "mlp_expanded_width", "num_heads",
                  "conv1d_temporal_width"):
      _require_positive_int(field, getattr(self, field))
    for field in ("lru_width", "lru_num_heads"):
      if getattr(self, field) is not None:
        _require_positive_int(field, getattr(self, field))
    if self.width % self.num_heads:
      raise ConfigError(
          f"num_heads: {self.num_heads} must divide width={self.width}"
      )
    following = frozenset(k for k in _FOLLOWS if getattr(self, k) is None)
    object.__setattr__(self, "_following", following)
    for field in following:
      set_(field, getattr(self, _FOLLOWS[field]))
    if self.has_recurrence and self.lru_width % self.lru_num_heads:
      field = ("num_heads" if "lru_num_heads" in following
               else "lru_num_heads")
      raise ConfigError(
          f"{field}: {self.lru_num_heads} must divide "
          f"lru_width={self.lru_width} (set lru_num_heads to a divisor)"
      )
    if self.has_attention and self.head_dim % 2:
      raise ConfigError(
          f"num_heads: head_dim = width / num_heads = {self.head_dim} must be"
          " even for rotary embeddings"
      )
    if self.attention_window_size is not None:
      _require_positive_int("attention_window_size", self.attention_window_size)
    if not (isinstance(self.logits_soft_cap, (int, float))
            and self.logits_soft_cap >= 0):
      raise ConfigError(
          f"logits_soft_cap: must be a number >= 0, got {self.logits_soft_cap!r}"
      )
    set_("logits_soft_cap", float(self.logits_soft_cap))
    if not isinstance(self.embeddings_scale_by_sqrt_dim, bool):
      raise ConfigError("embeddings_scale_by_sqrt_dim: must be a bool")
    set_("dtype", dtype_name("dtype", self.dtype))
    set_("param_dtype", dtype_name("param_dtype", self.param_dtype))
    if self.scan_impl not in SCAN_IMPLS:
      raise ConfigError(
          f"scan_impl: {self.scan_impl!r} is not one of {SCAN_IMPLS}"
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ConfigError(f"attention_impl: {self.attention_impl!r} is not one "
                        f"of {ATTENTION_IMPLS}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(
          f"remat: {self.remat!r} is not one of {tuple(REMAT_POLICIES)}")

  # Derived quantities ------------------------------------------------------

  @property
  def num_layers(self) -> int:
    return len(self.block_types)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def has_attention(self) -> bool:
    return BlockType.ATTENTION in self.block_types

  @property
  def has_recurrence(self) -> bool:
    return BlockType.RECURRENT in self.block_types

  def replace(self, **changes) -> "GriffinConfig":
    """A copy with `changes` applied (validated again); fields left None
    keep following theirs (`lru_width` follows `width`)."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(
          f"unknown config field(s) {sorted(unknown)}; allowed: "
          f"{[f.name for f in dataclasses.fields(self)]}"
      )
    return dataclasses.replace(
        self, **{**dict.fromkeys(self._following), **changes})

  # Equal configs behave alike: a field that follows another (given as
  # None) is not equal to the same value set explicitly, since `replace`
  # treats the two differently.
  def __eq__(self, other):
    if other.__class__ is not self.__class__:
      return NotImplemented
    return self.to_dict() == other.to_dict()

  def __hash__(self):
    return hash(tuple((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in sorted(self.to_dict().items())))

  def to_dict(self) -> dict[str, Any]:
    """The fields as given: None where a field follows another, so that
    `GriffinConfig(**config.to_dict())` rebuilds `config`."""
    out = dataclasses.asdict(self)
    out["block_types"] = [b.value for b in self.block_types]
    out.update(dict.fromkeys(self._following))
    return out


def check_token_ids(tokens: Any, vocab_size: int, *,
                    name: str = "tokens") -> None:
  """Raises ValueError unless every id in `tokens` is an integer in
  `[0, vocab_size)`.

  For concrete values (lists, NumPy arrays, eager jax arrays): eager model
  calls and the sampler check their ids with it, and a data pipeline should
  check each batch with it (a few microseconds per batch). Inside
  `jit` the ids cannot be checked, and a bad id gives a silently wrong
  answer: an id >= vocab_size embeds as NaN (NaN logits), a negative id
  wraps around (-1 reads the row of vocab_size - 1).

  Args:
    tokens: token ids of any shape.
    vocab_size: the model's (or the data's) vocabulary size.
    name: what the ids are, for the message.
  """
  ids = np.asarray(tokens)
  if ids.size == 0:
    return
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name}: token ids must be integers, got dtype "
                     f"{ids.dtype} (e.g. {ids.reshape(-1)[0].item()!r})")
  bad = (ids < 0) | (ids >= vocab_size)
  if bad.any():
    where = np.argwhere(bad)[0]
    value = ids[tuple(where)]
    raise ValueError(
        f"{name}: token id {value} at index {tuple(int(i) for i in where)} "
        f"is outside the vocabulary [0, {vocab_size}) ({int(bad.sum())} bad "
        "ids)")


def _require_positive_int(field: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{field}: must be a positive integer, got {value!r}")


def griffin_pattern(depth: int) -> tuple[BlockType, ...]:
  """(recurrent, recurrent, attention) repeated, truncated to `depth`."""
  cycle = (BlockType.RECURRENT, BlockType.RECURRENT, BlockType.ATTENTION)
  return tuple(cycle[i % 3] for i in range(depth))


def block_pattern(kind: str, depth: int) -> Sequence[BlockType]:
  """Block types of a `griffin`, `hawk` or `mqa` model of `depth` blocks."""
  if kind == "griffin":
    return griffin_pattern(depth)
  if kind == "hawk":
    return (BlockType.RECURRENT,) * depth
  if kind == "mqa":
    return (BlockType.ATTENTION,) * depth
  raise ConfigError(f"model kind {kind!r} is not one of griffin, hawk, mqa")
