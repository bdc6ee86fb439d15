"""Models ready to sample, with their tokenizers: from a training workdir
(`load_workdir`) or from released RecurrentGemma weights (`load_official`).

    model, tokenizer, step = load_workdir("/tmp/rg_quickstart")
    model, tokenizer = load_official("/ckpts/2b", "recurrentgemma-2b")

Both only read: a workdir can be loaded while a trainer runs on it. The
training stack (data, optimizer, LoRA bases) is imported on first use.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from recurrentgemma_jax import weights
from recurrentgemma_jax.config import ConfigError


def _restore_items(path: str, keys: tuple[str, ...]) -> dict[str, Any]:
  """Top-level items `keys` of a train-state checkpoint, as NumPy arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  checkpointer = ocp.PyTreeCheckpointer()
  # The step-level metadata file lives one folder up (the training loop's
  # CheckpointManager writes it); Orbax warns that the item has none.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    metadata = checkpointer.metadata(path)
  finally:
    absl_logger.setLevel(level)
  tree = getattr(metadata, "item_metadata", metadata).tree
  for key in keys:
    if key not in tree:
      raise ConfigError(f"{path}: no `{key}` in the checkpoint")
  item = {key: tree[key] for key in keys}
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  return checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                        partial_restore=True))


def load_workdir(workdir: str, step: int | None = None, **config_overrides):
  """`(model, tokenizer or None, step)` from a training workdir.

  Reads `WORKDIR/config.json` (the run's config) and the parameters of
  `WORKDIR/checkpoints/<step>/state` (the newest complete step by default;
  the optimizer state is not read). Only reads: safe while a trainer runs
  on the workdir. The model's vocabulary is the
  checkpoint's; the tokenizer is the run's for `lm` tasks, else None.
  `config_overrides` change `GriffinConfig` fields (e.g. dtype).

  A LoRA run's checkpoint holds only its adapters: the base is loaded again
  as the run did (`init_from`, or the seed's initialisation), checked
  against the checkpoint's digest of it, and the adapters are folded into
  its weights (`merge_lora`): the model returned is the plain model.

  Raises:
    ConfigError: no complete checkpoint (or not `step`), a damaged one, or
      one that does not fit the run's config.
  """
  from recurrentgemma_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = loop.load_workdir_config(workdir)
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = checkpointing.Checkpointer(directory, keep=1,
                                            read_only=True)
  steps = checkpointer.complete_steps()
  if not steps:
    raise ConfigError(f"no complete checkpoint in {directory}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ConfigError(f"step {step} is not a complete checkpoint in "
                      f"{directory} (complete: {steps})")
  damage = checkpointer.missing_files(step)
  if damage:
    raise ConfigError(f"checkpoint step {step} in {directory} is damaged: "
                      f"{damage}")
  path = os.path.join(directory, str(step), "state")
  if config.lora.rank:  # (old workdirs get the defaults: load_workdir_config)
    model_config, params = _merged_lora_params(config, directory, step)
  else:
    params = _restore_items(path, ("params",))["params"]
    vocab_size = int(np.shape(params["embedder"]["input_embedding"])[0])
    model_config = config_lib.build_model_config(config.model, vocab_size)
  if config_overrides:
    model_config = model_config.replace(**config_overrides)
  model = weights.griffin_from_params(model_config, params,
                                      where=f"{path}: params")
  tokenizer = None
  if config.data.get("task") == "lm":
    from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

    tokenizer = tokenizers.get_tokenizer(config.data.get("tokenizer",
                                                         "bytes"))
  return model, tokenizer, step


def _merged_lora_params(config, directory: str, step: int
                        ) -> tuple[Any, dict[str, Any]]:
  """`(model config, parameters)` of the plain model a LoRA checkpoint
  describes: the run's base with the adapters folded in.

  Raises:
    WorkdirError: the base loaded now is not the one the adapters were
      trained on (its digest differs).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from recurrentgemma_jax import sharding  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.nn import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import frozen as frozen_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top

  path = os.path.join(directory, str(step), "state")
  stored = _restore_items(path, ("params", checkpointing.DIGEST_KEY))
  released = config.init_from.checkpoint or config.init_from.hf
  vocab = None if released else loop.data_vocab_size(config)
  model_config, init_params = loop.initial_weights(config, vocab)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  spec = state_lib.state_spec(
      model_config, optax.identity(), mesh,
      lora=config_lib.lora_config(config),
      base_dtype=config.lora.base_dtype or None)
  base = state_lib.init_base(spec, config.seed, init_params)
  frozen = frozen_lib.FrozenParams(spec.trainable, lambda: base,
                                   sharding.replicated(mesh))
  checkpointing.Checkpointer(directory, keep=1, read_only=True,
                             frozen=frozen).check_base(
                                 step, stored[checkpointing.DIGEST_KEY])
  adapters = weights.keyed_like(spec.trained(spec.abstract["params"]),
                                stored["params"], f"{path}: params")
  # The base in the model's parameter dtype: a bfloat16-stored base then
  # takes the float32 update exactly.
  dtype = jax.numpy.dtype(model_config.param_dtype)
  base = jax.tree.map(lambda x: x.astype(dtype), base)
  model = nnx.merge(spec.graphdef, frozen_lib.combine(base, adapters))
  merged = lora_lib.merge_lora(model)
  return model_config, nnx.state(merged, nnx.Param).to_pure_dict()


def load_official(path: str, preset: str | None = "recurrentgemma-2b",
                  tokenizer: str | None = None, **overrides):
  """`(model, tokenizer or None)` from a released Orbax checkpoint folder.

  The tokenizer is `tokenizer` if given, else a `tokenizer.model` in or
  next to `path` (the Kaggle layout), else None.
  """
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

  model = official.load_official_checkpoint(path, preset, **overrides)
  if tokenizer is None:
    for candidate in (os.path.join(path, "tokenizer.model"),
                      os.path.join(os.path.dirname(os.path.abspath(path)),
                                   "tokenizer.model")):
      if os.path.isfile(candidate):
        tokenizer = candidate
        break
  return model, (tokenizers.get_tokenizer(tokenizer) if tokenizer else None)
