r"""Prefill throughput: our chunked prefill against the official model's.

Both run on the same random weights (the official parameter tree; ours is
`from_official` of it, sharing the arrays), in one process, from the same
random prompts (every row the same length, no padding):

- ours: an empty state (`model.init_cache`) fed the prompt in chunks of at
  most `max_chunk` tokens, one call of the jitted `decode.extend` per chunk,
  exactly as `Sampler.extend` splits it (powers of two); each `--max_chunks`
  value is one row. A chunk as long as the prompt is one pass over it.
- official: `recurrentgemma.jax.Sampler`'s jitted `_prompt_processing_fn`
  (one pass over the prompt but its last token, then that token with the
  cache; `return_logits=True` for the comparison, which adds one
  `[B, 2, vocab]` buffer).

Timed: each compiled program (ahead of time, `lower().compile()`; compile
time reported apart) after one warm-up call, `--repeats` calls from inputs
already on the device; the row's seconds are the median (tokens/s = batch x
prompt length / seconds). `api_s` times our public `Sampler.extend` on the
same prompt from a host array, once per case for the first `--max_chunks`
value: it adds the host-side handling of the token lists.

Checked, on the first `--check_rows` rows of each case against one forward
pass of our model over the prompt and one more token: the prefill's
next-token logits (the pass's logits at the prompt's last position) and,
after feeding that token to the prefilled state, the logits of the token
after it; on every row, our logits against the official prefill's; and
`Sampler.extend`'s state against the timed loop's (bit for bit). Errors
are max |ours - reference| / max |reference| (`--tolerance`, default 1e-4
in float32 and 3e-2 in bfloat16) and the fraction of equal argmaxes. A
failed check prints CHECK FAILED and makes the exit status 1.

Command (one H200, the wheels carried in .whl as for benchmarks/sample.py;
results in docs/benchmarks.md, "Prefill"):
  PYTHONPATH=/tmp/site:$PWD timeout 580 python3 benchmarks/prefill.py \
      --cases 1x8192,64x2048 --max_chunks 256,1024,8192 --out $OUT/prefill.json
CPU smoke test (a tiny config):
  JAX_PLATFORMS=cpu python benchmarks/prefill.py --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # run by path or loaded from a test
  sys.path.insert(0, _HERE)
import sample  # pylint: disable=g-import-not-at-top,wrong-import-position

log = sample.log
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}
FULL_DEFAULTS = {"cases": "1x8192,64x2048", "max_chunks": "256,1024,8192"}
TINY_DEFAULTS = {"cases": "1x256,4x64", "max_chunks": "16,64,256"}


def parse_cases(text: str) -> list[tuple[int, int]]:
  """"1x8192,64x2048" -> [(batch, prompt length), ...]."""
  cases = []
  for item in text.split(","):
    try:
      b, p = (int(v) for v in item.strip().split("x"))
    except ValueError:
      raise ValueError(f"--cases: {item!r} is not BATCHxLENGTH "
                       "(e.g. 1x8192,64x2048)") from None
    if b < 1 or p < 2:
      raise ValueError(f"--cases: {item!r} needs batch >= 1 and length >= 2")
    cases.append((b, p))
  return cases


def parse_chunks(text: str) -> list[int]:
  try:
    chunks = [int(v) for v in text.split(",")]
  except ValueError:
    raise ValueError(f"--max_chunks: {text!r} is not a list of integers "
                     "(e.g. 256,1024,8192)") from None
  if min(chunks) < 1:
    raise ValueError(f"--max_chunks: {text!r} needs integers >= 1")
  return chunks


def chunk_plan(length: int, max_chunk: int) -> list[int]:
  """The chunk sizes `Sampler.extend` feeds `length` tokens in (powers of
  two, at most `max_chunk` rounded up to one; checked against it)."""
  max_chunk = 1 << max(0, math.ceil(math.log2(max_chunk)))
  sizes, done = [], 0
  while done < length:
    sizes.append(min(max_chunk, 1 << int(math.log2(length - done))))
    done += sizes[-1]
  return sizes


def compare(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
  """`got`, `ref [R, V]` -> max |got - ref| over max |ref|, argmax
  agreement."""
  got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
  max_abs = float(np.max(np.abs(got - ref)))
  scale = float(np.max(np.abs(ref)))
  return {"max_abs": max_abs, "scale": scale,
          "rel": max_abs / max(scale, 1e-30),
          "argmax_agree": float(np.mean(got.argmax(-1) == ref.argmax(-1)))}


def timed_calls(run, repeats: int) -> list[float]:
  """Seconds of `repeats` calls of `run`, after one warm-up call."""
  run()
  return [run() for _ in range(repeats)]


# Ours ------------------------------------------------------------------------


class Ours:
  """Our chunked prefill of `[B, P]` prompts, compiled per chunk size."""

  def __init__(self, model, max_chunk: int, prompt: np.ndarray):
    from recurrentgemma_jax.sampling import DecodeState  # pylint: disable=g-import-not-at-top
    from recurrentgemma_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top

    self.sampler = Sampler(model, max_chunk=max_chunk)
    self.prompt = prompt
    b, p = prompt.shape
    self.plan = chunk_plan(p, max_chunk)
    self.empty = DecodeState(
        cache=model.init_cache(b),
        logits=jnp.zeros((b, model.config.vocab_size),
                         jnp.dtype(model.config.dtype)),
        segment_pos=jnp.zeros((b,), jnp.int32))
    starts = np.cumsum([0] + self.plan)
    self.chunks = [jnp.asarray(prompt[:, s:s + n])
                   for s, n in zip(starts, self.plan)]

  def compile(self) -> float:
    """Compiles one program per chunk size; returns the seconds taken."""
    start = time.perf_counter()
    self.compiled = {}
    for n in sorted(set(self.plan)):
      chunk = jax.ShapeDtypeStruct((self.prompt.shape[0], n), jnp.int32)
      self.compiled[n] = self.sampler._extend.lower(  # pylint: disable=protected-access
          self.sampler.params, self.empty, chunk).compile()
    return time.perf_counter() - start

  def temp_gb(self) -> float | None:
    mems = [sample.memory(c).get("temp_gb") for c in self.compiled.values()]
    mems = [m for m in mems if m is not None]
    return max(mems) if mems else None

  def prefill(self):
    state = self.empty
    for chunk in self.chunks:
      state = self.compiled[chunk.shape[1]](self.sampler.params, state, chunk)
    return state

  def run(self) -> float:
    jax.block_until_ready((self.empty, self.chunks))
    start = time.perf_counter()
    self.state = self.prefill()
    np.asarray(self.state.logits)  # waits for the device
    return time.perf_counter() - start

  def run_api(self) -> float:
    """The public `Sampler.extend` from a host array (host work included)."""
    start = time.perf_counter()
    self.api_state = self.sampler.extend(self.empty, self.prompt)
    np.asarray(self.api_state.logits)
    return time.perf_counter() - start

  def next_logits(self, tokens: np.ndarray) -> np.ndarray:
    """`[B, V]` logits after the prefilled state and `tokens [B]`."""
    state = self.sampler.extend(self.state, tokens[:, None])
    return np.asarray(state.logits, np.float32)


# Official --------------------------------------------------------------------


class Official:
  """`recurrentgemma.jax.Sampler`'s jitted prompt processing."""

  def __init__(self, model, params, prompt: np.ndarray):
    from recurrentgemma.jax import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

    self.sampler = sampler_lib.Sampler(
        model=model, vocab=sample.FakeVocab(model.config.vocab_size),
        params=params, deterministic_sampling=True)
    self.params = params
    self.prompt = prompt

  def inputs(self):
    """Fresh device inputs (the official function donates them)."""
    b, p = self.prompt.shape
    return (jnp.asarray(self.prompt), jax.random.PRNGKey(0),
            jnp.full((b,), p, jnp.int32))

  def compile(self) -> float:
    start = time.perf_counter()
    fn = self.sampler._compiled_prompt_processing_fn  # pylint: disable=protected-access
    # Static: 2 generation steps (so that the cache is returned),
    # return_logits, no echo.
    self.compiled = fn.lower(self.params, *self.inputs(), 2, True,
                             False).compile()
    return time.perf_counter() - start

  def run(self) -> float:
    args = self.inputs()
    jax.block_until_ready(args)
    start = time.perf_counter()
    out = self.compiled(self.params, *args)
    self.logits = np.asarray(out.logits_buffer[:, 0], np.float32)
    return time.perf_counter() - start


