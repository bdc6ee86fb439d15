"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685) on projections.

`add_lora(model, LoRAConfig(rank=8), rngs=...)` gives every projection
weight `W [in, out]` whose '/'-joined parameter path matches `targets` an
adapter, and the projection then computes

    y = x W + (dropout(x) A B) * alpha / rank

with `A [in, rank]` random (normal, std 1/sqrt(in)) and `B [rank, out]`
zeros, so a fresh adapter leaves the model's outputs unchanged (bit for
bit; to float rounding under a "dots" remat, below). The MLP's
stacked up projection `ffw_up/w [2, D, F]` gets stacked adapters `[2, D, r]`,
`[2, r, F]`. Adapters are `nnx.LoRAParam`s (a subclass of `nnx.Param`):
`nnx.split(model, nnx.LoRAParam, nnx.Param)` separates them from the base.
They live beside their weight (`.../proj_q/lora/lora_a`, `.../mlp_block/
ffw_up_lora/lora_a`) and carry logical axes: A the weight's input axis and
`lora_rank`, B `lora_rank` and the weight's output axis (`lora_rank` is
replicated by the sharding rules).

When the model remats with a "dots" policy, which saves every matmul
output, `x W` and the update are one matmul `[x, x A] @ [W; B]` with its own
backward (no gradient for a frozen `W`): a separate `(x A) B` would be a
second saved activation per projection.

Dropout acts only while `dropout_rng(key)` is active (the train step sets
it), so evaluation and sampling are deterministic. `merge_lora(model)`
returns the plain model with `W + A B alpha / rank` folded into each weight
(for sampling and export).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.nn import params as params_lib
from recurrentgemma_jax.nn.linear import Dense
from recurrentgemma_jax.nn.mlp import MLPBlock

RANK_AXIS = "lora_rank"
# Remat policies that keep matmul outputs: adapters then share their
# weight's matmul (`LoRA.project`).
FUSED_REMAT = ("dots", "dots_no_batch")

_ATTENTION = r"attention_block/proj_(q|k|v|final)/kernel"
_MLP = r"mlp_block/(ffw_up/w|ffw_down/kernel)"
_RECURRENT = r"recurrent_block/linear_(x|y|out)/kernel"
# Named sets of projections; `targets` may join several with "+".
TARGET_PRESETS = {
    "all": f"({_ATTENTION}|{_MLP}|{_RECURRENT})$",
    "attention": f"{_ATTENTION}$",
    "mlp": f"{_MLP}$",
    "recurrent": f"{_RECURRENT}$",
}

# The key of the innermost `dropout_rng`; None outside one (no dropout).
_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = (
    contextvars.ContextVar("lora_dropout_key", default=None))


