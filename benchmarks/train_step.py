r"""Training-step speed: our Griffin, Hawk and MQA against the official model.

    python benchmarks/train_step.py [--models griffin,hawk,mqa,official] \
        [--width 1024 --depth 12 --vocab 32000 --batch 8 --seq_len 2048] \
        [--long] [--overhead] [--out results.jsonl] [--profile DIR] \
        [--attention_impl auto|xla|pallas_gpu]

Every model trains with the same AdamW (clipping, masked decay), bfloat16
compute and float32 parameters and optimizer state, no remat, on one device.
"official" is `recurrentgemma.jax.Griffin` (PyPI `recurrentgemma`, Flax
Linen, `gradient_checkpointing=False`, its default scan) in the Griffin
configuration, trained by a step written the usual Linen way. `--long` also
runs Griffin, Hawk and the official model at 4x the length and 1/4 of the
batch (the same tokens per step). `--overhead` times the dispatch cost of
our functional step (`nnx.merge` inside `jax.jit`) against a stateful
`nnx.jit` step on a tiny model, where dispatch dominates.

Reports per configuration: median step time, tokens/s and MFU (FLOPs from
`recurrentgemma_jax.training.flops`, docs/flops.md). Imports only jax, flax,
optax, ml_collections and this repository (plus `recurrentgemma` for the
official model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pallas_kernels
from recurrentgemma_jax import sharding
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
  """Median seconds per step (each timed to completion) after warmup."""
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times), float(metrics["loss"])


def ours(kind: str, args, batch_size: int, seq_len: int,
         scan_impl: str = "auto"):
  config = model_config(kind, args, scan_impl)
  train_cfg = train_config(args)
  tx = optimizer_lib.make_optimizer(train_cfg)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  spec = state_lib.state_spec(config, tx, mesh)
  state = state_lib.init_train_state(spec, tx, seed=0)
  step = jax.jit(step_lib.make_train_step(
      spec.graphdef, tx, optimizer_lib.learning_rate_schedule(train_cfg)),
      donate_argnums=(0,))
  batch = make_batch(batch_size, seq_len, args.vocab)
  seconds, loss = time_steps(step, state, batch, args.steps, args.warmup)
  profile(args, f"{kind}_{batch_size}x{seq_len}", step, batch,
          lambda: state_lib.init_train_state(spec, tx, seed=0))
  return config, seconds, loss, state_lib.num_params(spec)


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
  params = jax.jit(model.init)(jax.random.key(0), batch["inputs"],
                               batch["segment_pos"])["params"]
  train_cfg = train_config(args)
  tx = optimizer_lib.make_optimizer(train_cfg)
  state = {"params": params, "opt_state": tx.init(params)}
  params = jax.tree.map(jnp.copy, params)  # `state`'s are donated

  def loss_fn(params, batch):
    logits, _ = model.apply({"params": params}, batch["inputs"],
                            batch["segment_pos"])
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                          batch["targets"])
    return jnp.sum(nll * batch["mask"]) / jnp.sum(batch["mask"])

  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"],
                                   state["params"])
    return ({"params": optax.apply_updates(state["params"], updates),
             "opt_state": opt_state}, {"loss": loss})

  step = jax.jit(step, donate_argnums=(0,))
  n = sum(x.size for x in jax.tree.leaves(params))
  seconds, loss = time_steps(step, state, batch, args.steps, args.warmup)
  profile(args, f"official_{batch_size}x{seq_len}", step, batch,
          lambda: {"params": params, "opt_state": tx.init(params)})
  return config, seconds, loss, n


def profile(args, name: str, step, batch, fresh_state, steps: int = 3):
  """With --profile DIR: the compiled HLO and a device trace of `steps`
  steps under DIR/name (benchmarks/profile_breakdown.py reads them)."""
  if not args.profile:
    return
  out = f"{args.profile}/{name}"
  os.makedirs(args.profile, exist_ok=True)
  state = fresh_state()
  compiled = step.lower(state, batch).compile()
  with open(f"{out}.hlo.txt", "w", encoding="utf-8") as f:
    f.write(compiled.as_text())
  state, metrics = step(state, batch)  # warm
  jax.block_until_ready(metrics)
  with jax.profiler.trace(out, create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)


def dispatch_overhead(args) -> dict[str, float]:
  """Per-step time of a tiny model: functional jax.jit vs stateful nnx.jit."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top

  tiny = argparse.Namespace(**{**vars(args), "width": 32, "depth": 3,
                               "vocab": 64, "heads": 2, "window": 8})
  _, functional, _, _ = ours("griffin", tiny, 2, 16)
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
  seconds, _ = time_steps(lambda s, b: (s, stateful(model, optimizer, b)),
                          None, batch, args.steps * 5, args.warmup)
  return {"functional_jax_jit_ms": 1e3 * functional,
          "stateful_nnx_jit_ms": 1e3 * seconds}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="griffin,hawk,mqa,official")
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
  p.add_argument("--overhead", action="store_true",
                 help="also time dispatch: functional vs nnx.jit step")
  p.add_argument("--out", default="", help="append JSON lines here")
  p.add_argument("--attention_impl", default="auto",
                 help="our models' local attention: auto, xla or pallas_gpu")
  p.add_argument("--profile", default="",
                 help="also write each model's HLO and a 3-step device "
                 "trace under this folder")
  args = p.parse_args(argv)

  device = jax.devices()[0]
  peak = flops.peak_flops_per_device(device)
  print(f"device: {device.device_kind}, jax {jax.__version__}, scan impl "
        f"{pallas_kernels.resolve_impl('auto')}", flush=True)
  shapes = [(args.batch, args.seq_len)]
  if args.long:
    shapes.append((args.batch // 4, args.seq_len * 4))
  header = (f"{'model':10s} {'B x T':>11s} {'params':>8s} {'step ms':>9s} "
            f"{'tokens/s':>11s} {'MFU':>6s}")
  print(header, flush=True)
  for b, t in shapes:
    for name in args.models.split(","):
      if t != args.seq_len and name == "mqa":
        continue  # global attention at 4x length: quadratic, not comparable
      impl = ("official default" if name == "official"
              else pallas_kernels.resolve_impl("auto"))
      try:
        if name == "official":
          config, seconds, loss, n = official(args, b, t)
        else:
          config, seconds, loss, n = ours(name, args, b, t)
      except Exception as e:  # pylint: disable=broad-except
        # Report a kernel that fails on this device, then measure the
        # pure-JAX scan instead of losing the whole run.
        print(f"{name}: FAILED with scan {impl}: "
              f"{str(e).strip().splitlines()[0][:200]}", flush=True)
        if name == "official" or impl == "associative":
          continue
        impl = "associative"
        config, seconds, loss, n = ours(name, args, b, t, impl)
      tokens_per_s = b * t / seconds
      fl = flops.train_flops_per_token(config, t) * tokens_per_s
      mfu = fl / peak if peak else float("nan")
      row = {"model": name, "batch": b, "seq_len": t, "params": n,
             "step_ms": 1e3 * seconds, "tokens_per_s": tokens_per_s,
             "mfu": mfu, "loss": loss,
             "scan_impl": impl,
             "device": device.device_kind, "jax": jax.__version__}
      print(f"{name:10s} {f'{b} x {t}':>11s} {n / 1e6:7.1f}M "
            f"{1e3 * seconds:9.1f} {tokens_per_s:11,.0f} {100 * mfu:5.1f}% "
            f"({impl})", flush=True)
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
