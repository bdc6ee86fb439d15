r"""Convert RecurrentGemma weights between layouts.

    recurrentgemma convert --from=hf --to=official \
        --src=/ckpts/recurrentgemma-2b-hf --dst=/tmp/2b_orbax
    recurrentgemma convert --from=official --to=hf \
        --src=/ckpts/2b --dst=/tmp/2b_hf [--preset=recurrentgemma-2b]
    recurrentgemma convert --from=workdir --to=hf \
        --src=/tmp/rg2b_python --dst=/tmp/finetuned_hf [--step=N]

Layouts:
- official: an Orbax PyTree of the official parameter tree (the Kaggle Flax
  weights). It holds no config: the window, soft cap and embedding scaling
  come from --preset (default recurrentgemma-2b), or give --preset= and
  --attention_window_size, --logits_soft_cap, --embeddings_scale_by_sqrt_dim.
- hf: a transformers `RecurrentGemmaForCausalLM` folder (config.json and
  safetensors, sharded above --max_shard_size); see `recurrentgemma_jax.hf`
  for the conventions (its window is ours plus one).
- workdir: a training workdir's newest complete checkpoint (or --step); a
  source only: a run starts from weights through `init_from.checkpoint` or
  `init_from.hf`.

The stored dtype is kept unless --dtype says otherwise. Nothing is written
over an existing checkpoint without --overwrite. Every conversion is read
back and each parameter compared (name, shape, dtype, values) with what was
meant to be written; any difference is an error (`recurrentgemma_jax.
conversion`).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from recurrentgemma_jax import conversion
from recurrentgemma_jax.cli import common
from recurrentgemma_jax.config import ConfigError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  flags.DEFINE_enum("from", None, list(conversion.SOURCES),
                    "Layout of --src.", **kw)
  flags.DEFINE_enum("to", None, list(conversion.TARGETS),
                    "Layout of --dst (a workdir is a source only).", **kw)
  flags.DEFINE_string("src", None, "The folder to read.", **kw)
  flags.DEFINE_string("dst", None, "The folder to write.", **kw)
  flags.DEFINE_string(
      "preset", "recurrentgemma-2b",
      "--from=official: the preset whose window, soft cap and embedding "
      "scaling apply (empty: give --attention_window_size, "
      "--logits_soft_cap and --embeddings_scale_by_sqrt_dim).", **kw)
  flags.DEFINE_integer("attention_window_size", None,
                       "--from=official: our window (0: global attention).",
                       **kw)
  flags.DEFINE_float("logits_soft_cap", None,
                     "--from=official: the logits soft cap (0: none).", **kw)
  flags.DEFINE_bool("embeddings_scale_by_sqrt_dim", None,
                    "--from=official: scale embeddings by sqrt(width).", **kw)
  flags.DEFINE_integer("step", None,
                       "--from=workdir: checkpoint step (default: newest).",
                       **kw)
  flags.DEFINE_enum("dtype", None, list(conversion.DTYPES),
                    "Stored dtype of --dst (default: that of --src).", **kw)
  flags.DEFINE_string("max_shard_size", "5GB",
                      "--to=hf: bytes per safetensors file (e.g. 500MB).",
                      **kw)
  flags.DEFINE_bool("overwrite", False,
                    "Replace a checkpoint already in --dst.", **kw)
  flags.mark_flags_as_required(["from", "to", "src", "dst"], **kw)


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Converts as the flags say; returns the exit code."""
  if args:
    raise app.UsageError(f"unexpected arguments: {args}")
  try:
    summary = conversion.convert(
        f["from"].value, f.to, f.src, f.dst, preset=f.preset or None,
        step=f.step, dtype=f.dtype, max_shard_size=f.max_shard_size,
        overwrite=f.overwrite,
        **{k: f[k].value for k in conversion.HYPERS})
  except (ConfigError, ValueError) as e:  # ConfigError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(summary)
  return 0


def main() -> None:
  common.start(sys.modules[__name__], quiet_logs=True, tpu_guard=True)


if __name__ == "__main__":
  main()
