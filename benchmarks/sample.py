r"""Decode throughput and memory: our sampler against the official one.

Both decode loops run on the same random bfloat16 weights (the official
parameter tree; ours is `from_official` of it, sharing the arrays), greedy,
from the same one-token prefix of each row (both attend over every cache
slot with a mask, so the cost per step does not depend on how full the
cache is). Timed: the jitted decode loop alone (tokens generated per second
= batch x steps / seconds), after an ahead-of-time compile and a short
warm-up run. Then each row's greedy tokens are compared with the
official's and with our first row's at the same batch and length
(agreement, rows identical, first difference: reported, not required; see
`token_agreement`).

- ours: `Sampler`'s device loop (`recurrentgemma_jax.sampling.decode`)
  with the Sampler's defaults (products of < 16 rows padded on GPU);
  ours_padded / ours_unpadded force the padding on or off.
- official: `recurrentgemma.jax.Sampler`'s `_sample_fn` while loop.

Command (one H200; the GPU image lacks the `recurrentgemma` and typeguard
wheels, carried in .whl; results in docs/benchmarks.md, "Sampling"):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site \
      .whl/*.whl && PYTHONPATH=/tmp/site:$PWD timeout 220 python3 \
      benchmarks/sample.py --batches 64,1 --extra_batches 256,16 \
      --steps 2048 --short_steps 256 --budget_s 140 --out $OUT/sample.json
Where a decode step's time goes (kernels per step, time by source line):
  ... benchmarks/sample.py --batches 1 --extra_batches "" --profile DIR
  python3 benchmarks/profile_breakdown.py --steps 64 DIR/ours_b1 DIR/official_b1
Our loop with int8 weights (`--quantize int8`: quantized once from the same
bf16 weights, rows `ours_int8`; the official loop stays bf16):
  ... benchmarks/sample.py --batches 1,64 --extra_batches "" --quantize int8
CPU smoke test:
  JAX_PLATFORMS=cpu python benchmarks/sample.py --tiny --steps 64
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

T0 = time.perf_counter()


def start_clock() -> None:
  """Restarts the clock of `log` and of the `--budget_s` checks: each
  main() counts from its own start, not from when this module was imported
  (a test imports it long before it runs it)."""
  global T0
  T0 = time.perf_counter()


def elapsed_s() -> float:
  return time.perf_counter() - T0


def log(msg: str) -> None:
  print(f"[{elapsed_s():6.1f}s] {msg}", flush=True)


def official_config(tiny: bool):
  from recurrentgemma import common  # pylint: disable=g-import-not-at-top

  if tiny:
    return common.GriffinConfig(
        vocab_size=512, width=64, mlp_expanded_width=192, num_heads=2,
        block_types=(common.TemporalBlockType.RECURRENT,
                     common.TemporalBlockType.RECURRENT,
                     common.TemporalBlockType.ATTENTION),
        embeddings_scale_by_sqrt_dim=True, attention_window_size=16,
        logits_soft_cap=30.0, lru_width=64)
  return common.GriffinConfig.from_preset(
      common.Preset.RECURRENT_GEMMA_2B_V1, vocab_size=256_000)


def random_params(model, seed: int = 0):
  """Random bf16 parameters in the official tree, created on the device."""
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                         jnp.zeros((1, 1), jnp.int32)))["params"]
  leaves, treedef = jax.tree.flatten(abstract)

  @functools.partial(jax.jit, static_argnums=(1,))
  def make(i, shape):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    fan_in = shape[-2] if len(shape) >= 2 else shape[-1]
    return (jax.random.normal(key, shape, jnp.float32) *
            fan_in ** -0.5).astype(jnp.bfloat16)

  return jax.tree.unflatten(
      treedef, [make(i, tuple(l.shape)) for i, l in enumerate(leaves)])


class FakeVocab:
  """The SentencePiece methods the official sampler calls."""

  def __init__(self, size):
    self.size = size

  def pad_id(self):
    return 0

  def eos_id(self):
    return 1

  def bos_id(self):
    return 2


def bytes_of(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def memory(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {"temp_gb": m.temp_size_in_bytes / 1e9,
          "argument_gb": m.argument_size_in_bytes / 1e9,
          "output_gb": m.output_size_in_bytes / 1e9,
          "alias_gb": m.alias_size_in_bytes / 1e9}


def peak_gb() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 1e9


# Ours ------------------------------------------------------------------------


class Ours:
  """Our decode loop, compiled once per batch size."""

  def __init__(self, model, batch: int, capacity: int, sync_every: int,
               pad_small_rows: bool | None = None):
    from recurrentgemma_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top
    from recurrentgemma_jax.sampling import decode as decode_lib  # pylint: disable=g-import-not-at-top
    from recurrentgemma_jax.sampling import logits as logits_lib  # pylint: disable=g-import-not-at-top
    from recurrentgemma_jax.sampling import stopping  # pylint: disable=g-import-not-at-top

    # None: the sampler's default (padded on GPU); the shared model itself
    # is left as it is.
    self.sampler = Sampler(model, sync_every=sync_every,
                           pad_small_rows=pad_small_rows)
    self.model = model
    self.batch = batch
    self.capacity = capacity
    self.inputs = functools.partial(
        decode_lib.DecodeInputs.create,
        row_keys=jax.random.split(jax.random.key(0), batch),
        criteria=stopping.StopCriteria())
    self.options = decode_lib.DecodeOptions(
        capacity=capacity, sampling=logits_lib.SamplingMode(greedy=True),
        sync_every=sync_every)
    self.fn = self.sampler._decode[True]  # pylint: disable=protected-access
    # Compiles the one-token prefill here, not inside compile()'s timer.
    jax.block_until_ready(self.state())

  def state(self):
    """The state after each row's first token (`first_tokens`), as the
    official loop starts: both then generate from the same prefix."""
    first = first_tokens(self.batch, self.model.config.vocab_size)[:, None]
    return self.sampler._prefill(  # pylint: disable=protected-access
        self.sampler.params, first, jnp.zeros_like(first))

  def _args(self, steps):
    return (self.sampler.params, self.state(), self.inputs(steps))

  def compile(self):
    lowered = self.fn.lower(*self._args(1), self.options)
    self.compiled = lowered.compile()
    return self.compiled

  def run(self, steps: int) -> float:
    args = self._args(steps)
    jax.block_until_ready(args)
    start = time.perf_counter()
    out = self.compiled(*args)
    np.asarray(out.lengths)  # waits for the device
    elapsed = time.perf_counter() - start
    n = int(np.asarray(out.lengths).min())
    assert n == steps, (n, steps)
    self.tokens = np.asarray(out.tokens)[:, :steps]  # the greedy tokens
    return elapsed


def token_agreement(got: np.ndarray, reference: np.ndarray) -> dict:
  """How far two `[B, N]` greedy continuations of one prefix agree: the
  share of equal positions, the rows equal throughout, and the median over
  rows of the first differing step (N where a row never differs).

  Two correct implementations may disagree: greedy decoding diverges for
  good at the first near-tie of the top logits that they round
  differently (bfloat16 products summed in another order), so the first
  difference says more than the share. Agreement is reported, not
  required; the products' exactness is tested against float64 on CPU
  (tests/model/test_small_rows.py)."""
  equal = got == reference
  first = np.where(equal.all(1), equal.shape[1], np.argmin(equal, axis=1))
  return {"agreement": float(equal.mean()),
          "rows_identical": int(equal.all(1).sum()),
          "first_difference": float(np.median(first))}


def first_tokens(batch: int, vocab_size: int) -> jax.Array:
  """`[B]` first token of each row, the prefix both loops start from
  (ids from 3, past the pad, EOS and BOS ids of `FakeVocab`)."""
  return jax.random.randint(jax.random.key(1), (batch,), 3,
                            min(1000, vocab_size))


# Official --------------------------------------------------------------------


class Official:
  """`recurrentgemma.jax.Sampler`'s jitted while loop."""

  def __init__(self, model, params, batch: int, capacity: int):
    from recurrentgemma.jax import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

    self.lib = sampler_lib
    self.model = model
    self.params = params
    self.batch = batch
    self.capacity = capacity
    self.sampler = sampler_lib.Sampler(
        model=model, vocab=FakeVocab(model.config.vocab_size), params=params,
        deterministic_sampling=True)

  def state(self, steps: int):
    b = self.batch
    tokens = jnp.zeros((b, self.capacity + 1), jnp.int32).at[:, 0].set(
        first_tokens(b, self.model.config.vocab_size))
    return self.lib.SamplingState(
        tokens_buffer=tokens,
        rng=jax.random.PRNGKey(0),
        step=jnp.array(0, jnp.int32),
        total_steps=jnp.array(steps + 1, jnp.int32),
        positions=jnp.zeros((b, 1), jnp.int32),
        cache=self.model.init_cache(b, jnp.bfloat16),
        done=jnp.zeros((b,), bool),
        logits_buffer=None,
    )

  def compile(self):
    fn = self.sampler._compiled_sample_fn  # pylint: disable=protected-access
    self.compiled = fn.lower(self.params, self.state(1), False).compile()
    return self.compiled

  def run(self, steps: int) -> float:
    state = self.state(steps)
    jax.block_until_ready(state)
    start = time.perf_counter()
    out = self.compiled(self.params, state)
    n = int(np.asarray(out.step))
    elapsed = time.perf_counter() - start
    assert n == steps, (n, steps)
    # The buffer's first token is the prefix; then the greedy tokens.
    self.tokens = np.asarray(out.tokens_buffer)[:, 1:steps + 1]
    return elapsed


