r"""Training-step speed: our Griffin, Hawk and MQA against the official model.

    python benchmarks/train_step.py [--models griffin,hawk,mqa,official] \
        [--width 1024 --depth 12 --vocab 32000 --batch 8 --seq_len 2048] \
        [--long | --only_long] [--overhead] [--out results.jsonl] \
        [--profile DIR] [--attention_impl auto|xla|pallas_gpu]

Every model trains with the same AdamW (clipping, masked decay), bfloat16
compute and float32 parameters and optimizer state, no remat, on one device.
"official" is `recurrentgemma.jax.Griffin` (PyPI `recurrentgemma`, Flax
Linen, `gradient_checkpointing=False`, its default scan) in the Griffin
configuration, trained by a plain step written the usual way (bfloat16
logits cast to float32, integer-label cross-entropy, masked mean, AdamW).
Ours trains with the step `recurrentgemma_jax.train` runs; `griffin-plain`
(and `hawk-plain`, `mqa-plain`) trains ours with the official model's plain
step instead. `@FIELD=VALUE` suffixes set GriffinConfig fields of our
rows (`--models griffin,griffin@fused_rg_lru=false`: an A/B in one
process; `width` does not carry `lru_width` or `mlp_expanded_width`, which
this benchmark sets itself). `--long` also runs every model at 4x the length and 1/4 of
the batch (the same tokens per step; MQA's global attention then costs
4x the attention FLOPs per token, which its MFU counts). `--overhead`
times the dispatch cost of our functional step (`nnx.merge` inside
`jax.jit`) against a stateful `nnx.jit` step on a tiny model, where
dispatch dominates.

Reports per configuration: median, fastest and slowest step (each timed to
completion), the mean step of as many steps run back to back as the
training loop runs them ("piped": the host dispatches a step while the
one before runs; tokens/s and MFU use the median), tokens/s, MFU
(FLOPs from `recurrentgemma_jax.training.flops`, docs/flops.md), the
compiled step's device memory (state, batch, XLA's temporaries; the
process's allocator peak too in the JSON rows), and the seconds spent
initialising the parameters and compiling the step. Imports only jax, flax,
optax, ml_collections and this repository (plus `recurrentgemma` for the
official model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pallas_kernels
from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.config import block_pattern
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import flops
from recurrentgemma_jax.training import optimizer as optimizer_lib
from recurrentgemma_jax.training import state as state_lib
from recurrentgemma_jax.training import step as step_lib


def model_config(kind: str, args, scan_impl: str = "auto") -> GriffinConfig:
  return GriffinConfig(
      scan_impl=scan_impl,
      vocab_size=args.vocab,
      width=args.width,
      mlp_expanded_width=3 * args.width,
      num_heads=args.heads,
      lru_width=args.width,
      block_types=tuple(block_pattern(kind, args.depth)),
      attention_window_size=None if kind == "mqa" else args.window,
      attention_impl=args.attention_impl,
      dtype="bfloat16",
      param_dtype="float32",
  )


def train_config(args):
  c = config_lib.base_config()
  c.total_steps = 10_000
  c.warmup_steps = 100
  c.learning_rate = 1e-3
  return c


def make_batch(batch: int, seq_len: int, vocab: int):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
  return {
      "inputs": jnp.asarray(tokens[:, :-1]),
      "targets": jnp.asarray(tokens[:, 1:]),
      "segment_pos": jnp.asarray(np.tile(np.arange(seq_len, dtype=np.int32),
                                         (batch, 1))),
      "mask": jnp.ones((batch, seq_len), jnp.float32),
  }


def time_steps(step, state, batch, steps: int, warmup: int):
  """Step seconds after `warmup` steps: each step timed to completion
  (median, min, max), and the mean of the same number of steps run back to
  back as the training loop runs them (`pipelined_s`); with the compiled
  step's memory and its compile time. Returns `(result, compiled step)`."""
  start = time.perf_counter()
  # A stateful nnx.jit step (dispatch_overhead) has no `lower`.
  compiled = (step.lower(state, batch).compile() if hasattr(step, "lower")
              else step)
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  times.sort()
  # The training loop waits only when it logs, so the host dispatches step
  # n + 1 while step n runs: the same steps back to back, waited for once.
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  pipelined_s = (time.perf_counter() - start) / steps
  return {"seconds": statistics.median(times), "min_s": times[0],
          "max_s": times[-1], "pipelined_s": pipelined_s,
          "loss": float(metrics["loss"]),
          "compile_s": compile_s,
          **(step_memory(compiled) if compiled is not step else {})}, compiled


