r"""Sample from a trained or released model: the command-line entry point.

From a training workdir (the newest complete checkpoint, or --step):
  python -m recurrentgemma_jax.sample --workdir=/tmp/rg_quickstart \
      --prompt_tokens="2,0,0,5,0,7,1" --max_new_tokens=8

From released RecurrentGemma weights (Kaggle Flax: the `2b` checkpoint folder
with `tokenizer.model` beside it):
  python -m recurrentgemma_jax.sample --official=/data/recurrentgemma/2b \
      --preset=recurrentgemma-2b --prompt="The capital of France is" \
      --max_new_tokens=32 --temperature=0.7 --top_p=0.95 --stream

Flags: --prompt (repeatable: one row each) or --prompt_tokens ("1,2,3",
repeatable), --max_new_tokens, --temperature (0 = greedy), --top_k,
--top_p, --stop (repeatable: a string, or an int token id), --seed,
--stream (print tokens as they come, one prompt), --logprobs, --json,
--chat (each --prompt is a user turn of the instruction-tuned chat template,
`<bos><start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n`,
and the reply stops at `<end_of_turn>`; for -it checkpoints and models
fine-tuned on chat data, see recurrentgemma_jax/data/chat.py).
A text prompt needs a tokenizer: the workdir's (for `lm` tasks), --tokenizer
("bytes" or a SentencePiece .model file), or a `tokenizer.model` next to
--official.

From Python: `load_workdir(workdir)` and `load_official(path, preset)`
return `(model, tokenizer)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import numpy as np

from recurrentgemma_jax import argparse_help
from recurrentgemma_jax import platforms
from recurrentgemma_jax.config import ConfigError


def _restore_params(path: str) -> dict[str, Any]:
  """The `params` of a train-state checkpoint item, as NumPy arrays."""
  return _restore_items(path, ("params",))["params"]


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


def _match_keys(expected: Any, got: Any, where: str = "params") -> Any:
  """`got` re-keyed like `expected` (checkpoints store int keys as str)."""
  if isinstance(expected, dict):
    if not isinstance(got, dict):
      raise ConfigError(f"{where}: expected a dict in the checkpoint")
    out = {}
    for key, value in expected.items():
      if key in got:
        sub = got[key]
      elif str(key) in got:
        sub = got[str(key)]
      else:
        raise ConfigError(f"{where}/{key}: missing from the checkpoint")
      out[key] = _match_keys(value, sub, f"{where}/{key}")
    return out
  if tuple(np.shape(got)) != tuple(expected.shape):
    raise ConfigError(f"{where}: checkpoint shape {np.shape(got)} does not "
                      f"match the model's {tuple(expected.shape)}")
  return got


def complete_steps(directory: str) -> list[int]:
  """Checkpoint steps of `directory` whose commit marker exists."""
  from recurrentgemma_jax.training import checkpointing  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(directory):
    return []
  return sorted(
      int(name) for name in os.listdir(directory) if name.isdigit() and
      os.path.isfile(os.path.join(directory, name,
                                  checkpointing.COMMIT_MARKER)))


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
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = loop.load_workdir_config(workdir)
  directory = os.path.join(workdir, "checkpoints")
  steps = complete_steps(directory)
  if not steps:
    raise ConfigError(f"no complete checkpoint in {directory}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ConfigError(f"step {step} is not a complete checkpoint in "
                      f"{directory} (complete: {steps})")
  damage = checkpointing.Checkpointer(directory, keep=1, read_only=True
                                      ).missing_files(step)
  if damage:
    raise ConfigError(f"checkpoint step {step} in {directory} is damaged: "
                      f"{damage}")
  path = os.path.join(directory, str(step), "state")
  if config.lora.rank:  # (old workdirs get the defaults: load_workdir_config)
    model_config, params = _merged_lora_params(config, path)
  else:
    params = _restore_params(path)
    vocab_size = int(np.shape(params["embedder"]["input_embedding"])[0])
    model_config = config_lib.build_model_config(config.model, vocab_size)
  if config_overrides:
    model_config = model_config.replace(**config_overrides)
  abstract = nnx.eval_shape(lambda: Griffin(model_config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  expected = nnx.to_pure_dict(state)
  values = jax.tree.map(lambda e, v: jnp.asarray(v, e.dtype), expected,
                        _match_keys(expected, params))
  nnx.replace_by_pure_dict(state, values)
  model = nnx.merge(graphdef, state)
  tokenizer = None
  if config.data.get("task") == "lm":
    from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

    tokenizer = tokenizers.get_tokenizer(config.data.get("tokenizer",
                                                         "bytes"))
  return model, tokenizer, step


def _merged_lora_params(config, path: str) -> tuple[Any, dict[str, Any]]:
  """`(model config, parameters)` of the plain model a LoRA checkpoint
  describes: the run's base with the adapters folded in.

  Raises:
    ConfigError: the base loaded now is not the one the adapters were
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
  different = frozen.first_difference(stored[checkpointing.DIGEST_KEY])
  if different:
    raise ConfigError(
        f"{path} holds adapters trained on other base weights than the "
        f"run's init_from gives now ({different} differs)")
  adapters = _match_keys(spec.trained(spec.abstract["params"]),
                         stored["params"])
  # The base in the model's parameter dtype: a bfloat16-stored base then
  # takes the float32 update exactly.
  base = jax.tree.map(lambda x: x.astype(model_config.parameter_dtype),
                      base)
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


def _parse_stop(values: list[str]) -> list[str | int]:
  out: list[str | int] = []
  for v in values or []:
    out.append(int(v) if v.lstrip("-").isdigit() else v)
  return out


