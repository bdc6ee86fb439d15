"""The experiment config schema shared by every experiment file, and its
validation.

An experiment file (`experiments/*.py`) defines `get_config(arg)` returning
`base_config()` with its own values and a `data` section for its task (the
recipes several files share, and the parsing of `arg`, are in
`experiments/common.py`). The config is locked: setting a field that does
not exist is an error, and ml_collections rejects values of the wrong type.

Common fields (same names in every experiment):
  total_steps, batch_size (global, in sequences), seq_len, learning_rate,
  warmup_steps, eval_every, checkpoint_every, keep_checkpoints, seed,
  model (a preset name plus overrides), mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from recurrentgemma_jax import presets
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.config import block_pattern
from recurrentgemma_jax.nn import lora as lora_lib

# The `model` section's fields that say how the model computes, not what
# it is: every model built from a section (fresh or from released weights)
# takes them from it.
COMPUTE_FIELDS = ("dtype", "param_dtype", "scan_impl", "fused_rg_lru",
                  "attention_impl", "remat")


def _model_overrides() -> dict[str, type]:
  """Every GriffinConfig field but the compute fields and `block_types`
  (set by `kind` + `depth`), with its type (`int | None` -> int: a section
  field holds None when unset)."""
  hints = typing.get_type_hints(GriffinConfig)
  out = {}
  for field in dataclasses.fields(GriffinConfig):
    if field.name in ("block_types", *COMPUTE_FIELDS):
      continue
    types = [t for t in typing.get_args(hints[field.name])
             if t is not type(None)]
    out[field.name] = types[0] if types else hints[field.name]
  return out


# GriffinConfig fields an experiment may override, with their types.
# `attention_window_size = 0` means global attention (None in GriffinConfig).
MODEL_OVERRIDES: dict[str, type] = _model_overrides()


def model_config(preset: str = "", **values) -> ml_collections.ConfigDict:
  """The `model` section: a preset name, `kind` + `depth`, and overrides.

  Args:
    preset: a name from `recurrentgemma_jax.PRESETS`, or "" to give every
      size field explicitly.
    **values: any of `MODEL_OVERRIDES`, `kind` ("griffin", "hawk", "mqa")
      and `depth` (these two set `block_types`), and the compute fields
      dtype, param_dtype, scan_impl, fused_rg_lru, attention_impl, remat.

  Raises:
    ConfigError: an unknown preset or kind, here in the experiment file,
      before any data is prepared.
  """
  if preset:
    presets.get(preset)
  kind = values.get("kind", "")
  if kind and kind not in presets.MODEL_KINDS:
    raise ConfigError(f"model.kind={kind!r} is not one of "
                      f"{', '.join(presets.MODEL_KINDS)}")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.kind = ""
  c.depth = config_dict.placeholder(int)
  for name, kind in MODEL_OVERRIDES.items():
    setattr(c, name, config_dict.placeholder(kind))
  c.dtype = "bfloat16"
  c.param_dtype = "float32"
  c.scan_impl = "auto"
  c.fused_rg_lru = True
  c.attention_impl = "auto"
  c.remat = "none"
  c.update(values)
  return c


def hf_model_config(path: str, **values) -> ml_collections.ConfigDict:
  """The `model` section describing a Hugging Face checkpoint folder's
  model (its config.json, as `from_hf` reads it), for `init_from.hf`.

  Args:
    path: the checkpoint folder.
    **values: compute fields (dtype, remat, ...) or overrides, as for
      `model_config`.

  Raises:
    ConfigError: a missing folder or config.json, a config our model cannot
      reproduce, or a block pattern other than griffin / hawk / mqa.
  """
  from recurrentgemma_jax import hf  # pylint: disable=g-import-not-at-top

  try:
    griffin = hf.config_from_hf(hf.read_hf_config(path))
  except FileNotFoundError as e:
    raise ConfigError(f"init_from.hf: {e}") from None
  except ConfigError as e:
    raise ConfigError(f"init_from.hf: {path}: {e}") from None
  depth = griffin.num_layers
  kinds = [k for k in presets.MODEL_KINDS
           if tuple(block_pattern(k, depth)) == griffin.block_types]
  if not kinds:
    raise ConfigError(
        f"init_from.hf: {path}: the block pattern "
        f"{[b.value for b in griffin.block_types]} is none of "
        f"{', '.join(presets.MODEL_KINDS)}")
  given = griffin.to_dict()  # None where a field follows another
  fields = {name: given[name] for name in MODEL_OVERRIDES
            if given[name] is not None}
  return model_config("", kind=kinds[0], depth=depth,
                      **{**fields, **values})


def base_config() -> ml_collections.ConfigDict:
  """Defaults for every field the shared loop reads (except `data`)."""
  c = ml_collections.ConfigDict()
  c.total_steps = 1000
  c.batch_size = 32
  c.seq_len = 256
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.lr_schedule = "cosine"  # cosine | linear | constant (after warmup)
  c.min_lr_ratio = 0.1  # final learning rate / peak learning rate
  c.grad_accum_steps = 1  # micro-batches per optimizer step
  c.eval_every = 200
  c.eval_batches = 4
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.log_every = 10
  c.seed = 0
  c.profile_steps = ()  # (first, last): trace steps first..last inclusive
  c.peak_tflops = config_dict.placeholder(float)  # per device, for MFU

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  # Parameters whose '/'-joined path matches this regex get no weight decay:
  # norms (scale), biases (b, bias), the RG-LRU Lambda and the embeddings.
  c.optimizer.no_decay = r"(^|/)(scale|b|bias|a_param|input_embedding)$"
  c.optimizer.grad_clip = 1.0  # global norm; 0 disables clipping

  c.loss = ml_collections.ConfigDict()
  c.loss.z_loss = 0.0  # weight of mean(log(Z)^2) over real tokens

  c.model = model_config("griffin-100m")

  # Start from released weights (`load_official_checkpoint`). With preset
  # "", the window / soft cap / embedding scaling come from `model`.
  c.init_from = ml_collections.ConfigDict()
  c.init_from.checkpoint = ""
  c.init_from.preset = "recurrentgemma-2b"
  # Or (not both) a Hugging Face checkpoint folder (`from_hf`): its
  # config.json gives the model; `model` gives only the compute fields and,
  # when set, attention_window_size (2048 = the official model's window for
  # the released weights; by default transformers' window, one less).
  c.init_from.hf = ""

  # LoRA (`nn/lora.py`): with rank > 0 only low-rank adapters on the
  # projections `targets` names are trained; every other parameter (the
  # base: `init_from`'s weights, else the seed's) is frozen, gets no
  # optimizer state and is not checkpointed (checkpoints hold a digest of
  # it, and resuming on another base is refused).
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # 0: off, every parameter is trained
  c.lora.alpha = 16.0  # the update x A B is scaled by alpha / rank
  c.lora.dropout = 0.0  # on the adapters' input, while training
  # Presets all | attention | mlp | recurrent (joined by "+"), or a regex
  # searched in each projection weight's path, e.g.
  # "blocks/3/attention_block/proj_q/kernel", "blocks/0/mlp_block/ffw_up/w".
  # "all": attention q/k/v/final, MLP up/down, recurrent x/y/out.
  c.lora.targets = "all"
  # Storage dtype of the frozen base: "" (model.param_dtype), float32 or
  # bfloat16 (half the memory; adapters keep model.param_dtype).
  c.lora.base_dtype = ""

  c.mesh = ml_collections.ConfigDict(
      {"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1}
  )
  c.data = ml_collections.ConfigDict()
  return c


def build_model_config(
    model: ml_collections.ConfigDict, vocab_size: int | None = None
) -> GriffinConfig:
  """The `GriffinConfig` described by a `model` section.

  Args:
    model: the `model` section (`model_config`).
    vocab_size: the task's vocabulary; used when `model.vocab_size` is unset.
  """
  overrides: dict[str, Any] = {}
  for name in MODEL_OVERRIDES:
    value = model[name]
    if value is not None:
      overrides[name] = value
  if overrides.get("attention_window_size") == 0:
    overrides["attention_window_size"] = None
  if "vocab_size" not in overrides and vocab_size is not None:
    overrides["vocab_size"] = vocab_size
  if model.kind or model.depth is not None:
    if not (model.kind and model.depth):
      raise ConfigError("model.kind and model.depth must be given together")
    overrides["block_types"] = tuple(block_pattern(model.kind, model.depth))
  for name in COMPUTE_FIELDS:
    overrides[name] = model[name]
  if model.preset:
    return presets.get(model.preset, **overrides)
  try:
    return GriffinConfig(**overrides)
  except TypeError as e:  # a required field is missing
    raise ConfigError(f"model: without a preset, {e}") from e


def validate(config: Any) -> ml_collections.ConfigDict:
  """Checks `config` against `base_config()` and returns a locked copy.

  Accepts a ConfigDict or a plain (nested) dict. Every field of the base
  schema must be present with a compatible type, and no unknown field may
  appear outside `data` (whose fields each task checks).

  Raises:
    ConfigError: naming the first bad field.
  """
  if isinstance(config, Mapping):
    config = ml_collections.ConfigDict(dict(config))
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config must be a ConfigDict, got {type(config)}")
  _check_against(config, base_config(), "")
  _check_ranges(config)
  out = ml_collections.ConfigDict(config.to_dict())
  out.lock()
  return out


def _check_against(got, schema, prefix: str) -> None:
  extra = set(got.keys()) - set(schema.keys())
  if extra and prefix != "data.":
    raise ConfigError(f"unknown config field(s) {sorted(prefix + k for k in extra)}")
  for key in schema.keys():
    name = prefix + key
    if key not in got:
      raise ConfigError(f"config field {name} is missing")
    want, value = schema[key], got[key]
    if isinstance(want, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config field {name} must be a section")
      if key != "data":
        _check_against(value, want, name + ".")
      continue
    kind = schema.get_type(key)
    if value is None or kind is type(None):
      continue
    ok = isinstance(value, kind) and not (
        isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
      ok = True
    if kind is tuple and isinstance(value, list):
      ok = True
    if not ok:
      raise ConfigError(
          f"config field {name}={value!r} should be {kind.__name__}"
      )


@dataclasses.dataclass(frozen=True)
class Range:
  """The allowed values of a numeric config field: finite, within
  `[low, high]` (an `open_*` end excludes its bound), or one of `also`."""

  low: float | None = None
  high: float | None = None
  open_low: bool = False
  open_high: bool = False
  also: tuple[float, ...] = ()

  def allows(self, value: float) -> bool:
    if value in self.also:
      return True
    if not math.isfinite(value):
      return False
    if self.low is not None and (value < self.low or
                                 (self.open_low and value == self.low)):
      return False
    return self.high is None or not (value > self.high or (
        self.open_high and value == self.high))

  def describe(self, integer: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if self.low is not None and self.high is not None:
      text = (f"{kind} in {'(' if self.open_low else '['}{self.low:g}, "
              f"{self.high:g}{')' if self.open_high else ']'}")
    elif self.low is not None:
      text = f"{kind} {'>' if self.open_low else '>='} {self.low:g}"
    elif self.high is not None:
      text = f"{kind} {'<' if self.open_high else '<='} {self.high:g}"
    else:
      text = kind
    return text + "".join(f" or {a:g}" for a in self.also)


# Every numeric field of `base_config()` and what it may hold (None where
# the schema's default is a placeholder: unset). Relations between fields
# are checked in `_check_relations`; the model's own constraints (num_heads
# divides width, ...) by `GriffinConfig`.
RANGES: dict[str, Range] = {
    "total_steps": Range(1),
    "batch_size": Range(1),
    "seq_len": Range(1),
    "learning_rate": Range(0, open_low=True),
    "warmup_steps": Range(0),  # <= total_steps
    "min_lr_ratio": Range(0, 1),
    "grad_accum_steps": Range(1),
    "eval_every": Range(1),
    "eval_batches": Range(0),  # 0: no evaluation
    "checkpoint_every": Range(1),
    "keep_checkpoints": Range(1),
    "log_every": Range(1),
    "seed": Range(0),
    "peak_tflops": Range(0, open_low=True),
    "optimizer.b1": Range(0, 1, open_high=True),
    "optimizer.b2": Range(0, 1, open_high=True),
    "optimizer.eps": Range(0, open_low=True),
    "optimizer.weight_decay": Range(0),
    "optimizer.grad_clip": Range(0),  # 0 disables clipping
    "loss.z_loss": Range(0),
    "lora.rank": Range(0),  # 0: off
    "lora.alpha": Range(0, open_low=True),
    "lora.dropout": Range(0, 1, open_high=True),
    "model.depth": Range(1),
    "model.vocab_size": Range(1),
    "model.width": Range(1),
    "model.mlp_expanded_width": Range(1),
    "model.num_heads": Range(1),
    "model.lru_width": Range(1),
    "model.lru_num_heads": Range(1),
    "model.attention_window_size": Range(0),  # 0: global attention
    "model.logits_soft_cap": Range(0),  # 0: no soft cap
    "model.conv1d_temporal_width": Range(1),
    "mesh.data": Range(1, also=(-1,)),  # -1: the remaining devices
    "mesh.fsdp": Range(1, also=(-1,)),
    "mesh.tensor": Range(1, also=(-1,)),
    "mesh.sequence": Range(1, also=(-1,)),
}

LR_SCHEDULES = ("cosine", "linear", "constant")
LORA_BASE_DTYPES = ("", "float32", "bfloat16")


def _get(c: ml_collections.ConfigDict, name: str) -> Any:
  for part in name.split("."):
    c = c[part]
  return c


def _check_ranges(c: ml_collections.ConfigDict) -> None:
  schema = base_config()
  for name, allowed in RANGES.items():
    value = _get(c, name)
    if value is None:
      continue
    if not allowed.allows(value):
      section, _, key = name.rpartition(".")
      integer = (_get(schema, section) if section else schema).get_type(
          key) is int
      raise ConfigError(f"config field {name}={value!r} must be "
                        f"{allowed.describe(integer)}")
  _check_relations(c)


def _check_relations(c: ml_collections.ConfigDict) -> None:
  if c.lr_schedule not in LR_SCHEDULES:
    raise ConfigError(f"config field lr_schedule={c.lr_schedule!r} is not "
                      f"one of {', '.join(LR_SCHEDULES)}")
  if c.warmup_steps > c.total_steps:
    raise ConfigError(
        f"config field warmup_steps={c.warmup_steps} exceeds "
        f"total_steps={c.total_steps}")
  if c.profile_steps:
    steps = tuple(c.profile_steps)
    if not (len(steps) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) for s in steps) and
            1 <= steps[0] <= steps[1] <= c.total_steps):
      raise ConfigError(
          f"config field profile_steps={steps} must be () or (first, last) "
          f"with 1 <= first <= last <= total_steps={c.total_steps}")
  try:
    re.compile(c.optimizer.no_decay)
  except re.error as e:
    raise ConfigError(f"config field optimizer.no_decay="
                      f"{c.optimizer.no_decay!r} is not a regex: {e}") from e
  if c.lora.base_dtype not in LORA_BASE_DTYPES:
    raise ConfigError(
        f"config field lora.base_dtype={c.lora.base_dtype!r} is not one of "
        "'' (model.param_dtype), float32, bfloat16")
  lora_lib.target_pattern(c.lora.targets)


def lora_config(config: ml_collections.ConfigDict
                ) -> lora_lib.LoRAConfig | None:
  """The adapters of a validated config's `lora` section; None when off."""
  c = config.lora
  if not c.rank:
    return None
  return lora_lib.LoRAConfig(rank=c.rank, alpha=c.alpha, dropout=c.dropout,
                             targets=c.targets)