def target_pattern(targets: str) -> str:
  """The regex of `targets`: preset names joined by "+", or a regex.

  Raises:
    ConfigError: empty, or neither presets nor a valid regex.
  """
  if not targets:
    raise ConfigError("lora.targets is empty: give a preset ("
                      f"{', '.join(TARGET_PRESETS)}) or a regex")
  names = targets.split("+")
  if all(n in TARGET_PRESETS for n in names):
    return "|".join(f"({TARGET_PRESETS[n]})" for n in names)
  try:
    re.compile(targets)
  except re.error as e:
    raise ConfigError(
        f"lora.targets={targets!r} is neither presets ("
        f"{', '.join(TARGET_PRESETS)}, joined by '+') nor a regex: {e}"
    ) from e
  return targets


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which projections get adapters, and their size.

  Attributes:
    rank: the adapters' inner dimension r (>= 1).
    alpha: the update is scaled by alpha / rank.
    dropout: dropout rate on the adapters' input while training, in [0, 1).
    targets: preset names ("all", "attention", "mlp", "recurrent", joined
      by "+") or a regex searched in each projection weight's path, e.g.
      `blocks/3/attention_block/proj_q/kernel`, `blocks/0/mlp_block/ffw_up/w`.
  """

  rank: int
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = "all"

  def __post_init__(self):
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or (
        self.rank < 1):
      raise ConfigError(f"lora.rank={self.rank!r} must be an integer >= 1")
    if not self.alpha > 0:
      raise ConfigError(f"lora.alpha={self.alpha!r} must be > 0")
    if not 0 <= self.dropout < 1:
      raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1)")
    target_pattern(self.targets)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class LoRA(nnx.Module):
  """The update `(dropout(x) @ lora_a @ lora_b) * scale` of one weight.

  `lora_a: [*lead, in, r]`, `lora_b: [*lead, r, out]` for a weight
  `[*lead, in, out]` (`lead` is `(2,)` for the MLP's stacked up projection:
  its input is then `[2, ..., in]`). With `fused` (set by `add_lora` for
  the "dots" remat policies) the projection and its update are one matmul
  (`project`).
  """

  def __init__(
      self,
      weight: nnx.Variable,
      config: LoRAConfig,
      *,
      index: int,
      dtype: jnp.dtype,
      param_dtype: jnp.dtype,
      fused: bool = False,
      rngs: nnx.Rngs,
  ):
    *lead, d_in, d_out = weight.shape
    if len(lead) > 1:
      raise ValueError(f"LoRA supports at most one stacked axis, got a "
                       f"weight of shape {weight.shape}")
    axes = tuple(weight.get_metadata().get("out_sharding") or
                 (None,) * weight.ndim)
    *lead_axes, in_axis, out_axis = axes
    a = params_lib.normal(d_in**-0.5)(rngs.params(), (*lead, d_in, config.rank),
                             param_dtype)
    b = jnp.zeros((*lead, config.rank, d_out), param_dtype)
    self.lora_a = nnx.LoRAParam(a, out_sharding=(*lead_axes, in_axis,
                                                 RANK_AXIS),
                                eager_sharding=False)
    self.lora_b = nnx.LoRAParam(b, out_sharding=(*lead_axes, RANK_AXIS,
                                                 out_axis),
                                eager_sharding=False)
    self.scale = config.scale
    self.dropout = config.dropout
    self.stacked = bool(lead)
    self.index = index  # distinct dropout masks per adapter
    self.dtype = dtype
    self.fused = fused

  def delta(self) -> jax.Array:
    """`lora_a @ lora_b * scale` in float32, the weight's shape."""
    a = params_lib.cast(self.lora_a, jnp.float32)
    b = params_lib.cast(self.lora_b, jnp.float32)
    spec = "cir,cro->cio" if self.stacked else "ir,ro->io"
    return jnp.einsum(spec, a, b, precision=jax.lax.Precision.HIGHEST) * (
        self.scale)

  def project(self, x: jax.Array, w: jax.Array,
              matmul: Callable[[jax.Array, jax.Array], jax.Array]
              ) -> jax.Array:
    """`matmul(x, w)` plus the update; `x [..., in]` (stacked: `[2, ...,
    in]`) and the weight `w` in the compute dtype.

    With `fused` (the model remats with a "dots" policy) both are one
    matmul, `[x, h] @ [w; b]` with `h = dropout(x) a * scale`: the policy
    keeps every matmul output, so the update's own `[..., out]` product
    would be a second saved copy of the projection's activations. Its
    backward computes no weight gradient for a frozen `w`. Without
    `fused` the sum is `matmul(x, w) + h @ b`, exactly `matmul(x, w)` while
    `b` is zero.
    """
    spec = "c...i,cio->c...o" if self.stacked else "...i,io->...o"
    a = params_lib.cast(self.lora_a, self.dtype)
    b = params_lib.cast(self.lora_b, self.dtype)
    h = jnp.einsum(spec, _dropout(x, self.dropout, self.index), a)
    h = h * jnp.asarray(self.scale, self.dtype)
    if self.fused:
      return _fused_matmul(spec, x, h, w, b)
    return matmul(x, w) + jnp.einsum(spec, h, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_matmul(spec: str, x: jax.Array, h: jax.Array, w: jax.Array,
                  b: jax.Array) -> jax.Array:
  """`einsum(spec, x, w) + einsum(spec, h, b)` as one matmul."""
  return jnp.einsum(spec, jnp.concatenate([x, h], -1),
                    jnp.concatenate([w, b], -2))


def _fused_fwd(spec, x, h, w, b):
  # Symbolic zeros: `perturbed` says which inputs are differentiated, so a
  # frozen weight keeps no residual and gets no gradient.
  xv, hv, wv, bv = (p.value for p in (x, h, w, b))
  y = _fused_matmul.fun(spec, xv, hv, wv, bv)
  return y, (xv if w.perturbed else None, hv if b.perturbed else None, wv,
             bv)


def _fused_bwd(spec, residuals, g):
  x, h, w, b = residuals

  def grad(fn, shape, dtype):  # VJP of the linear `fn` (at zeros)
    return jax.vjp(fn, jnp.zeros(shape, dtype))[1](g)[0]

  dx = grad(lambda v: jnp.einsum(spec, v, w),
            (*g.shape[:-1], w.shape[-2]), g.dtype)
  dh = grad(lambda v: jnp.einsum(spec, v, b),
            (*g.shape[:-1], b.shape[-2]), g.dtype)
  dw = None if x is None else grad(lambda v: jnp.einsum(spec, x, v),
                                   w.shape, w.dtype)
  db = None if h is None else grad(lambda v: jnp.einsum(spec, h, v),
                                   b.shape, b.dtype)
  return dx, dh, dw, db


_fused_matmul.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


def _dropout(x: jax.Array, rate: float, index: int) -> jax.Array:
  key = _DROPOUT_KEY.get()
  if rate == 0 or key is None:
    return x
  keep = jax.random.bernoulli(jax.random.fold_in(key, index), 1 - rate,
                              x.shape)
  return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)