def _token_ids(text: str) -> list[int]:
  """`--prompt_tokens` "1,2,3" -> [1, 2, 3]."""
  try:
    return [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integer token ids, got {text!r}"
    ) from None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m recurrentgemma_jax.sample",
      description="Sample from a training workdir or released weights.",
      formatter_class=argparse_help.DefaultsFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="training workdir")
  src.add_argument("--official", help="released Orbax checkpoint folder")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step of --workdir (default: newest)")
  p.add_argument("--preset", default="recurrentgemma-2b",
                 help="preset of --official ('none': give --window, "
                      "--soft_cap, --sqrt_scale)")
  p.add_argument("--window", type=int, default=None,
                 help="attention window of --official without a preset "
                      "(0: global)")
  p.add_argument("--soft_cap", type=float, default=None,
                 help="logits soft cap of --official without a preset (0: "
                      "none)")
  p.add_argument("--sqrt_scale", action="store_true",
                 help="embeddings scaled by sqrt(width) (no preset)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute and parameter dtype (default: as stored)")
  p.add_argument("--tokenizer", default=None,
                 help="'bytes' or a SentencePiece .model file")
  p.add_argument("--prompt", action="append", default=[],
                 help="a text prompt (repeat for a batch)")
  p.add_argument("--prompt_tokens", action="append", default=[],
                 type=_token_ids,
                 help="a prompt as comma-separated token ids (repeatable)")
  p.add_argument("--max_new_tokens", type=int, default=64,
                 help="tokens to generate per prompt")
  p.add_argument("--temperature", type=float, default=0.0,
                 help="0 is greedy (argmax); > 0 samples from "
                      "softmax(logits / temperature)")
  p.add_argument("--top_k", type=int, default=None,
                 help="sample among the k most likely tokens (default: all)")
  p.add_argument("--top_p", type=float, default=None,
                 help="nucleus sampling: among the most likely tokens "
                      "whose probability reaches top_p (default: off)")
  p.add_argument("--stop", action="append", default=[],
                 help="stop string or token id (repeatable)")
  p.add_argument("--no_stop_at_eos", action="store_true",
                 help="keep generating after the tokenizer's EOS")
  p.add_argument("--seed", type=int, default=0,
                 help="random seed of sampling (the same seed gives the "
                      "same samples)")
  p.add_argument("--stream", action="store_true",
                 help="print the text as it is generated (one prompt)")
  p.add_argument("--logprobs", action="store_true",
                 help="also print each token's log-probability")
  p.add_argument("--json", action="store_true",
                 help="print one JSON object per prompt")
  p.add_argument("--chat", action="store_true",
                 help="wrap each --prompt as a user turn of the chat "
                      "template and stop at <end_of_turn>")
  return p


def load_from_args(args) -> tuple[Any, Any]:
  """`(model, tokenizer)` described by the command-line arguments."""
  from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

  overrides = {}
  if args.dtype:
    overrides = dict(dtype=args.dtype, param_dtype=args.dtype)
  if args.workdir:
    model, tokenizer, step = load_workdir(args.workdir, args.step,
                                          **overrides)
    print(f"loaded {args.workdir} at step {step}", file=sys.stderr)
  else:
    preset = None if args.preset in ("", "none") else args.preset
    hypers = {}
    if preset is None:
      if args.window is None or args.soft_cap is None:
        raise ConfigError("--preset none needs --window and --soft_cap")
      hypers = dict(attention_window_size=args.window or None,
                    logits_soft_cap=args.soft_cap,
                    embeddings_scale_by_sqrt_dim=args.sqrt_scale)
    model, tokenizer = load_official(args.official, preset, args.tokenizer,
                                     **hypers, **overrides)
  if args.tokenizer:
    tokenizer = tokenizers.get_tokenizer(args.tokenizer)
  return model, tokenizer


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from recurrentgemma_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top

  prompts: list[Any] = list(args.prompt) + list(args.prompt_tokens)
  if not prompts:
    print("error: give --prompt or --prompt_tokens", file=sys.stderr)
    return 2
  if args.chat and args.prompt_tokens:
    print("error: --chat wraps text prompts; give --prompt, not "
          "--prompt_tokens", file=sys.stderr)
    return 2
  try:
    model, tokenizer = load_from_args(args)
    if tokenizer is None and any(isinstance(p, str) for p in prompts):
      raise ConfigError("text prompts need a tokenizer: pass --tokenizer "
                        "or use --prompt_tokens")
    sampler = Sampler(model, tokenizer)
    options = dict(temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, stop=_parse_stop(args.stop) or None,
                   stop_at_eos=not args.no_stop_at_eos, seed=args.seed,
                   chat=args.chat)
    if args.stream:
      if len(prompts) != 1:
        raise ConfigError("--stream takes one prompt")
      for step in sampler.stream(prompts, args.max_new_tokens, **options):
        if tokenizer is not None:
          print(step.text[0], end="", flush=True)
        elif step.tokens[0] is not None:
          print(step.tokens[0], end=" ", flush=True)
      print()
      return 0
    out = sampler.generate(prompts, args.max_new_tokens,
                           return_logprobs=args.logprobs, **options)
  except (ConfigError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for i in range(len(prompts)):
    record = {"prompt": prompts[i], "tokens": out.tokens[i],
              "finish_reason": out.finish_reasons[i]}
    if out.text is not None:
      record["text"] = out.text[i]
    if out.logprobs is not None:
      record["logprobs"] = [round(float(x), 5) for x in out.logprobs[i]]
    if args.json:
      print(json.dumps(record))
    elif out.text is not None:
      print(out.text[i])
    else:
      print(" ".join(map(str, out.tokens[i])))
  return 0


if __name__ == "__main__":
  platforms.skip_absent_tpu()
  sys.exit(main())
