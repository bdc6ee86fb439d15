r"""Conversion of RecurrentGemma weights between layouts, checked by
reading every parameter back (`recurrentgemma convert` is its command line).

    convert("hf", "official", "/ckpts/recurrentgemma-2b-hf", "/tmp/2b_orbax")
    convert("workdir", "hf", "/tmp/rg2b_python", "/tmp/finetuned_hf", step=N)

Layouts:
- official: an Orbax PyTree of the official parameter tree (the Kaggle Flax
  weights). It holds no config: the window, soft cap and embedding scaling
  come from `preset` (default recurrentgemma-2b), or give preset=None and
  attention_window_size, logits_soft_cap, embeddings_scale_by_sqrt_dim.
- hf: a transformers `RecurrentGemmaForCausalLM` folder (config.json and
  safetensors, sharded above `max_shard_size`); see `recurrentgemma_jax.hf`
  for the conventions (its window is ours plus one).
- workdir: a training workdir's newest complete checkpoint (or `step`); a
  source only: a run starts from weights through `init_from.checkpoint` or
  `init_from.hf`.

The stored dtype is kept unless `dtype` says otherwise. Nothing is written
over an existing checkpoint without `overwrite`. Every conversion is read
back and each parameter compared (name, shape, dtype, values) with what was
meant to be written; any difference is an error. Errors name the command
line's flags (`--src`, `--preset=`, ...), which are the arguments' names.
"""
from __future__ import annotations

import os
from typing import Any

from recurrentgemma_jax.config import ConfigError

SOURCES = ("official", "hf", "workdir")
TARGETS = ("official", "hf")
DTYPES = ("float32", "bfloat16", "float16")
HYPERS = ("attention_window_size", "logits_soft_cap",
          "embeddings_scale_by_sqrt_dim")


def detect_layout(path: str) -> str | None:
  """The layout a folder looks like ("hf", "workdir", "official"), or None."""
  if not os.path.isdir(path):
    return None
  names = set(os.listdir(path))
  if "config.json" in names and "checkpoints" in names:
    return "workdir"
  if "config.json" in names:
    return "hf"
  if names & {"_METADATA", "manifest.ocdbt", "checkpoint"}:
    return "official"
  return None


def _hypers(preset: str | None, given: dict[str, Any]) -> dict[str, Any]:
  """Window, soft cap and scaling for an official checkpoint."""
  if preset:
    return {k: v for k, v in given.items() if v is not None}
  missing = [f"--{k}" for k, v in given.items() if v is None]
  if missing:
    raise ConfigError(f"--from=official with --preset= needs "
                      f"{', '.join(missing)} (an official checkpoint holds "
                      "no config)")
  window = given["attention_window_size"]
  return {**given, "attention_window_size": window or None}


def load(layout: str, src: str, *, preset: str | None = "recurrentgemma-2b",
         step: int | None = None, **hypers):
  """The model stored at `src` in `layout` (its stored dtype kept)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from recurrentgemma_jax import hf  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax import loading  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top

  if layout not in SOURCES:
    raise ConfigError(f"--from={layout!r} is not one of {', '.join(SOURCES)}")
  if not os.path.isdir(src):
    raise ConfigError(f"--src: no folder {src}")
  seen = detect_layout(src)
  if seen and seen != layout:
    article = "an" if seen == "official" else "a"
    raise ConfigError(f"--src {src} looks like {article} {seen} checkpoint, "
                      f"not {layout}: pass --from={seen}")
  try:
    if layout == "hf":
      return hf.from_hf(src)
    if layout == "workdir":
      return loading.load_workdir(src, step)[0]
    stored = ocp.PyTreeCheckpointer().metadata(src).item_metadata.tree
    return official.load_official_checkpoint(
        src, preset or None, param_dtype=hf.stored_dtype(stored),
        **_hypers(preset, dict(zip(HYPERS, (hypers.get(k) for k in HYPERS)))))
  except FileNotFoundError as e:
    raise ConfigError(f"--src: {e}") from None
  except ConfigError as e:
    if "does not match preset" not in str(e):
      raise
    raise ConfigError(f"{e}; for another model pass --preset= with "
                      f"{', '.join('--' + k for k in HYPERS)}") from None


def save(model, layout: str, dst: str, *, dtype: str, overwrite: bool = False,
         max_shard_size: int | str = "5GB") -> None:
  """Writes `model` to `dst` in `layout`, its parameters cast to `dtype`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from recurrentgemma_jax import hf  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top

  if layout not in TARGETS:
    raise ConfigError(f"--to={layout!r} is not one of {', '.join(TARGETS)}"
                      " (a workdir is a source only)")
  if layout == "hf":
    try:
      hf.to_hf(model, dst, dtype=dtype, max_shard_size=max_shard_size,
               overwrite=overwrite)
    except FileExistsError as e:
      raise ConfigError(f"--dst: {e} (or --overwrite)") from None
    return
  if os.path.isdir(dst) and not os.listdir(dst):
    os.rmdir(dst)  # Orbax creates the folder itself
  if os.path.exists(dst):
    # --overwrite replaces an official checkpoint, never anything else.
    if not overwrite or detect_layout(dst) != "official":
      raise ConfigError(
          f"--dst {dst} exists"
          + (" and is no official checkpoint" if overwrite else
             "; choose another folder or pass --overwrite"))
  tree = jax.tree.map(lambda v: np.asarray(v).astype(jnp.dtype(dtype)),
                      official.to_official(model))
  # Orbax writes to a temporary folder and renames it: no half checkpoint.
  ocp.PyTreeCheckpointer().save(dst, tree, force=overwrite)