# Main ------------------------------------------------------------------------


def profile(runner, name: str, folder: str, steps: int) -> None:
  """The compiled loop's HLO and a `jax.profiler` trace of one `steps`-step
  run under `folder/name`."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, name + ".hlo.txt"), "w",
            encoding="utf-8") as f:
    f.write(runner.compiled.as_text())
  with jax.profiler.trace(os.path.join(folder, name),
                          create_perfetto_trace=True):
    runner.run(steps)


def environment() -> dict[str, str]:
  env = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="minutes"),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "device": str(jax.devices()[0].device_kind),
      "backend": jax.default_backend(),
  }
  try:
    import flax  # pylint: disable=g-import-not-at-top

    env["flax"] = flax.__version__
  except ImportError:
    pass
  try:
    env["driver"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return env


# Our rows of --impls: the Sampler's `pad_small_rows` (None: its default).
_OURS_PADDING = {"ours": None, "ours_padded": True, "ours_unpadded": False}


@contextlib.contextmanager
def official_type_checks_off() -> Iterator[None]:
  """The official sampler type-checks its state with typeguard (through
  jaxtyping), which rejects the placeholders `jit(...).lower` passes. The
  checks run at trace time only, so turning them off changes no compiled
  code. jaxtyping reads the switch at every call; it is restored after."""
  import jaxtyping  # pylint: disable=g-import-not-at-top

  before = jaxtyping.config.jaxtyping_disable
  jaxtyping.config.update("jaxtyping_disable", True)
  try:
    yield
  finally:
    jaxtyping.config.update("jaxtyping_disable", before)


def main(argv=None) -> int:
  with official_type_checks_off():
    return _main(argv)


def _main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="64,1")
  parser.add_argument("--extra_batches", default="16,256",
                      help="run after the main ones, while time remains")
  parser.add_argument("--steps", type=int, default=2048)
  parser.add_argument("--short_steps", type=int, default=256)
  parser.add_argument("--impls", default="ours,official",
                      help="ours (the Sampler's defaults: on GPU, Dense "
                      "products of < 16 rows padded to 16, "
                      "nn.linear.pad_small_rows), ours_padded and "
                      "ours_unpadded (padding forced on or off), official")
  parser.add_argument("--sync_every", type=int, default=8)
  parser.add_argument("--budget_s", type=float, default=200.0,
                      help="start no new measurement after this many seconds")
  parser.add_argument("--tiny", action="store_true",
                      help="a tiny model (CPU smoke test)")
  parser.add_argument("--out", default="")
  parser.add_argument("--profile", default="",
                      help="also write each loop's HLO and a device trace of "
                      "--profile_steps steps under this folder (read by "
                      "benchmarks/profile_breakdown.py --steps N)")
  parser.add_argument("--profile_steps", type=int, default=64)
  parser.add_argument("--quantize", default=None, choices=["int8"],
                      help="time our loop with int8 weights quantized from "
                      "the same bf16 weights (the official stays bf16)")
  args = parser.parse_args(argv)
  start_clock()
  for impl in args.impls.split(","):
    if impl not in _OURS_PADDING and impl != "official":
      parser.error(f"--impls: unknown {impl!r}; allowed: "
                   f"{', '.join(_OURS_PADDING)}, official")

  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma import jax as official_jax  # pylint: disable=g-import-not-at-top
  import recurrentgemma_jax as rg  # pylint: disable=g-import-not-at-top

  env = environment()
  log(f"environment: {env}")
  cfg = official_config(args.tiny)
  official_model = official_jax.Griffin(
      cfg, gradient_checkpointing=False, dtype=jnp.bfloat16,
      param_dtype=jnp.bfloat16)
  params = random_params(official_model)
  jax.block_until_ready(params)
  log(f"random bf16 weights: {bytes_of(params) / 1e9:.2f} GB")
  ours_model = rg.from_official(
      params, attention_window_size=cfg.attention_window_size,
      logits_soft_cap=cfg.logits_soft_cap,
      embeddings_scale_by_sqrt_dim=cfg.embeddings_scale_by_sqrt_dim,
      dtype="bfloat16", param_dtype="bfloat16")
  ours_name = "ours"
  if args.quantize:
    # Quantized once from the same bf16 weights; the official loop keeps
    # them in bf16.
    ours_model = rg.quantize_int8(ours_model)
    jax.block_until_ready(nnx.state(ours_model))
    ours_name = "ours_" + args.quantize
    log(f"ours quantized to {args.quantize}: "
        f"{bytes_of(nnx.state(ours_model)) / 1e9:.2f} GB")

  impls = args.impls.split(",")
  results = []
  # (batch, steps) -> {row name: [B, steps] greedy tokens}; every row
  # starts from the same one-token prefix.
  generated = {}

  def measure(impl: str, batch: int, steps_list):
    if elapsed_s() > args.budget_s:
      log(f"skip {impl} batch {batch}: past the time budget")
      return
    capacity = max(steps_list)
    name = (ours_name + impl.removeprefix("ours") if impl in _OURS_PADDING
            else impl)
    try:
      if impl == "official":
        runner = Official(official_model, params, batch, capacity)
      else:
        runner = Ours(ours_model, batch, capacity, args.sync_every,
                      pad_small_rows=_OURS_PADDING[impl])
      start = time.perf_counter()
      compiled = runner.compile()
      compile_s = time.perf_counter() - start
      mem = memory(compiled)
      runner.run(min(32, capacity))  # warm-up
      if args.profile:
        profile(runner, f"{name}_b{batch}", args.profile, args.profile_steps)
      for steps in steps_list:
        elapsed = runner.run(steps)
        row = {"impl": name, "batch": batch, "steps": steps,
               "seconds": elapsed, "ms_per_step": 1e3 * elapsed / steps,
               "tokens_per_s": batch * steps / elapsed,
               "compile_s": compile_s, "peak_gb": peak_gb(), **mem}
        generated.setdefault((batch, steps), {})[name] = runner.tokens
        row["distinct_tokens"] = int(np.unique(runner.tokens).size)
        results.append(row)
        log(f"{name:13s} B={batch:4d} steps={steps:5d}: "
            f"{row['ms_per_step']:.3f} ms/step, "
            f"{row['tokens_per_s']:,.0f} tokens/s (compile {compile_s:.1f}s, "
            f"temp {mem.get('temp_gb', float('nan')):.3f} GB)")
    except Exception as e:  # pylint: disable=broad-except
      log(f"{name} batch {batch} FAILED: {type(e).__name__}: {e}")
      results.append({"impl": name, "batch": batch, "error": repr(e)[:2000]})

  # Most important first: ours and the official at each main batch size,
  # then the extra batch sizes while time remains.
  batches = [int(b) for b in args.batches.split(",") if b]
  plan = []
  for batch in batches:
    for impl in impls:
      if impl.startswith("ours"):
        plan.append((impl, batch, [args.short_steps, args.steps]))
      elif impl == "official":
        plan.append((impl, batch, [args.steps]))
  for batch in [int(b) for b in args.extra_batches.split(",") if b]:
    for impl in impls:
      plan.append((impl, batch, [min(512, args.steps)]))
  for impl, batch, steps_list in plan:
    measure(impl, batch, steps_list)

  print("\n| impl | batch | steps | ms/step | tokens/s | temp GB | compile s |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['impl']} | {r['batch']} | - | error | - | - | - |")
      continue
    print(f"| {r['impl']} | {r['batch']} | {r['steps']} | "
          f"{r['ms_per_step']:.3f} | {r['tokens_per_s']:,.0f} | "
          f"{r.get('temp_gb', float('nan')):.3f} | {r['compile_s']:.1f} |")
  ratios = {}
  for r in results:
    if r.get("impl") != "official" or "error" in r:
      continue
    for o in results:
      if (o.get("impl", "").startswith("ours") and "error" not in o and
          o["batch"] == r["batch"] and o["steps"] == r["steps"]):
        key = f"{o['impl']}/official B={r['batch']} steps={r['steps']}"
        ratios[key] = o["tokens_per_s"] / r["tokens_per_s"]
  for k, v in ratios.items():
    print(f"{k}: {v:.2f}x")
  # Greedy tokens of each row against the official's and against our
  # first row's, at the same batch and length (all start from one prefix).
  for r in results:
    if r.get("impl") == "official" or "error" in r:
      continue
    same = generated.get((r["batch"], r["steps"]), {})
    ours_first = next((k for k in same if k != "official"), None)
    for reference in ("official", ours_first):
      if reference not in same or reference == r["impl"]:
        continue
      agreement = token_agreement(same[r["impl"]], same[reference])
      r.setdefault("tokens_vs", {})[reference] = agreement
      print(f"{r['impl']} B={r['batch']} steps={r['steps']}: greedy tokens "
            f"equal to {reference}'s at {100 * agreement['agreement']:.1f}% "
            f"of positions; rows identical {agreement['rows_identical']}/"
            f"{r['batch']}; first difference at step "
            f"{agreement['first_difference']} (median over rows)")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"env": env, "args": vars(args), "results": results,
                 "ratios": ratios}, f, indent=1)
  log("done")
  return 0


if __name__ == "__main__":
  sys.exit(main())