# Main ------------------------------------------------------------------------


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
  """`[R, 2, V]` float32 logits of one forward pass over `tokens [R, P+1]`
  at its last two positions."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  graphdef, params = nnx.split(model)
  seg = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32),
                        tokens.shape)
  fn = jax.jit(lambda p, t, s: nnx.merge(graphdef, p)(t, s)[:, -2:].astype(
      jnp.float32))
  return np.asarray(fn(params, tokens, seg))


def build_models(tiny: bool, dtype: str):
  """(official model, official params, our model) on one set of weights."""
  from recurrentgemma import jax as official_jax  # pylint: disable=g-import-not-at-top
  import recurrentgemma_jax as rg  # pylint: disable=g-import-not-at-top

  cfg = sample.official_config(tiny)
  dt = jnp.dtype(dtype)
  official_model = official_jax.Griffin(
      cfg, gradient_checkpointing=False, dtype=dt, param_dtype=dt)
  params = sample.random_params(official_model)
  if dt != jnp.bfloat16:
    params = jax.tree.map(lambda x: x.astype(dt), params)
  jax.block_until_ready(params)
  ours = rg.from_official(
      params, attention_window_size=cfg.attention_window_size,
      logits_soft_cap=cfg.logits_soft_cap,
      embeddings_scale_by_sqrt_dim=cfg.embeddings_scale_by_sqrt_dim,
      dtype=dtype, param_dtype=dtype)
  return official_model, params, ours


def main(argv=None) -> int:
  # As in sample.py: the official sampler's typeguard checks reject the
  # placeholders `lower` passes; they run at trace time only.
  with sample.official_type_checks_off():
    return _main(argv)


def _main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default=None,
                      help="BATCHxLENGTH,... (default "
                      f"{FULL_DEFAULTS['cases']}; --tiny "
                      f"{TINY_DEFAULTS['cases']})")
  parser.add_argument("--max_chunks", default=None,
                      help="our chunk sizes, one row each (default "
                      f"{FULL_DEFAULTS['max_chunks']}; --tiny "
                      f"{TINY_DEFAULTS['max_chunks']})")
  parser.add_argument("--impls", default="ours,official")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed calls per row (median)")
  parser.add_argument("--check_rows", type=int, default=2,
                      help="rows checked against one forward pass")
  parser.add_argument("--dtype", default="bfloat16",
                      choices=sorted(TOLERANCE))
  parser.add_argument("--tolerance", type=float, default=None,
                      help="max error relative to the largest reference "
                      "logit (default by dtype: "
                      f"{TOLERANCE})")
  parser.add_argument("--budget_s", type=float, default=480.0,
                      help="start no new case after this many seconds")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tiny", action="store_true",
                      help="a tiny model (CPU smoke test)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  sample.start_clock()
  defaults = TINY_DEFAULTS if args.tiny else FULL_DEFAULTS
  try:
    cases = parse_cases(args.cases or defaults["cases"])
    max_chunks = parse_chunks(args.max_chunks or defaults["max_chunks"])
    impls = args.impls.split(",")
    if not impls or set(impls) - {"ours", "official"}:
      raise ValueError(f"--impls: {args.impls!r} is not a list of ours, "
                       "official")
    if args.repeats < 1 or args.check_rows < 1:
      raise ValueError("--repeats and --check_rows must be >= 1")
  except ValueError as e:
    parser.error(str(e))
  tolerance = args.tolerance or TOLERANCE[args.dtype]

  if args.dtype == "float32":  # no TF32 / bf16 passes in float32 matmuls
    jax.config.update("jax_default_matmul_precision", "highest")
  env = sample.environment()
  log(f"environment: {env}")
  official_model, params, ours_model = build_models(args.tiny, args.dtype)
  vocab = ours_model.config.vocab_size
  log(f"random {args.dtype} weights: {sample.bytes_of(params) / 1e9:.2f} GB")

  results, checks, skipped = [], [], []
  rng = np.random.default_rng(args.seed)

  def passed() -> bool:
    return bool(checks) and all(c["ok"] for c in checks)

  def save(ratios=None):
    # After every case too: a run cut short by its time limit keeps what it
    # measured and checked ("finished": false), and a kill during a write
    # leaves the previous report whole (written aside, then renamed).
    if args.out:
      with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"env": env, "args": vars(args), "tolerance": tolerance,
                   "results": results, "checks": checks,
                   "ratios": ratios or {}, "skipped": skipped,
                   # Every case measured and checked.
                   "finished": ratios is not None and not skipped,
                   "checks_passed": passed()}, f, indent=1)
      os.replace(args.out + ".tmp", args.out)

  for b, p in cases:
    if sample.elapsed_s() > args.budget_s:
      log(f"skip {b}x{p}: past the time budget")
      skipped.append(f"{b}x{p}")
      continue
    case = f"{b}x{p}"
    # The prompt and one more token (for the cache-continued logits).
    tokens = rng.integers(3, vocab, (b, p + 1), dtype=np.int32)
    prompt = tokens[:, :p]
    row_common = {"case": case, "batch": b, "prompt_len": p}
    check = {"case": case, "tolerance": tolerance, "chunks": {}}
    official_logits = None
    if "official" in impls:
      runner = Official(official_model, params, prompt)
      compile_s = runner.compile()
      times = timed_calls(runner.run, args.repeats)
      official_logits = runner.logits
      results.append(_row(row_common, "official", times, compile_s,
                          sample.memory(runner.compiled).get("temp_gb")))
      del runner
    if "ours" in impls:
      r = min(b, args.check_rows)
      ref = reference_logits(ours_model, tokens[:r])
      seen = set()
      for max_chunk in max_chunks:
        runner = Ours(ours_model, max_chunk, prompt)
        if tuple(runner.plan) in seen:  # e.g. every chunk >= the prompt
          continue
        seen.add(tuple(runner.plan))
        compile_s = runner.compile()
        times = timed_calls(runner.run, args.repeats)
        row = _row(row_common, "ours", times, compile_s, runner.temp_gb(),
                   max_chunk=runner.plan[0], chunks=len(runner.plan))
        got = np.asarray(runner.state.logits, np.float32)
        c = {"prefill_vs_forward": compare(got[:r], ref[:, 0]),
             "next_vs_forward": compare(
                 runner.next_logits(tokens[:, p])[:r], ref[:, 1])}
        if official_logits is not None:
          c["ours_vs_official"] = compare(got, official_logits)
        if len(seen) == 1:
          row["api_s"] = runner.run_api()
          c["api_equal"] = bool(np.array_equal(
              np.asarray(runner.api_state.logits), np.asarray(
                  runner.state.logits)))
        c["ok"] = (all(v["rel"] <= tolerance for v in c.values()
                       if isinstance(v, dict))
                   and c.get("api_equal", True))
        check["chunks"][str(runner.plan[0])] = c
        results.append(row)
        del runner
    check["ok"] = all(c["ok"] for c in check["chunks"].values())
    checks.append(check)
    for row in results:
      if row["case"] == case:
        log(f"{row['impl']:8s} {case} chunk {row.get('max_chunk', '-')}: "
            f"{row['tokens_per_s']:,.0f} tokens/s (median "
            f"{row['seconds']:.4f}s, compile {row['compile_s']:.1f}s)")
    for chunk, c in check["chunks"].items():
      worst = max(v["rel"] for v in c.values() if isinstance(v, dict))
      log(f"check {case} chunk {chunk}: worst relative logit error "
          f"{worst:.2e} (tolerance {tolerance:g}): "
          f"{'ok' if c['ok'] else 'FAILED'}")
    save()

  ratios = {}
  for o in results:
    if o["impl"] != "ours":
      continue
    for base in results:
      if base["impl"] == "official" and base["case"] == o["case"]:
        ratios[f"ours/official {o['case']} chunk {o['max_chunk']}"] = (
            o["tokens_per_s"] / base["tokens_per_s"])
  _print_tables(results, checks, ratios)
  ok = passed()
  save(ratios)
  if not checks:
    print("CHECK FAILED: no case was measured (every one past --budget_s)")
    return 1
  if not ok:
    print("CHECK FAILED: prefill logits differ beyond the tolerance "
          f"({tolerance:g}); see the checks above")
    return 1
  log("done")
  return 0


def _row(common: dict, impl: str, times: list[float], compile_s: float,
         temp_gb: float | None, **extra) -> dict:
  seconds = statistics.median(times)
  tokens = common["batch"] * common["prompt_len"]
  return {**common, "impl": impl, **extra, "seconds": seconds,
          "times": times, "tokens_per_s": tokens / seconds,
          "compile_s": compile_s, "temp_gb": temp_gb,
          "peak_gb": sample.peak_gb()}


def _print_tables(results, checks, ratios) -> None:
  print("\n| impl | case | max_chunk | chunks | median s | tokens/s | "
        "compile s | temp GB |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    temp = "-" if r["temp_gb"] is None else f"{r['temp_gb']:.3f}"
    print(f"| {r['impl']} | {r['case']} | {r.get('max_chunk', '-')} | "
          f"{r.get('chunks', 1)} | {r['seconds']:.4f} | "
          f"{r['tokens_per_s']:,.0f} | {r['compile_s']:.1f} | {temp} |")
  print("\n| case | max_chunk | check | max abs | rel | argmax equal |")
  print("|---|---|---|---|---|---|")
  for check in checks:
    for chunk, c in check["chunks"].items():
      for name, v in c.items():
        if isinstance(v, dict):
          print(f"| {check['case']} | {chunk} | {name} | {v['max_abs']:.3g} "
                f"| {v['rel']:.3g} | {v['argmax_agree']:.3f} |")
      if "api_equal" in c:
        print(f"| {check['case']} | {chunk} | Sampler.extend == timed loop "
              f"| {c['api_equal']} | | |")
  for k, v in ratios.items():
    print(f"{k}: {v:.2f}x")


if __name__ == "__main__":
  sys.exit(main())
