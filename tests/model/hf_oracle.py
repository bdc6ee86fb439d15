"""transformers' RecurrentGemma as a test oracle, run by `.venv-hf/bin/python`.

Our venv has no torch; the tests run this script in the HF venv (Python
3.11, torch CPU, transformers; `scripts/setup.sh --hf` builds it) with a
JSON list of jobs, one process for many jobs:

  {"op": "make", "dir": D, "config": {RecurrentGemmaConfig kwargs},
   "seed": 0, "dtype": "float32" | "bfloat16", "max_shard_size": "30KB"}
      a random model (every parameter perturbed, so biases and norm scales
      are not zero) saved with `save_pretrained(D)`.
  {"op": "logits", "dir": D, "tokens": X.npy, "out": Y.npy}
      `from_pretrained(D, dtype=float32)` (failing on any missing,
      unexpected or mismatched tensor), float32 logits of the tokens
      (`[B, T]` int, one document per row) written to Y.npy.

Usage: hf_oracle.py JOBS.json
"""

import json
import sys

import numpy as np
import torch
import transformers


def make(job):
  config = transformers.RecurrentGemmaConfig(**job["config"])
  torch.manual_seed(job.get("seed", 0))
  model = transformers.RecurrentGemmaForCausalLM(config)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  model = model.to(getattr(torch, job.get("dtype", "float32")))
  kwargs = {}
  if job.get("max_shard_size"):
    kwargs["max_shard_size"] = job["max_shard_size"]
  model.save_pretrained(job["dir"], **kwargs)


def logits(job):
  model, info = transformers.RecurrentGemmaForCausalLM.from_pretrained(
      job["dir"], dtype=torch.float32, output_loading_info=True)
  problems = {k: sorted(v) for k, v in info.items() if v}
  if problems:
    raise SystemExit(f"{job['dir']}: transformers did not load every "
                     f"tensor: {problems}")
  model.eval()
  tokens = torch.from_numpy(np.load(job["tokens"]).astype(np.int64))
  with torch.no_grad():
    out = model(input_ids=tokens, use_cache=False).logits
  np.save(job["out"], out.float().numpy())


def main(path):
  with open(path) as f:
    jobs = json.load(f)
  for job in jobs:
    {"make": make, "logits": logits}[job["op"]](job)
  print(f"transformers {transformers.__version__}, torch {torch.__version__}:"
        f" {len(jobs)} jobs done")


if __name__ == "__main__":
  main(sys.argv[1])