def _check_same(want, got, dtype: str) -> int:
  """Raises ConfigError unless the two models' parameters are equal after
  casting `want` to `dtype`; returns the parameter count."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  flat = lambda m: dict(
      (jax.tree_util.keystr(p), v) for p, v in
      jax.tree_util.tree_flatten_with_path(
          nnx.to_pure_dict(nnx.state(m, nnx.Param)))[0])
  want, got = flat(want), flat(got)
  if sorted(want) != sorted(got):
    raise ConfigError(f"read back: parameter names differ "
                      f"({sorted(set(want) ^ set(got))[:5]})")
  count = 0
  for name, value in want.items():
    a = np.asarray(value).astype(jnp.dtype(dtype))
    b = np.asarray(got[name])
    if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
      raise ConfigError(f"read back: {name} differs (written {b.shape} "
                        f"{b.dtype}, meant {a.shape} {a.dtype})")
    count += a.size
  return count


def convert(src_layout: str, dst_layout: str, src: str, dst: str, *,
            preset: str | None = "recurrentgemma-2b", step: int | None = None,
            dtype: str | None = None, max_shard_size: int | str = "5GB",
            overwrite: bool = False, **hypers) -> str:
  """Converts `src` (in `src_layout`) to `dst` (in `dst_layout`), reads it
  back and checks every parameter; returns a one-line summary.

  Raises:
    ConfigError: a bad layout, a missing or mismatched source, a target that
      cannot express the model, or a read-back difference.
  """
  for name, value in (("--src", src), ("--dst", dst)):
    if not value:
      raise ConfigError(f"{name} is required")
  src, dst = (os.path.abspath(os.path.expanduser(p)) for p in (src, dst))
  if src == dst:
    raise ConfigError("--src and --dst are the same folder")
  if dst_layout not in TARGETS:
    raise ConfigError(f"--to={dst_layout!r} is not one of "
                      f"{', '.join(TARGETS)} (a workdir is a source only)")
  if dtype and dtype not in DTYPES:
    raise ConfigError(f"--dtype={dtype!r} is not one of {', '.join(DTYPES)}")
  model = load(src_layout, src, preset=preset, step=step, **hypers)
  dtype = dtype or model.config.param_dtype
  save(model, dst_layout, dst, dtype=dtype, overwrite=overwrite,
       max_shard_size=max_shard_size)
  c = model.config
  back = load(dst_layout, dst, preset=None, **{
      "attention_window_size": c.attention_window_size or 0,
      "logits_soft_cap": c.logits_soft_cap,
      "embeddings_scale_by_sqrt_dim": c.embeddings_scale_by_sqrt_dim})
  count = _check_same(model, back, dtype)
  note = ""
  if dst_layout == "official":
    note = (f"; load it with attention_window_size={c.attention_window_size}"
            f", logits_soft_cap={c.logits_soft_cap}, "
            f"embeddings_scale_by_sqrt_dim={c.embeddings_scale_by_sqrt_dim}"
            " (official checkpoints hold no config)")
  return (f"converted {src_layout} {src} -> {dst_layout} {dst}: {count:,} "
          f"parameters in {dtype}, read back and equal{note}")
