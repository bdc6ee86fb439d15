"""The experiment config schema shared by every experiment file.

An experiment file (`experiments/*.py`) defines `get_config(arg)` returning
`base_config()` with its own values and a `data` section for its task. The
config is locked: setting a field that does not exist is an error, and
ml_collections rejects values of the wrong type.

Common fields (same names in every experiment):
  total_steps, batch_size (global, in sequences), seq_len, learning_rate,
  warmup_steps, eval_every, checkpoint_every, keep_checkpoints, seed,
  model (a preset name plus overrides), mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.config import block_pattern

# GriffinConfig fields an experiment may override, with their types.
# `attention_window_size = 0` means global attention (None in GriffinConfig).
MODEL_OVERRIDES: dict[str, type] = {
    "vocab_size": int,
    "width": int,
    "mlp_expanded_width": int,
    "num_heads": int,
    "lru_width": int,
    "lru_num_heads": int,
    "attention_window_size": int,
    "logits_soft_cap": float,
    "embeddings_scale_by_sqrt_dim": bool,
    "conv1d_temporal_width": int,
}


def model_config(preset: str = "", **values) -> ml_collections.ConfigDict:
  """The `model` section: a preset name, `kind` + `depth`, and overrides.

  Args:
    preset: a name from `recurrentgemma_jax.PRESETS`, or "" to give every
      size field explicitly.
    **values: any of `MODEL_OVERRIDES`, `kind` ("griffin", "hawk", "mqa")
      and `depth` (these two set `block_types`), and the compute fields
      dtype, param_dtype, scan_impl, fused_rg_lru, remat.
  """
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
  c.remat = "none"
  c.update(values)
  return c


def synthetic_model(kind: str, window: int) -> ml_collections.ConfigDict:
  """The paper's copy / retrieval model (De et al. 2024, Appendix H).

  Five residual blocks of width 64 (MLP 3x); Griffin's one local-attention
  block is the third (recurrent, recurrent, attention, recurrent, recurrent),
  Hawk has none, the MQA baseline uses global attention in every block.

  Args:
    kind: "griffin", "hawk" or "mqa".
    window: Griffin's local attention window.
  """
  return model_config(
      "", kind=kind, depth=5, width=64, mlp_expanded_width=192,
      num_heads=2, lru_width=64,
      attention_window_size=0 if kind == "mqa" else window,
      dtype="float32",
  )


def synthetic_task_config(
    task: str, kind: str, *, window: int
) -> ml_collections.ConfigDict:
  """The shared schedule of the synthetic-task experiments (Appendix H).

  20k AdamW steps (no weight decay) of batch 64 on `synthetic_model(kind,
  window)`; each experiment sets its sequence length and task fields.
  """
  c = base_config()
  c.total_steps = 20_000
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.warmup_steps = 500
  c.optimizer.weight_decay = 0.0
  c.eval_every = 1000
  c.checkpoint_every = 2000
  c.log_every = 100
  c.model = synthetic_model(kind, window)
  c.data.task = task
  return c


def shrink_for_cpu(
    c: ml_collections.ConfigDict,
    kind: str,
    *,
    total_steps: int = 600,
    batch_size: int = 32,
    eval_every: int = 200,
    checkpoint_every: int = 300,
) -> None:
  """The `runlocal` variant of a synthetic task: minutes on 2 CPU cores.

  Sequence 64, a higher learning rate with a short warm-up, and Griffin's
  window cut to 32 (MQA keeps global attention).
  """
  c.total_steps = total_steps
  c.batch_size = batch_size
  c.seq_len = 64
  c.learning_rate = 3e-3
  c.warmup_steps = 50
  c.eval_every = eval_every
  c.checkpoint_every = checkpoint_every
  c.log_every = 50
  c.model.attention_window_size = 0 if kind == "mqa" else 32


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

  c.mesh = ml_collections.ConfigDict(
      {"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1}
  )
  c.data = ml_collections.ConfigDict()
  return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses the `:a=1,b,c=x` suffix of `--config=file.py:...`.

  A bare key means True. Keys must be among `defaults`; each value is cast to
  the type of its default.

  >>> parse_arg("runlocal,model=hawk", runlocal=False, model="griffin")
  runlocal: true
  model: hawk
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(
          f"config argument {key!r} is unknown; allowed: {sorted(defaults)}"
      )
    default = defaults[key]
    if isinstance(default, bool):
      parsed = (value.lower() not in ("0", "false", "no")) if value else True
    elif not value:
      raise ConfigError(f"config argument {key!r} needs a value")
    else:
      try:
        parsed = type(default)(value)
      except ValueError as e:
        raise ConfigError(
            f"config argument {key}={value!r}: expected "
            f"{type(default).__name__}"
        ) from e
    out[key] = parsed
  return out


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
  for name in ("dtype", "param_dtype", "scan_impl", "fused_rg_lru", "remat"):
    overrides[name] = model[name]
  if model.preset:
    return GriffinConfig.from_preset(model.preset, **overrides)
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


def _check_ranges(c: ml_collections.ConfigDict) -> None:
  for name in ("total_steps", "batch_size", "seq_len", "eval_every",
               "checkpoint_every", "keep_checkpoints", "log_every",
               "grad_accum_steps"):
    if c[name] < 1:
      raise ConfigError(f"config field {name}={c[name]} must be >= 1")
  for name in ("warmup_steps", "eval_batches"):
    if c[name] < 0:
      raise ConfigError(f"config field {name}={c[name]} must be >= 0")
  if c.learning_rate <= 0:
    raise ConfigError(f"learning_rate={c.learning_rate} must be > 0")
  if c.lr_schedule not in ("cosine", "linear", "constant"):
    raise ConfigError(
        f"lr_schedule={c.lr_schedule!r} is not one of cosine, linear, constant"
    )
  if c.warmup_steps > c.total_steps:
    raise ConfigError(
        f"warmup_steps={c.warmup_steps} exceeds total_steps={c.total_steps}"
    )
  if c.profile_steps and (len(c.profile_steps) != 2 or
                          not 1 <= c.profile_steps[0] <= c.profile_steps[1]):
    raise ConfigError(
        f"profile_steps={tuple(c.profile_steps)} must be (first, last) with "
        "1 <= first <= last"
    )