@contextlib.contextmanager
def dropout_rng(key: jax.Array | None) -> Iterator[None]:
  """Adapters traced inside apply their dropout with masks from `key`
  (None: no dropout). The train step wraps its forward pass in it."""
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


@dataclasses.dataclass(frozen=True)
class _Projection:
  """A weight LoRA can adapt: `getattr(owner, slot)` holds its adapter."""

  path: str  # '/'-joined parameter path of the weight
  owner: nnx.Module
  slot: str
  weight: nnx.Variable


def _projections(model: nnx.Module) -> list[_Projection]:
  out = []
  for parts, module in nnx.iter_modules(model):
    prefix = "/".join(map(str, parts))
    if isinstance(module, Dense):
      out.append(_Projection(f"{prefix}/kernel", module, "lora",
                             module.kernel))
    elif isinstance(module, MLPBlock):
      out.append(_Projection(f"{prefix}/ffw_up/w", module, "ffw_up_lora",
                             module.ffw_up["w"]))
  # Numeric path parts in numeric order: blocks/2 before blocks/10.
  return sorted(out, key=lambda p: [(0, int(k), "") if k.isdigit() else
                                    (1, 0, k) for k in p.path.split("/")])


def projection_paths(model: nnx.Module) -> list[str]:
  """Paths of every weight `targets` can name, e.g.
  `blocks/0/recurrent_block/linear_x/kernel`."""
  return [p.path for p in _projections(model)]


def _matching(model: nnx.Module, targets: str) -> list[_Projection]:
  pattern = re.compile(target_pattern(targets))
  found = [p for p in _projections(model) if pattern.search(p.path)]
  if not found:
    paths = [p.path for p in _projections(model)]
    raise ConfigError(
        f"lora.targets={targets!r} matches none of the model's "
        f"{len(paths)} projection weights, e.g. {', '.join(paths[:6])}; "
        f"presets: {', '.join(TARGET_PRESETS)}")
  return found


def add_lora(model: nnx.Module, config: LoRAConfig, *, rngs: nnx.Rngs
             ) -> nnx.Module:
  """Attaches adapters to the projections `config.targets` names (in place;
  returns `model`). The base parameters are untouched.

  Raises:
    ConfigError: `targets` matches no projection (the message lists some),
      or the model has adapters already.
  """
  found = _matching(model, config.targets)
  param_dtype = jnp.dtype(model.config.param_dtype)
  fused = model.config.remat in FUSED_REMAT
  for index, p in enumerate(found):
    if getattr(p.owner, p.slot) is not None:
      raise ConfigError(f"{p.path} has a LoRA adapter already")
    adapter = LoRA(p.weight, config, index=index, dtype=p.owner.dtype,
                   param_dtype=param_dtype, fused=fused, rngs=rngs)
    setattr(p.owner, p.slot, nnx.data(adapter))
  return model


def adapted_paths(model: nnx.Module) -> list[str]:
  """Paths of the weights that carry an adapter."""
  return [p.path for p in _projections(model)
          if getattr(p.owner, p.slot) is not None]


def merge_lora(model: nnx.Module) -> nnx.Module:
  """A copy of `model` with each adapter folded into its weight and no
  adapters left: `W + A B * alpha / rank`, added in float32 and stored in
  W's dtype. Its parameters have the plain model's tree (sampling, export:
  `to_official`, `to_hf`); `model` itself is unchanged.
  """
  merged = nnx.clone(model)
  for p in _projections(merged):
    adapter: Any = getattr(p.owner, p.slot)
    if adapter is None:
      continue
    w = p.weight[...]
    p.weight[...] = (jnp.asarray(w, jnp.float32) + adapter.delta()).astype(
        w.dtype)
    setattr(p.owner, p.slot, None)
  return merged
