r"""The quality cost of int8 weights for a trained model, on its own
held-out data.

Loads a training workdir (`recurrentgemma_jax.load_workdir`: the newest
complete checkpoint, or `--step`), quantizes it (`rg.quantize_int8`) and
compares the float and int8 models on:

- the experiment's eval split, built as `recurrentgemma evaluate` builds it
  (the run's config.json, `data.pipeline.make_task`, the first
  `eval_batches` batches, the loss summed over the masked tokens): eval
  loss and next-token accuracy of each, the largest |logit difference| over
  those positions (against the largest |logit|), and how often the argmaxes
  agree;
- free-running greedy generation: `--new_tokens` tokens from each of
  `--prompts` held-out prompts (the first `--prompt_len` tokens of the
  first eval rows): the fraction of positions with the same token, and how
  many tokens each prompt's two generations share before they first differ.

Command (the docs/benchmarks.md numbers; CPU):
  recurrentgemma train --config=experiments/lm.py:runlocal --workdir=/tmp/lm_q
  JAX_PLATFORMS=cpu python benchmarks/quantize_quality.py \
      --workdir=/tmp/lm_q --out=/tmp/lm_q/int8_quality.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np


def _bytes(model) -> int:
  from flax import nnx  # pylint: disable=g-import-not-at-top

  return sum(x.size * x.dtype.itemsize for x in
             jax.tree.leaves(nnx.state(model)))


def eval_batches(workdir: str, batches: int | None):
  """The first `batches` (default: the run's `eval_batches`) batches of the
  run's eval split, each a dict of `[B, T]` numpy arrays."""
  from recurrentgemma_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  config = config_lib.validate(loop.load_workdir_config(workdir))
  n = config.eval_batches if batches is None else batches
  if n < 1:
    raise ConfigError(f"eval_batches={n}: give --eval_batches >= 1")
  task = pipeline.make_task(config, 0, 1)
  out = list(itertools.islice(task.eval(), n))
  if not out:
    raise ConfigError(f"the eval split of {workdir} is empty")
  return out


def _compare_fn(float_graph, int8_graph):
  """jit(fparams, qparams, batch) -> summed statistics of both models."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loss as loss_lib  # pylint: disable=g-import-not-at-top

  def fn(fparams, qparams, batch):
    args = (batch["inputs"], batch["segment_pos"])
    lf = nnx.merge(float_graph, fparams)(*args).astype(jnp.float32)
    lq = nnx.merge(int8_graph, qparams)(*args).astype(jnp.float32)
    sf = loss_lib.token_stats(lf, batch["targets"], batch["mask"])
    sq = loss_lib.token_stats(lq, batch["targets"], batch["mask"])
    used = (batch["mask"] > 0)[..., None]
    return {
        "float": sf, "int8": sq,
        "max_logit_error": jnp.max(jnp.where(used, jnp.abs(lf - lq), 0.0)),
        "max_abs_logit": jnp.max(jnp.where(used, jnp.abs(lf), 0.0)),
        "argmax_equal": jnp.sum((lf.argmax(-1) == lq.argmax(-1)) &
                                used[..., 0]),
        "positions": jnp.sum(used),
    }

  return jax.jit(fn)


def eval_comparison(model, qmodel, batches) -> dict:
  """Eval loss / accuracy of both models and their logit differences."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.config import check_token_ids  # pylint: disable=g-import-not-at-top

  fgraph, fparams = nnx.split(model)
  qgraph, qparams = nnx.split(qmodel)
  fn = _compare_fn(fgraph, qgraph)
  sums: dict = {}
  maxima = {"max_logit_error": 0.0, "max_abs_logit": 0.0}
  for batch in batches:
    for key in ("inputs", "targets"):
      check_token_ids(batch[key], model.config.vocab_size,
                      name=f"eval batch {key!r}")
    out = jax.device_get(fn(fparams, qparams,
                            {k: jnp.asarray(v) for k, v in batch.items()}))
    for name in ("float", "int8"):
      for k, v in out[name].items():
        sums.setdefault(name, {}).setdefault(k, 0.0)
        sums[name][k] += float(v)
    for k in ("argmax_equal", "positions"):
      sums[k] = sums.get(k, 0) + int(out[k])
    for k in maxima:
      maxima[k] = max(maxima[k], float(out[k]))
  report = {}
  for name in ("float", "int8"):
    s = sums[name]
    report[name] = {"loss": s["loss"] / s["tokens"],
                    "accuracy": s["correct"] / s["tokens"],
                    "tokens": s["tokens"]}
  report["loss_delta"] = report["int8"]["loss"] - report["float"]["loss"]
  report.update(maxima)
  report["argmax_agreement"] = sums["argmax_equal"] / sums["positions"]
  report["positions"] = sums["positions"]
  return report


def greedy_comparison(model, qmodel, prompts: list[list[int]],
                      new_tokens: int) -> dict:
  """Free-running greedy generations of both models from `prompts`."""
  from recurrentgemma_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top

  outs = [Sampler(m).generate(prompts, new_tokens, stop_at_eos=False).tokens
          for m in (model, qmodel)]
  same, prefix = [], []
  for f, q in zip(*outs):
    f, q = np.asarray(f), np.asarray(q)
    assert len(f) == len(q) == new_tokens, (len(f), len(q))
    equal = f == q
    same.append(float(equal.mean()))
    prefix.append(int(new_tokens if equal.all() else np.argmin(equal)))
  return {"prompts": len(prompts), "prompt_len": len(prompts[0]),
          "new_tokens": new_tokens, "agreement": float(np.mean(same)),
          "identical_prefix": prefix,
          "all_identical": all(p == new_tokens for p in prefix)}


def measure(workdir: str, *, step: int | None = None,
            batches: int | None = None, prompts: int = 4,
            prompt_len: int = 64, new_tokens: int = 512,
            dtype: str | None = None) -> dict:
  """The report of the module docstring, as a dict.

  Raises:
    ConfigError: not a workdir with a complete checkpoint, an empty eval
      split, or prompts the eval rows cannot provide.
  """
  import recurrentgemma_jax as rg  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.config import ConfigError  # pylint: disable=g-import-not-at-top

  if prompts < 1 or prompt_len < 1 or new_tokens < 1:
    raise ConfigError(f"--prompts, --prompt_len and --new_tokens must be "
                      f">= 1, got {prompts}, {prompt_len}, {new_tokens}")
  overrides = {} if dtype is None else {"dtype": dtype, "param_dtype": dtype}
  model, _, step = rg.load_workdir(workdir, step, **overrides)
  data = eval_batches(workdir, batches)
  rows, length = data[0]["inputs"].shape
  if prompts > rows or prompt_len > length:
    raise ConfigError(
        f"{prompts} prompts of {prompt_len} tokens: the eval batches hold "
        f"{rows} rows of {length} tokens")
  qmodel = rg.quantize_int8(model)
  report = {"workdir": workdir, "step": step, "dtype": model.config.dtype,
            "weight_bytes": {"float": _bytes(model), "int8": _bytes(qmodel)},
            "eval_batches": len(data),
            "eval_batch_shape": [rows, length]}
  report.update(eval_comparison(model, qmodel, data))
  held_out = [[int(t) for t in r[:prompt_len]]
              for r in data[0]["inputs"][:prompts]]
  report["greedy"] = greedy_comparison(model, qmodel, held_out, new_tokens)
  return report


def print_table(r: dict) -> None:
  g = r["greedy"]
  print(f"\n{r['workdir']} step {r['step']} ({r['dtype']}), "
        f"{r['eval_batches']} eval batches of {r['eval_batch_shape'][0]} x "
        f"{r['eval_batch_shape'][1]} ({r['float']['tokens']:.0f} tokens)")
  print(f"\n| | {r['dtype']} | int8 |")
  print("|---|---|---|")
  print(f"| eval loss | {r['float']['loss']:.4f} | {r['int8']['loss']:.4f} |")
  print(f"| eval accuracy | {r['float']['accuracy']:.4f} | "
        f"{r['int8']['accuracy']:.4f} |")
  print(f"| weight MB | {r['weight_bytes']['float'] / 1e6:.2f} | "
        f"{r['weight_bytes']['int8'] / 1e6:.2f} |")
  print(f"\nloss delta {r['loss_delta']:+.5f}; max logit error "
        f"{r['max_logit_error']:.4f} (largest |logit| "
        f"{r['max_abs_logit']:.2f}); argmax equal at "
        f"{100 * r['argmax_agreement']:.2f}% of {r['positions']} positions")
  print(f"greedy, {g['prompts']} held-out prompts of {g['prompt_len']} "
        f"tokens, {g['new_tokens']} new tokens: {100 * g['agreement']:.1f}% "
        f"of positions equal; identical for the first "
        f"{g['identical_prefix']} tokens")


def main(argv=None) -> int:
  from recurrentgemma_jax.config import ConfigError  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: the newest complete)")
  parser.add_argument("--eval_batches", type=int, default=None,
                      help="default: the run's eval_batches")
  parser.add_argument("--prompts", type=int, default=4)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=512)
  parser.add_argument("--dtype", default=None,
                      choices=["float32", "bfloat16"],
                      help="cast the weights first (default: the run's)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  try:
    report = measure(args.workdir, step=args.step, batches=args.eval_batches,
                     prompts=args.prompts, prompt_len=args.prompt_len,
                     new_tokens=args.new_tokens, dtype=args.dtype)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print_table(report)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
