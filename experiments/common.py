"""Recipes shared by the experiment files, and the parsing of their argument.

Not an experiment itself (it has no `get_config`). The schema these recipes
fill in, and its validation, is `recurrentgemma_jax.training.config`.

Experiment files are loaded by path (`--config=experiments/x.py:arg`), from
any directory; each loads this file by path too, with
`experiment_files.sibling(__file__, "common")`, so that no other
`experiments` package on `sys.path` can stand in for it.
"""

from __future__ import annotations

import ml_collections

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import config as config_lib


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


def synthetic_model(kind: str, window: int) -> ml_collections.ConfigDict:
  """The paper's copy / retrieval model (De et al. 2024, Appendix H).

  Five residual blocks of width 64 (MLP 3x); Griffin's one local-attention
  block is the third (recurrent, recurrent, attention, recurrent, recurrent),
  Hawk has none, the MQA baseline uses global attention in every block.

  Args:
    kind: "griffin", "hawk" or "mqa".
    window: Griffin's local attention window.
  """
  return config_lib.model_config(
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
  c = config_lib.base_config()
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