def step_memory(compiled) -> dict:
  """Device bytes the compiled step needs: its arguments (the state and the
  batch), outputs not aliased to donated arguments, and XLA's temporaries;
  plus the process's peak so far where the backend reports it."""
  out = {}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    out["step_bytes"] = (analysis.argument_size_in_bytes
                         + analysis.output_size_in_bytes
                         - analysis.alias_size_in_bytes
                         + analysis.temp_size_in_bytes)
    out["temp_bytes"] = analysis.temp_size_in_bytes
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["process_peak_bytes"] = stats["peak_bytes_in_use"]
  return out


def parse_model(name: str) -> tuple[str, bool, dict[str, object]]:
  """`griffin-plain@fused_rg_lru=false@attention_impl=xla` -> `("griffin",
  True, {"fused_rg_lru": False, "attention_impl": "xla"})`: the family,
  whether it trains with the plain step, and `GriffinConfig` fields to
  override (typed by the field's annotation), for A/B rows in one process.
  Raises ValueError naming the bad part."""
  base, *parts = name.split("@")
  kind = base.removesuffix("-plain")
  if kind not in ("griffin", "hawk", "mqa", "official") or (
      base == "official-plain"):
    raise ValueError(f"unknown model {base!r}; allowed: griffin, hawk, mqa, "
                     "official, and griffin-plain, hawk-plain, mqa-plain")
  if kind == "official" and parts:
    raise ValueError(f"{name!r}: the official model takes no overrides")
  hints = typing.get_type_hints(GriffinConfig)
  overrides = {}
  for part in parts:
    key, eq, text = part.partition("=")
    if not eq or key not in hints:
      raise ValueError(f"{name!r}: {part!r} is not FIELD=VALUE with a "
                       f"GriffinConfig field; fields: {sorted(hints)}")
    overrides[key] = _field_value(name, key, hints[key], text)
  return kind, base.endswith("-plain"), overrides


def _field_value(name: str, key: str, hint, text: str):
  """`text` as a value of the GriffinConfig field `key` (annotated `hint`):
  bool, int, float or str, or None where the field allows it."""
  types = set(typing.get_args(hint)) or {hint}
  if type(None) in types and text.lower() == "none":
    return None
  if bool in types:
    if text.lower() not in ("true", "false"):
      raise ValueError(f"{name!r}: {key} takes true or false, got {text!r}")
    return text.lower() == "true"
  for kind in (int, float):
    if kind in types:
      try:
        return kind(text)
      except ValueError:
        raise ValueError(f"{name!r}: {key} takes {kind.__name__}"
                         f"{' or none' if type(None) in types else ''}, got "
                         f"{text!r}") from None
  if str in types:
    return text
  raise ValueError(f"{name!r}: {key} ({hint}) cannot be set from --models")


def ours(kind: str, args, batch_size: int, seq_len: int,
         scan_impl: str = "auto", plain: bool = False,
         overrides: dict[str, object] | None = None, label: str = ""):
  """Our model trained by `recurrentgemma_jax.train`'s step, or with
  `plain` by the same plain step the official model gets; `overrides`:
  GriffinConfig fields (`parse_model`); `label`: the --profile name."""
  config = model_config(kind, args, scan_impl).replace(**(overrides or {}))
  train_cfg = train_config(args)
  tx = optimizer_lib.make_optimizer(train_cfg)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  spec = state_lib.state_spec(config, tx, mesh)
  start = time.perf_counter()
  state = state_lib.init_train_state(spec, tx, seed=0)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  if plain:
    from flax import nnx  # pylint: disable=g-import-not-at-top

    def apply(params, batch):
      return nnx.merge(spec.graphdef, params)(batch["inputs"],
                                              batch["segment_pos"])

    step = jax.jit(plain_step(apply, tx), donate_argnums=(0,))
    state = {"params": state["params"], "opt_state": state["opt_state"]}
  else:
    step = jax.jit(step_lib.make_train_step(
        spec.graphdef, tx, optimizer_lib.learning_rate_schedule(train_cfg)),
        donate_argnums=(0,))
  batch = make_batch(batch_size, seq_len, config.vocab_size)
  result, compiled = time_steps(step, state, batch, args.steps, args.warmup)
  if not plain:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", label or kind)
    profile(args, f"{name}_{batch_size}x{seq_len}", compiled, batch,
            lambda: state_lib.init_train_state(spec, tx, seed=0))
  return config, {**result, "init_s": init_s}, state_lib.num_params(spec)


