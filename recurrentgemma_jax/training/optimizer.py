"""AdamW with decoupled, masked weight decay, a warmup schedule and clipping."""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine / linear decay.

  The decay reaches `min_lr_ratio * learning_rate` at `total_steps`; the
  "constant" schedule holds the peak after warmup. The schedule is evaluated
  at the number of optimizer updates already applied (0 for the first step).
  """
  peak = config.learning_rate
  warmup = config.warmup_steps
  decay_steps = max(config.total_steps - warmup, 1)
  final = peak * config.min_lr_ratio
  if config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps,
                                        alpha=config.min_lr_ratio)
  elif config.lr_schedule == "linear":
    decay = optax.linear_schedule(peak, final, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def decay_mask(params: Any, no_decay: str) -> Any:
  """True for parameters that get weight decay.

  Args:
    params: a pytree of parameters (pure dict).
    no_decay: regex searched in each parameter's '/'-joined path; matching
      parameters are excluded (e.g. norms, biases, Lambda, embeddings).
  """
  pattern = re.compile(no_decay)

  def keep(path, _):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k)))
                    for k in path)
    return pattern.search(name) is None

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(
    config: ml_collections.ConfigDict,
) -> optax.GradientTransformation:
  """Global-norm clipping followed by AdamW (decay masked by `no_decay`).

  The decay is decoupled (Loshchilov & Hutter): `p -= lr_t * wd * p`, scaled
  by the same schedule as the Adam step and not by the gradient moments.
  Optimizer state has the parameters' dtype (float32 by default).
  """
  opt = config.optimizer
  adamw = optax.adamw(
      learning_rate_schedule(config),
      b1=opt.b1,
      b2=opt.b2,
      eps=opt.eps,
      weight_decay=opt.weight_decay,
      mask=lambda params: decay_mask(params, opt.no_decay),
  )
  if opt.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip), adamw)
  return adamw
