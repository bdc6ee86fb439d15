r"""Sample from a trained or released model.

From a training workdir (the newest complete checkpoint, or --step):
  recurrentgemma sample --workdir=/tmp/rg_quickstart \
      --prompt_tokens="2,0,0,5,0,7,1" --max_new_tokens=8

From released RecurrentGemma weights (Kaggle Flax: the `2b` checkpoint folder
with `tokenizer.model` beside it):
  recurrentgemma sample --official=/data/recurrentgemma/2b \
      --preset=recurrentgemma-2b --prompt="The capital of France is" \
      --max_new_tokens=32 --temperature=0.7 --top_p=0.95 --stream

Flags: --prompt (repeatable: one row each) or --prompt_tokens ("1,2,3",
repeatable), --max_new_tokens, --temperature (0 = greedy), --top_k,
--top_p, --stop (repeatable: a string, or an int token id), --seed,
--stream (print tokens as they come, one prompt), --logprobs, --json,
--quantize=int8 (int8 weights, quantized once at load: about half the
weight bytes of bfloat16; recurrentgemma_jax/sampling/quantize.py),
--chat (each --prompt is a user turn of the instruction-tuned chat template,
`<bos><start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n`,
and the reply stops at `<end_of_turn>`; for -it checkpoints and models
fine-tuned on chat data, see recurrentgemma_jax/data/chat.py).
A text prompt needs a tokenizer: the workdir's (for `lm` tasks), --tokenizer
("bytes" or a SentencePiece .model file), or a `tokenizer.model` next to
--official.

From Python: `recurrentgemma_jax.load_workdir(workdir)` and
`load_official(path, preset)` (`recurrentgemma_jax.loading`) return the
model and its tokenizer; `Sampler(model, tokenizer)` samples.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import flags

from recurrentgemma_jax import loading
from recurrentgemma_jax.cli import common
from recurrentgemma_jax.config import ConfigError


class _TokenIds(flags.ArgumentParser):
  """`--prompt_tokens` "1,2,3" -> [1, 2, 3]."""

  def parse(self, argument):
    if isinstance(argument, list):
      return argument
    try:
      return [int(t) for t in argument.split(",") if t.strip()]
    except ValueError:
      raise ValueError(f"expected comma-separated integer token ids, got "
                       f"{argument!r}") from None

  def flag_type(self) -> str:
    return "comma-separated token ids"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "training workdir", **kw)
  flags.DEFINE_string("official", None, "released Orbax checkpoint folder",
                      **kw)
  flags.mark_flags_as_mutual_exclusive(["workdir", "official"],
                                       required=True, **kw)
  flags.DEFINE_integer("step", None,
                       "checkpoint step of --workdir (default: newest)", **kw)
  flags.DEFINE_string("preset", "recurrentgemma-2b",
                      "preset of --official ('none': give --window, "
                      "--soft_cap, --sqrt_scale)", **kw)
  flags.DEFINE_integer("window", None,
                       "attention window of --official without a preset "
                       "(0: global)", **kw)
  flags.DEFINE_float("soft_cap", None,
                     "logits soft cap of --official without a preset (0: "
                     "none)", **kw)
  flags.DEFINE_bool("sqrt_scale", False,
                    "embeddings scaled by sqrt(width) (no preset)", **kw)
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                    "compute and parameter dtype (default: as stored)", **kw)
  flags.DEFINE_enum("quantize", None, ["int8"],
                    "sample with int8 weights (per-output-channel scales), "
                    "quantized once from the loaded ones", **kw)
  flags.DEFINE_string("tokenizer", None,
                      "'bytes' or a SentencePiece .model file", **kw)
  flags.DEFINE_multi_string("prompt", [],
                            "a text prompt (repeat for a batch)", **kw)
  flags.DEFINE_multi(_TokenIds(), flags.ArgumentSerializer(),
                     "prompt_tokens", [],
                     "a prompt as comma-separated token ids (repeatable)",
                     **kw)
  flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt",
                       **kw)
  flags.DEFINE_float("temperature", 0.0,
                     "0 is greedy (argmax); > 0 samples from "
                     "softmax(logits / temperature)", **kw)
  flags.DEFINE_integer("top_k", None,
                       "sample among the k most likely tokens (default: all)",
                       **kw)
  flags.DEFINE_float("top_p", None,
                     "nucleus sampling: among the most likely tokens whose "
                     "probability reaches top_p (default: off)", **kw)
  flags.DEFINE_multi_string("stop", [],
                            "stop string or token id (repeatable)", **kw)
  flags.DEFINE_bool("no_stop_at_eos", False,
                    "keep generating after the tokenizer's EOS", **kw)
  flags.DEFINE_integer("seed", 0,
                       "random seed of sampling (the same seed gives the "
                       "same samples)", **kw)
  flags.DEFINE_bool("stream", False,
                    "print the text as it is generated (one prompt)", **kw)
  flags.DEFINE_bool("logprobs", False,
                    "also print each token's log-probability", **kw)
  flags.DEFINE_bool("json", False, "print one JSON object per prompt", **kw)
  flags.DEFINE_bool("chat", False,
                    "wrap each --prompt as a user turn of the chat template "
                    "and stop at <end_of_turn>", **kw)


def _parse_stop(values: list[str]) -> list[str | int]:
  out: list[str | int] = []
  for v in values or []:
    out.append(int(v) if v.lstrip("-").isdigit() else v)
  return out


def load_from_args(f: flags.FlagValues) -> tuple[Any, Any]:
  """`(model, tokenizer)` described by the flags."""
  from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

  overrides = {}
  if f.dtype:
    overrides = dict(dtype=f.dtype, param_dtype=f.dtype)
  if f.workdir:
    model, tokenizer, step = loading.load_workdir(f.workdir, f.step,
                                                  **overrides)
    print(f"loaded {f.workdir} at step {step}", file=sys.stderr)
  else:
    preset = None if f.preset in ("", "none") else f.preset
    hypers = {}
    if preset is None:
      if f.window is None or f.soft_cap is None:
        raise ConfigError("--preset none needs --window and --soft_cap")
      hypers = dict(attention_window_size=f.window or None,
                    logits_soft_cap=f.soft_cap,
                    embeddings_scale_by_sqrt_dim=f.sqrt_scale)
    model, tokenizer = loading.load_official(f.official, preset, f.tokenizer,
                                             **hypers, **overrides)
  if f.tokenizer:
    tokenizer = tokenizers.get_tokenizer(f.tokenizer)
  return model, tokenizer


def run(f: flags.FlagValues, args: list[str]) -> int:
  """Samples as the flags say, prints the result; returns the exit code."""
  from recurrentgemma_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top

  if args:
    print(f"error: unexpected arguments: {args}", file=sys.stderr)
    return 2
  prompts: list[Any] = list(f.prompt) + list(f.prompt_tokens)
  if not prompts:
    print("error: give --prompt or --prompt_tokens", file=sys.stderr)
    return 2
  if f.chat and f.prompt_tokens:
    print("error: --chat wraps text prompts; give --prompt, not "
          "--prompt_tokens", file=sys.stderr)
    return 2
  try:
    model, tokenizer = load_from_args(f)
    if tokenizer is None and any(isinstance(p, str) for p in prompts):
      raise ConfigError("text prompts need a tokenizer: pass --tokenizer "
                        "or use --prompt_tokens")
    sampler = Sampler(model, tokenizer, quantize=f.quantize)
    options = dict(temperature=f.temperature, top_k=f.top_k,
                   top_p=f.top_p, stop=_parse_stop(f.stop) or None,
                   stop_at_eos=not f.no_stop_at_eos, seed=f.seed,
                   chat=f.chat)
    if f.stream:
      if len(prompts) != 1:
        raise ConfigError("--stream takes one prompt")
      for step in sampler.stream(prompts, f.max_new_tokens, **options):
        if tokenizer is not None:
          print(step.text[0], end="", flush=True)
        elif step.tokens[0] is not None:
          print(step.tokens[0], end=" ", flush=True)
      print()
      return 0
    out = sampler.generate(prompts, f.max_new_tokens,
                           return_logprobs=f.logprobs, **options)
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
    if f.json:
      print(json.dumps(record))
    elif out.text is not None:
      print(out.text[i])
    else:
      print(" ".join(map(str, out.tokens[i])))
  return 0


def main() -> None:
  common.start(sys.modules[__name__], quiet_logs=True, tpu_guard=True)


if __name__ == "__main__":
  main()
