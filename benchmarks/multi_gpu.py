r"""Multi-GPU scaling of the real training program: 1, 2 and 4 GPUs.

    python benchmarks/multi_gpu.py [--gpus 1,2,4] [--modes data,fsdp] \
        [--per_device_batch 16] [--steps 40] [--out scaling.jsonl]

Each configuration is an ordinary `recurrentgemma train` run
(the config is this file's `get_config`), limited to the first N GPUs with
CUDA_VISIBLE_DEVICES: the paper's Griffin-100M (width 768, RNN width 1024,
12 blocks) at sequence 2048, bfloat16 compute, AdamW, trained on the MQAR
task (vocabulary 8192; synthetic data, so input reading never limits
speed). The global batch grows with the GPU count (`per_device_batch` rows
per GPU, weak scaling). "data" replicates parameters and optimizer state;
"fsdp" shards them over the GPUs (ZeRO-3 style, gathered per layer).

Prints a table: median tokens/s over the logged windows after the first
(compilation excluded by the loop), per-GPU tokens/s and the scaling
efficiency against one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg=None):
  """The benchmark's training config: `:gpus=N,mode=data|fsdp,batch=B,steps=S`."""
  sys.path.insert(0, REPO)
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import experiment_files  # pylint: disable=g-import-not-at-top

  common = experiment_files.sibling(
      os.path.join(REPO, "experiments", "common.py"), "common")

  arg = common.parse_arg(arg, gpus=1, mode="data", batch=16, steps=40)
  if arg.mode not in ("data", "fsdp"):
    raise ValueError(f"mode={arg.mode!r} is not one of data, fsdp")
  c = config_lib.base_config()
  c.total_steps = arg.steps
  c.batch_size = arg.batch * arg.gpus
  c.seq_len = 2048
  c.warmup_steps = 5
  c.log_every = 10
  c.eval_every = arg.steps
  c.eval_batches = 1
  c.checkpoint_every = arg.steps
  c.model = config_lib.model_config("griffin-100m")
  c.mesh.update(data=arg.gpus if arg.mode == "data" else 1,
                fsdp=arg.gpus if arg.mode == "fsdp" else 1)
  c.data.task = "mqar"
  c.data.vocab_size = 8192
  c.data.num_pairs = 64
  return c


def run_one(gpus: int, mode: str, batch: int, steps: int) -> dict:
  """Trains one configuration in a subprocess; returns its throughput."""
  with tempfile.TemporaryDirectory() as workdir:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))),
               PYTHONPATH=os.pathsep.join(
                   filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "recurrentgemma_jax.cli.train",
           f"--config={os.path.abspath(__file__)}:gpus={gpus},mode={mode},"
           f"batch={batch},steps={steps}", f"--workdir={workdir}"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True,
                          text=True, check=False)
    if proc.returncode:
      return {"gpus": gpus, "mode": mode, "error": proc.stdout[-2000:]
              + proc.stderr[-2000:]}
    records = [json.loads(line) for line in
               open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  speeds = [r["perf/tokens_per_s"] for r in records if "perf/tokens_per_s" in r]
  step_times = [r["perf/step_time_s"] for r in records
                if "perf/step_time_s" in r]
  compile_line = next((l for l in proc.stdout.splitlines()
                       if l.startswith("compiled")), "")
  return {"gpus": gpus, "mode": mode, "global_batch": batch * gpus,
          "tokens_per_s": statistics.median(speeds[1:] or speeds),
          "step_time_s": statistics.median(step_times[1:] or step_times),
          "windows": len(speeds), "compile": compile_line,
          "final_loss": records[-1].get("eval/loss")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gpus", default="1,2,4")
  parser.add_argument("--modes", default="data,fsdp")
  parser.add_argument("--per_device_batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rows = []
  for gpus in map(int, args.gpus.split(",")):
    for mode in args.modes.split(","):
      if gpus == 1 and mode != "data":
        continue  # one device: both modes are the same program
      row = run_one(gpus, mode, args.per_device_batch, args.steps)
      rows.append(row)
      print(json.dumps(row), flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(json.dumps(row) + "\n")
  base = next((r["tokens_per_s"] for r in rows
               if r["gpus"] == 1 and "tokens_per_s" in r), None)
  print("\n| GPUs | parallelism | global batch | tokens/s | tokens/s per GPU "
        "| step ms | scaling efficiency |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    if "error" in r:
      print(f"| {r['gpus']} | {r['mode']} | failed | | | | |")
      continue
    eff = (f"{r['tokens_per_s'] / (base * r['gpus']):.2f}" if base else "-")
    print(f"| {r['gpus']} | {r['mode']} | {r['global_batch']} x 2048 | "
          f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / r['gpus']:,.0f} | "
          f"{1000 * r['step_time_s']:.1f} | {eff} |")


if __name__ == "__main__":
  main()