def plain_step(apply, tx):
  """The conventional step both models get: bfloat16 logits cast to
  float32, integer-label cross-entropy, masked mean, AdamW."""

  def loss_fn(params, batch):
    logits = apply(params, batch).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                          batch["targets"])
    return jnp.sum(nll * batch["mask"]) / jnp.sum(batch["mask"])

  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"],
                                   state["params"])
    return ({"params": optax.apply_updates(state["params"], updates),
             "opt_state": opt_state}, {"loss": loss})

  return step


def official(args, batch_size: int, seq_len: int):
  """The official Linen Griffin trained by a conventional Linen step."""
  import recurrentgemma.jax as rg_official  # pylint: disable=g-import-not-at-top

  config = model_config("griffin", args)
  official_config = rg_official.GriffinConfig(
      vocab_size=args.vocab,
      width=args.width,
      mlp_expanded_width=3 * args.width,
      num_heads=args.heads,
      lru_width=args.width,
      block_types=tuple(rg_official.TemporalBlockType.RECURRENT
                        if b.value == "recurrent"
                        else rg_official.TemporalBlockType.ATTENTION
                        for b in config.block_types),
      embeddings_scale_by_sqrt_dim=False,
      attention_window_size=args.window,
      logits_soft_cap=0.0,
  )
  model = rg_official.Griffin(official_config, gradient_checkpointing=False,
                              dtype=jnp.bfloat16, param_dtype=jnp.float32)
  batch = make_batch(batch_size, seq_len, args.vocab)
  start = time.perf_counter()
  with state_lib.fast_random_lowering(jax.devices()[:1]):  # as ours
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"],
                                 batch["segment_pos"])["params"]
  jax.block_until_ready(params)
  init_s = time.perf_counter() - start
  train_cfg = train_config(args)
  tx = optimizer_lib.make_optimizer(train_cfg)
  state = {"params": params, "opt_state": tx.init(params)}
  params = jax.tree.map(jnp.copy, params)  # `state`'s are donated

  def apply(params, batch):
    return model.apply({"params": params}, batch["inputs"],
                       batch["segment_pos"])[0]

  step = jax.jit(plain_step(apply, tx), donate_argnums=(0,))
  n = sum(x.size for x in jax.tree.leaves(params))
  result, compiled = time_steps(step, state, batch, args.steps, args.warmup)
  profile(args, f"official_{batch_size}x{seq_len}", compiled, batch,
          lambda: {"params": params, "opt_state": tx.init(params)})
  return config, {**result, "init_s": init_s}, n


def profile(args, name: str, compiled, batch, fresh_state, steps: int = 3):
  """With --profile DIR: the compiled step's HLO and a device trace of
  `steps` steps under DIR/name (benchmarks/profile_breakdown.py reads
  them). `compiled` is the timed executable: nothing is compiled again."""
  if not args.profile:
    return
  out = f"{args.profile}/{name}"
  os.makedirs(args.profile, exist_ok=True)
  with open(f"{out}.hlo.txt", "w", encoding="utf-8") as f:
    f.write(compiled.as_text())
  state = fresh_state()
  state, metrics = compiled(state, batch)  # warm
  jax.block_until_ready(metrics)
  with jax.profiler.trace(out, create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)


