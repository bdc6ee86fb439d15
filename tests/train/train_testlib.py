"""Shared helpers for the training tests: tiny configs and subprocess runs."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import random
import subprocess
import sys

from recurrentgemma_jax.training import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
# The experiment files (`experiments/common.py` holds their shared recipes).
EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("*.py")
                     if p.name != "common.py")
# The words of `sample_text`, with the characters of "To be, or not to be".
_WORDS = ("to be or not that is the question whether tis nobler in mind "
          "suffer slings and arrows of outrageous fortune take arms against "
          "a sea troubles by opposing end them die sleep no more").split()


def sample_text(path, lines: int = 3000, seed: int = 0) -> str:
  """Writes `lines` lines of seeded pseudo-English (about 50 bytes each) to
  `path` and returns it as a string: a corpus the tests make themselves."""
  rng = random.Random(seed)
  out = []
  for _ in range(lines):
    words = rng.choices(_WORDS, k=rng.randint(4, 12))
    words[0] = words[0].capitalize()
    out.append(" ".join(words) + rng.choice(",.;:!?"))
  path = pathlib.Path(path)
  path.write_text("\n".join(out) + "\n")
  return str(path)


def load_experiment(path) -> object:
  """The experiment file at `path` (or `experiments/NAME.py` for a bare
  name), imported as a module."""
  path = pathlib.Path(path)
  if path.suffix != ".py":
    path = REPO / "experiments" / f"{path}.py"
  spec = importlib.util.spec_from_file_location(f"exp_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(**overrides):
  """A 3-block width-32 Griffin on MQAR: compiles and runs in seconds."""
  c = config_lib.base_config()
  c.total_steps = 6
  c.batch_size = 8
  c.seq_len = 32
  c.learning_rate = 3e-3
  c.warmup_steps = 2
  c.eval_every = 6
  c.eval_batches = 1
  c.checkpoint_every = 3
  c.log_every = 1
  c.model = config_lib.model_config(
      "", kind="griffin", depth=3, width=32, mlp_expanded_width=64,
      num_heads=2, lru_width=32, attention_window_size=8, dtype="float32")
  c.data.task = "mqar"
  c.data.vocab_size = 32
  c.data.num_pairs = 4
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for name in path:
      node = node[name]
    node[last] = value
  return c


def env(**extra) -> dict[str, str]:
  """Environment for a CPU subprocess that imports this checkout."""
  out = dict(os.environ)
  out.update(
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(REPO) + os.pathsep + out.get("PYTHONPATH", ""),
      PYTHONUNBUFFERED="1",
  )
  out.update(extra)
  return out


def python(*args, **kwargs) -> subprocess.CompletedProcess:
  kwargs.setdefault("env", env())
  return subprocess.run([sys.executable, *args], cwd=REPO, text=True,
                        capture_output=True, **kwargs)


def losses(workdir) -> dict[int, list[float]]:
  """Every logged train loss per step in `workdir/metrics.jsonl`."""
  out: dict[int, list[float]] = {}
  path = pathlib.Path(workdir) / "metrics.jsonl"
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if "train/loss" in record:
      out.setdefault(record["step"], []).append(record["train/loss"])
  return out
