r"""The training loss's value and gradient: `training/loss.py`'s written-out
backward against autodiff of the same formula, in one process.

    python3 benchmarks/loss.py [--shape 8,2048,32000] [--dtype bfloat16] \
        [--runs 11] [--out loss.json]

Both compute `sum(log Z - target logit) + 1e-4 * sum(log Z ^ 2)` over
random logits and targets and its gradient with respect to the logits (the
part of a train step between the output projection and its backward).
Reports the compiled function's temporary bytes (`memory_analysis`) and the
median of `--runs` calls, each waited for; the two gradients are checked
against each other first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from recurrentgemma_jax.training import loss as loss_lib


def autodiff_parts(logits, targets):
  """log Z and the target logit as the loss computed them before: float32
  cast, logsumexp and a gather, differentiated by JAX."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z, target


def value_and_grad(parts):
  def objective(logits, targets):
    log_z, target = parts(logits, targets)
    return jnp.sum(log_z - target) + 1e-4 * jnp.sum(jnp.square(log_z))
  return jax.jit(jax.value_and_grad(objective))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8,2048,32000", help="B,T,V")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--runs", type=int, default=11)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  b, t, v = (int(n) for n in args.shape.split(","))
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(b, t, v)), args.dtype)
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  rows, grads = [], {}
  for name, parts in (("autodiff", autodiff_parts),
                      ("written_out", loss_lib.log_z_and_target_logit)):
    compiled = value_and_grad(parts).lower(logits, targets).compile()
    grads[name] = compiled(logits, targets)[1].astype(jnp.float32)
    times = []
    for _ in range(args.runs):
      start = time.perf_counter()
      jax.block_until_ready(compiled(logits, targets))
      times.append(time.perf_counter() - start)
    analysis = compiled.memory_analysis()
    rows.append({"impl": name, "ms": 1e3 * statistics.median(times),
                 "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
                 "temp_bytes": analysis.temp_size_in_bytes if analysis
                 else None})
  err = float(jnp.max(jnp.abs(grads["autodiff"] - grads["written_out"])))
  tol = 1e-6 if args.dtype == "float32" else 1e-2
  info = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "shape": [b, t, v], "dtype": args.dtype, "max_grad_diff": err}
  print(json.dumps(info))
  for r in rows:
    temp = (f"{r['temp_bytes'] / 1e6:.0f} MB" if r["temp_bytes"] is not None
            else "n/a")
    print(f"{r['impl']:12s} {r['ms']:9.3f} ms ({r['min_ms']:.3f}-"
          f"{r['max_ms']:.3f})  temporaries {temp}")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"info": info, "rows": rows}, f, indent=1)
  if err > tol * float(jnp.max(jnp.abs(grads["autodiff"]))) + 1e-6:
    print(f"WRONG GRADIENT: max difference {err:.3e}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