def dispatch_overhead(args) -> dict[str, float]:
  """Per-step time of a tiny model: functional jax.jit vs stateful nnx.jit."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top

  tiny = argparse.Namespace(**{**vars(args), "width": 32, "depth": 3,
                               "vocab": 64, "heads": 2, "window": 8})
  _, functional, _ = ours("griffin", tiny, 2, 16)
  config = model_config("griffin", tiny)
  tx = optimizer_lib.make_optimizer(train_config(tiny))
  model = Griffin(config, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def stateful(model, optimizer, batch):
    def loss_fn(model):
      logits = model(batch["inputs"], batch["segment_pos"])
      nll = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), batch["targets"])
      return jnp.mean(nll)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return {"loss": loss}

  batch = make_batch(2, 16, 64)
  stateful_result, _ = time_steps(
      lambda s, b: (s, stateful(model, optimizer, b)), None, batch,
      args.steps * 5, args.warmup)
  return {"functional_jax_jit_ms": 1e3 * functional["seconds"],
          "stateful_nnx_jit_ms": 1e3 * stateful_result["seconds"]}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="griffin,hawk,mqa,official",
                 help="comma-separated: griffin, hawk, mqa, official; a "
                 "`-plain` suffix (griffin-plain) trains ours with the "
                 "official model's plain step; `@FIELD=VALUE` suffixes "
                 "override GriffinConfig fields of ours, for A/B rows in "
                 "one process (griffin@fused_rg_lru=false)")
  p.add_argument("--width", type=int, default=1024)
  p.add_argument("--depth", type=int, default=12)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--window", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--long", action="store_true",
                 help="also 4x the length at 1/4 of the batch")
  p.add_argument("--only_long", action="store_true",
                 help="only the 4x length at 1/4 of the batch")
  p.add_argument("--overhead", action="store_true",
                 help="also time dispatch: functional vs nnx.jit step")
  p.add_argument("--out", default="", help="append JSON lines here")
  p.add_argument("--attention_impl", default="auto",
                 help="our models' local attention: auto, xla or pallas_gpu")
  p.add_argument("--profile", default="",
                 help="also write each model's HLO and a 3-step device "
                 "trace under this folder")
  args = p.parse_args(argv)
  names = args.models.split(",")
  models = {}
  for name in names:
    try:
      models[name] = kind, _, overrides = parse_model(name)
      if kind != "official":  # the values too, before anything is built
        model_config(kind, args).replace(**overrides)
    except (ValueError, ConfigError) as e:
      p.error(f"--models: {e}")

  device = jax.devices()[0]
  peak = flops.peak_flops_per_device(device)
  print(f"device: {device.device_kind}, jax {jax.__version__}, scan impl "
        f"{pallas_kernels.resolve_impl('auto')}", flush=True)
  long_shape = (args.batch // 4, args.seq_len * 4)
  shapes = ([long_shape] if args.only_long else
            [(args.batch, args.seq_len)] + ([long_shape] if args.long else []))
  print(f"{'model':14s} {'B x T':>11s} {'params':>8s} {'step ms':>9s} "
        f"{'min-max':>13s} {'piped ms':>9s} {'tokens/s':>11s} {'MFU':>6s} "
        f"{'step GB':>8s} {'init s':>7s} {'compile s':>9s}", flush=True)
  for b, t in shapes:
    for name in names:
      kind, plain, overrides = models[name]
      impl = ("official default" if name == "official"
              else pallas_kernels.resolve_impl("auto"))
      try:
        if name == "official":
          config, result, n = official(args, b, t)
        else:
          config, result, n = ours(kind, args, b, t, plain=plain,
                                   overrides=overrides, label=name)
      except Exception as e:  # pylint: disable=broad-except
        # Report a kernel that fails on this device, then measure the
        # pure-JAX scan instead of losing the whole run.
        print(f"{name}: FAILED with scan {impl}: "
              f"{str(e).strip().splitlines()[0][:200]}", flush=True)
        # An A/B row that chose its scan itself gets no substitute.
        if name == "official" or impl == "associative" or (
            "scan_impl" in overrides):
          continue
        impl = "associative"
        config, result, n = ours(kind, args, b, t, impl, plain=plain,
                                 overrides=overrides, label=name)
      seconds = result["seconds"]
      tokens_per_s = b * t / seconds
      fl = flops.train_flops_per_token(config, t) * tokens_per_s
      mfu = fl / peak if peak else float("nan")
      row = {"model": name, "overrides": overrides, "batch": b,
             "seq_len": t, "params": n,
             "step_ms": 1e3 * seconds, "min_ms": 1e3 * result["min_s"],
             "max_ms": 1e3 * result["max_s"],
             "pipelined_ms": 1e3 * result["pipelined_s"],
             "tokens_per_s": tokens_per_s,
             "mfu": mfu, "flops_per_token": flops.train_flops_per_token(
                 config, t), **{k: v for k, v in result.items()
                                if k not in ("seconds", "min_s", "max_s",
                                             "pipelined_s")},
             "scan_impl": config.scan_impl if "scan_impl" in overrides
             else impl, "attention_impl": config.attention_impl,
             "device": device.device_kind, "jax": jax.__version__}
      step_gb = result.get("step_bytes", float("nan")) / 1e9
      spread = f"{1e3 * result['min_s']:.1f}-{1e3 * result['max_s']:.1f}"
      print(f"{name:14s} {f'{b} x {t}':>11s} {n / 1e6:7.1f}M "
            f"{1e3 * seconds:9.1f} "
            f"{spread:>13s} {1e3 * result['pipelined_s']:9.1f} "
            f"{tokens_per_s:11,.0f} {100 * mfu:5.1f}% {step_gb:8.2f} "
            f"{result['init_s']:7.1f} {result['compile_s']:9.1f} ({impl})",
            flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(json.dumps(row) + "\n")
  if args.overhead:
    result = dispatch_overhead(args)
    print(json.dumps(result), flush=True)
    if args.out:
      with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"overhead": result}) + "\n")


if __name__ == "__main__":
  sys.exit(main())
