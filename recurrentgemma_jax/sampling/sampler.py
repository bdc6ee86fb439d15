"""`Sampler`: batched generation, streaming and conversations.

    sampler = Sampler(model, tokenizer)
    out = sampler.generate(["The capital of France is", "1, 2, 3,"],
                           max_new_tokens=32, temperature=0.7, top_p=0.9)
    out.text                  # list[str], one completion per prompt
    out.tokens                # list[list[int]]

How a call runs:
1. Prompts of different lengths are left-padded to one length. The padding
   of a row is a document of its own: the prompt starts at segment
   position 0, and no layer (attention, convolution, RG-LRU) looks across a
   document start, so a padded row computes exactly what it would alone.
2. Prefill: one forward pass over the whole prompt (the scan kernel, the
   blocked attention) returns the constant-size cache.
3. Decode: one jitted device loop generates every token (no Python step per
   token); its memory does not grow with the generation length.
4. Text: each row is decoded and cut at the first stop string.

`generate(..., return_state=True)` returns the `DecodeState` after the
generated tokens; `generate(more, ..., state=that)` continues each row
(more prompt tokens are fed as a chunk, then decoding goes on). The
`Conversation` helper does this turn by turn.

Chat mode (`generate(..., chat=True)`, `stream(..., chat=True)`,
`conversation(chat=True)`): each prompt (a string: one user turn, or a
`messages` list) is wrapped in the instruction-tuned chat template of
`data/chat.py`, `<bos><start_of_turn>user\\n{prompt}<end_of_turn>\\n
<start_of_turn>model\\n`, and generation stops at `<end_of_turn>`; a
conversation wraps each new user turn the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Float, Int, Key

from recurrentgemma_jax.config import check_token_ids
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.nn import linear
from recurrentgemma_jax.sampling import decode as decode_lib
from recurrentgemma_jax.sampling import quantize as quantize_lib
from recurrentgemma_jax.sampling import stopping
from recurrentgemma_jax.sampling.decode import DecodeState
from recurrentgemma_jax.sampling.logits import SamplingParams

# Shape aliases (real objects, so typing.get_type_hints resolves them).
# One prompt: text, or token ids (a list or a `[T]` integer array).
Prompt = str | Sequence[int] | Int[np.ndarray, "T"]
IdRows = Sequence[Sequence[int]] | Int[np.ndarray, "B T"]
RowKeys = Key[jax.Array, "B"]
TokenLogprobs = Float[np.ndarray, "n"]  # one row's n returned tokens
TokenLogits = Float[np.ndarray, "n V"]


@dataclasses.dataclass
class SamplerOutput:
  """The result of `Sampler.generate`, one entry per prompt.

  Attributes:
    text: decoded completions (cut before the first stop string), or None
      without a tokenizer.
    tokens: generated token ids, without the stop token / stop string.
    finish_reasons: "stop" (a stop token or string ended the row) or
      "length" (max_new_tokens reached).
    logprobs: per row, `[n]` float32 log-probability of each returned token
      under the model (temperature 1, no filtering); None unless asked.
    logits: per row, `[n, V]` float32 logits each returned token was sampled
      from; None unless asked.
    state: the `DecodeState` after the generated tokens (stop tokens
      included), to continue with `generate(..., state=)`; None unless
      `return_state=True`.
    prompt_tokens: the token ids each row was prompted with (BOS included).
    consumed: per row, the generated tokens that `state` holds (`tokens`
      plus the stop token or stop string); None unless `return_state=True`.
  """

  text: list[str] | None
  tokens: list[list[int]]
  finish_reasons: list[str]
  logprobs: list[TokenLogprobs] | None = None
  logits: list[TokenLogits] | None = None
  state: DecodeState | None = None
  prompt_tokens: list[list[int]] | None = None
  consumed: list[list[int]] | None = None


@dataclasses.dataclass
class StreamStep:
  """One step of `Sampler.stream`, one entry per row.

  Attributes:
    tokens: the token each row generated at this step (None for a row that
      had already finished).
    text: the new text of each row ("" when none is complete yet).
    finished: whether each row has finished (after this step).
  """

  tokens: list[int | None]
  text: list[str]
  finished: list[bool]


class Stream(Iterator[StreamStep]):
  """What `Sampler.stream` returns: an iterator of `StreamStep`s that
  keeps the final state.

      stream = sampler.stream(prompts, 32)
      for step in stream:
        print(step.text[0], end="")
      more = sampler.generate(next_prompts, 8, state=stream.state)

  Attributes:
    state: the `DecodeState` after every generated token (stop tokens
      included), to continue with `generate(..., state=)`; None until the
      iterator has ended.
  """

  def __init__(self, steps: Generator[StreamStep, None, DecodeState]):
    self._steps = steps
    self.state: DecodeState | None = None

  def __iter__(self) -> Stream:
    return self

  def __next__(self) -> StreamStep:
    try:
      return next(self._steps)
    except StopIteration as end:
      if self.state is None:  # (a spent generator returns None again)
        self.state = end.value
      raise


class _Start(NamedTuple):
  """How a `generate` or `stream` call starts.

  Attributes:
    rows: each row's prompt tokens (BOS included).
    state: the state after the prompts.
    max_new_tokens: tokens to generate per row (checked).
    sampling: the sampling parameters (checked).
    criteria: the resolved stop conditions.
    row_keys: `[B]` PRNG keys, one per row.
  """

  rows: list[list[int]]
  state: DecodeState
  max_new_tokens: int
  sampling: SamplingParams
  criteria: stopping.StopCriteria
  row_keys: RowKeys


class _RowEnd(NamedTuple):
  """Where one row's generated tokens end (`Sampler._row_end`).

  Attributes:
    keep: tokens to return (before the stop token or stop string).
    consumed: tokens a continued state must hold (through the stop).
    text: the kept tokens' text, cut before a stop string; None without a
      tokenizer.
    stopped: a stop token or stop string ended the row.
  """

  keep: int
  consumed: int
  text: str | None
  stopped: bool


class _Tokenizer:
  """Adapts our tokenizers and `sentencepiece.SentencePieceProcessor`."""

  def __init__(self, tok: Any):
    self.tok = tok
    self.vocab_size = _attr(tok, "vocab_size", "get_piece_size")
    self.bos_id = _attr(tok, "bos_id")
    self.eos_id = _attr(tok, "eos_id")
    self.pad_id = _attr(tok, "pad_id")
    self.lossless = bool(getattr(tok, "lossless", False))

  def encode(self, text: str) -> list[int]:
    return [int(t) for t in self.tok.encode(text)]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids])

  def piece_id(self, piece: str) -> int | None:
    """The single id of a special piece (chat markers), or None."""
    if hasattr(self.tok, "piece_id"):
      return self.tok.piece_id(piece)
    if hasattr(self.tok, "piece_to_id"):  # a SentencePieceProcessor
      from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

      return tokenizers.sentencepiece_piece_id(self.tok, piece)
    return None


def _attr(obj: Any, *names: str) -> int | None:
  for name in names:
    value = getattr(obj, name, None)
    if callable(value):
      value = value()
    if value is not None:
      return int(value)
  return None


def _is_int(x: Any) -> bool:
  return (isinstance(x, (int, np.integer)) and
          not isinstance(x, (bool, np.bool_)))


def _is_id_row(p: Any) -> bool:
  """Whether `p` is one prompt of token ids (not a batch of prompts)."""
  if isinstance(p, np.ndarray):
    return p.ndim == 1
  return (isinstance(p, Sequence) and not isinstance(p, str) and len(p) > 0
          and isinstance(p[0], (int, float, np.number)))


def _is_messages(p: Any) -> bool:
  """Whether `p` is one chat prompt given as a `messages` list."""
  return (isinstance(p, Sequence) and not isinstance(p, str) and len(p) > 0
          and isinstance(p[0], Mapping))


def _check_count(name: str, value: Any) -> int:
  if not _is_int(value) or value < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
  return int(value)


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, multiple * math.ceil(n / multiple))


def _next_power_of_two(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@functools.lru_cache(maxsize=16)
def _jitted(graphdef: nnx.GraphDef, decode_graphdef: nnx.GraphDef):
  """The jitted functions of one model structure (shared by the samplers of
  equal models, so that they share compilations)."""
  prefill = jax.jit(functools.partial(decode_lib.prefill, graphdef),
                    static_argnames=("cache_length",))
  extend = jax.jit(functools.partial(decode_lib.extend, graphdef))
  extend_ragged = jax.jit(
      functools.partial(decode_lib.extend_ragged, decode_graphdef))
  decode = {donate: decode_lib.jit_decode(decode_graphdef, donate=donate)
            for donate in (False, True)}
  return prefill, extend, extend_ragged, decode


class Sampler:
  """Generates text or tokens from a `Griffin` model.

      sampler = Sampler(model, "path/to/tokenizer.model")
      out = sampler.generate(["Hi", "Once upon a time"], max_new_tokens=20)
      out.text[1], out.tokens[1]            # str, list[int] (<= 20 ids)
      out = sampler.generate([[1, 5, 9]], 8, return_logits=True)
      out.logits[0].shape                   # (8, vocab_size)

  The sampler takes the model's parameters when it is built; build a new
  one after changing them (samplers of equal model structures share their
  compiled programs).

  Args:
    model: the model (any dtype; sampling math is float32).
    tokenizer: optional; one of `recurrentgemma_jax.data.tokenizers`
      (`ByteTokenizer`, `SentencePieceTokenizer`), a
      `sentencepiece.SentencePieceProcessor`, or a path ("bytes" or a
      SentencePiece `.model` file). Without one, prompts are token-id lists
      and `text` is None.
    add_bos: prepend the tokenizer's BOS to string prompts that start a row.
    pad_id: the padding token (default: the tokenizer's, else 0).
    sync_every: decode steps run on the device between two checks of the
      loop condition (larger: fewer host round trips, more wasted steps
      after every row has stopped).
    decode_scan_impl: the RG-LRU implementation of one-token decode steps
      ("associative" is plain element-wise XLA code there, which fuses with
      the gates; None keeps the model's). Prefill always uses the model's.
    max_chunk: the longest chunk fed in one call when continuing a state.
    cache_length: attention cache length for global-attention models
      (default: prompt + generation of each call, rounded up).
    quantize: "int8" samples with int8 weights and per-channel scales,
      quantized once from the model's (`sampling/quantize.py`; about half
      the weight bytes of bfloat16); None samples the model as it is.
    pad_small_rows: run the products of fewer than 16 rows (decode steps
      at small batch) padded to 16 rows (`nn.linear.pad_small_rows`; on an
      H200 batch-1 decode of RecurrentGemma-2B took 2.41 instead of 3.40
      ms per step). None: on where JAX's default backend is a GPU (measured
      on one H200 only) or the model already pads
      (`nn.linear.default_padding`). A model's own `pad_small_rows(model,
      False)` reads as "not set", so pass False here to turn it off. The
      model itself is left as it was.
  """

  def __init__(
      self,
      model: Griffin,
      tokenizer: Any = None,
      *,
      add_bos: bool = True,
      pad_id: int | None = None,
      sync_every: int = 8,
      decode_scan_impl: str | None = "associative",
      max_chunk: int = 1024,
      cache_length: int | None = None,
      quantize: str | None = None,
      pad_small_rows: bool | None = None,
  ):
    quantize_lib.check_quantization("quantize", quantize)
    if pad_small_rows is not None and not isinstance(pad_small_rows, bool):
      raise ValueError(f"pad_small_rows must be True, False or None, got "
                       f"{pad_small_rows!r}")
    if isinstance(tokenizer, str):
      from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

      tokenizer = tokenizers.get_tokenizer(tokenizer)
    self.model = model
    self.config = model.config
    self.tokenizer = None if tokenizer is None else _Tokenizer(tokenizer)
    self.add_bos = add_bos
    if pad_id is None:
      pad_id = self.tokenizer.pad_id if self.tokenizer else 0
      pad_id = 0 if pad_id is None or pad_id < 0 else pad_id
    self.pad_id = int(pad_id)
    if not _is_int(sync_every) or sync_every < 1:
      raise ValueError(f"sync_every must be an integer >= 1, got "
                       f"{sync_every!r}")
    if cache_length is not None and (not _is_int(cache_length) or
                                     cache_length < 1):
      raise ValueError(f"cache_length must be an integer >= 1 or None, got "
                       f"{cache_length!r}")
    self.sync_every = sync_every
    self.max_chunk = _next_power_of_two(max_chunk)
    self.cache_length = cache_length
    self._global_attention = (self.config.has_attention and
                              self.config.attention_window_size is None)
    if quantize == "int8" and quantize_lib.quantization_of(model) is None:
      self.model = quantize_lib.quantize_int8(model)
    if pad_small_rows is None:
      pad_small_rows = linear.default_padding(self.model)
    self.pad_small_rows = pad_small_rows
    with linear.small_rows_padding(self.model, pad_small_rows):
      self.graphdef, self.params = nnx.split(self.model)
    self.decode_graphdef = self.graphdef
    if decode_scan_impl and decode_scan_impl != self.config.scan_impl:
      decode_config = self.config.replace(scan_impl=decode_scan_impl)
      abstract = quantize_lib.abstract_model(
          decode_config, quantize_lib.quantization_of(self.model))
      linear.pad_small_rows(abstract, pad_small_rows)
      self.decode_graphdef = nnx.split(abstract)[0]
    (self._prefill, self._extend, self._extend_ragged,
     self._decode) = _jitted(self.graphdef, self.decode_graphdef)

  # Prompts -------------------------------------------------------------------

  @property
  def eos_id(self) -> int | None:
    return self.tokenizer.eos_id if self.tokenizer else None

  @functools.cached_property
  def chat_format(self):
    """The chat template on this sampler's tokenizer (`data/chat.py`)."""
    from recurrentgemma_jax.data import chat  # pylint: disable=g-import-not-at-top

    if self.tokenizer is None:
      raise ValueError("chat mode needs a tokenizer")
    return chat.ChatFormat(self.tokenizer)

  def _chat_stop(self, stop) -> list[str | int]:
    """`stop` plus the end of a model turn."""
    return stopping.as_list(stop) + [self.chat_format.stop]

  def encode(self, prompts: Prompt | Sequence[Prompt], *,
             add_bos: bool | None = None, chat: bool = False
             ) -> list[list[int]]:
    """Token ids of each prompt (strings are tokenized, with BOS if set).

    With `chat`, each prompt is a string (one user turn) or a `messages`
    list, rendered in the chat template up to the model header.
    """
    from recurrentgemma_jax.data import chat as chat_lib  # pylint: disable=g-import-not-at-top

    add_bos = self.add_bos if add_bos is None else add_bos
    if isinstance(prompts, str) or _is_id_row(prompts) or _is_messages(
        prompts):
      prompts = [prompts]
    rows = []
    for p in prompts:
      if chat:
        if not (isinstance(p, str) or _is_messages(p)):
          raise ValueError("chat prompts are strings or messages lists, not "
                           "token ids")
        ids = self.chat_format.prompt(chat_lib.as_turns(p), bos=add_bos)
        check_token_ids(ids, self.config.vocab_size, name="prompt")
      elif _is_messages(p):
        raise ValueError("a messages list is a chat prompt: pass chat=True")
      elif isinstance(p, str):
        if self.tokenizer is None:
          raise ValueError("string prompts need a tokenizer; pass token ids")
        ids = self.tokenizer.encode(p)
        bos = self.tokenizer.bos_id
        if add_bos and bos is not None and bos >= 0:
          ids = [bos] + ids
        check_token_ids(ids, self.config.vocab_size, name="prompt")
      else:
        ids = self._id_row(p)
      rows.append(ids)
    if not rows:
      raise ValueError("no prompts given")
    return rows

  def _id_row(self, p: Any, name: str = "prompt") -> list[int]:
    """`p` as a list of ints; rejects floats (1.7 is not token 1)."""
    ids = np.asarray(p)
    if ids.ndim != 1:
      raise ValueError(f"{name}: expected a flat list of token ids, got "
                       f"shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"{name}: token ids must be integers, got "
                       f"{p!r:.80}")
    check_token_ids(ids, self.config.vocab_size, name=name)
    return [int(t) for t in ids]

  def _decode_text(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids))

  # State building ------------------------------------------------------------

  def prefill(self, rows: IdRows, max_new_tokens: int = 0) -> DecodeState:
    """The state after prompts `rows` (token ids), in one forward pass.

    Rows are left-padded to a common length (a multiple of 32); the
    padding forms its own document, invisible to the prompt.
    """
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    rows = [self._id_row(r) for r in rows]
    if not rows:
      raise ValueError("no prompts given")
    if any(len(r) == 0 for r in rows):
      raise ValueError("every prompt needs at least one token (a fresh row "
                       "has nothing to continue from)")
    b = len(rows)
    length = _round_up(max(len(r) for r in rows), 32)
    tokens = np.full((b, length), self.pad_id, np.int32)
    seg = np.zeros((b, length), np.int32)
    for i, row in enumerate(rows):
      start = length - len(row)
      tokens[i, start:] = row
      seg[i, :start] = np.arange(start)
      seg[i, start:] = np.arange(len(row))
    cache_length = None
    if self._global_attention:
      cache_length = self.cache_length or _round_up(
          length + max(max_new_tokens, 1), 128)
      self._check_cache(cache_length,
                        np.array([len(r) for r in rows]) + max_new_tokens)
    return self._prefill(self.params, tokens, seg, cache_length=cache_length)

  def extend(self, state: DecodeState, rows: IdRows) -> DecodeState:
    """Feeds `rows[b]` (any lengths, possibly empty) after row b of `state`.

    The tokens every row has are fed as chunks (one model call each, sizes
    powers of two up to `max_chunk`); the rest token by token.
    """
    if len(rows) != state.batch_size:
      raise ValueError(f"{len(rows)} prompts for a state of "
                       f"{state.batch_size} rows")
    rows = [self._id_row(r) for r in rows]
    lengths = np.array([len(r) for r in rows], np.int32)
    self._check_room(state, lengths)
    common = int(lengths.min())
    done = 0
    while done < common:
      size = min(self.max_chunk, 1 << int(math.log2(common - done)))
      chunk = np.array([r[done:done + size] for r in rows], np.int32)
      state = self._extend(self.params, state, chunk)
      done += size
    rest = lengths - common
    if rest.max() > 0:
      width = _next_power_of_two(int(rest.max()))
      tail = np.full((len(rows), width), self.pad_id, np.int32)
      for i, r in enumerate(rows):
        tail[i, :rest[i]] = r[common:]
      state = self._extend_ragged(self.params, state, tail, rest)
    return state

  def _check_room(self, state: DecodeState, more: int | np.ndarray) -> None:
    """Global attention: each row's document must fit in the cache after
    `more` tokens (a ring buffer; the row's padding may be overwritten)."""
    if not self._global_attention:
      return
    sizes = [c.keys.shape[1] for c in state.cache.blocks
             if hasattr(c, "keys")]
    if sizes:
      self._check_cache(min(sizes), np.asarray(state.segment_pos) + more)

  def _check_cache(self, size: int, need: np.ndarray) -> None:
    """`need [B]`: tokens of each row's document that the cache must hold."""
    need = int(np.max(need))
    if need > size:
      raise ValueError(
          f"global attention cache holds {size} tokens; this call needs "
          f"{need} (prompt and new tokens): set Sampler(cache_length=...) "
          "to at least that, or leave it unset")

  # Generation ----------------------------------------------------------------

  def generate(
      self,
      prompts: Prompt | Sequence[Prompt],
      max_new_tokens: int,
      *,
      temperature: float = 0.0,
      top_k: int | None = None,
      top_p: float | None = None,
      stop: str | int | Sequence[str | int] | None = None,
      stop_at_eos: bool = True,
      seed: int | Sequence[int] = 0,
      return_logprobs: bool = False,
      return_logits: bool = False,
      state: DecodeState | None = None,
      return_state: bool = False,
      chat: bool = False,
  ) -> SamplerOutput:
    """Generates up to `max_new_tokens` tokens after each prompt.

    Args:
      prompts: a string, a token-id list, or a batch of either (any lengths).
      max_new_tokens: tokens to generate per row (stop conditions may end a
        row earlier).
      temperature: 0 is greedy (argmax); otherwise sample from
        softmax(logits / temperature).
      top_k: sample only among the k most likely tokens.
      top_p: nucleus sampling: among the most likely tokens whose total
        probability reaches top_p.
      stop: stop strings and/or stop token ids.
      stop_at_eos: also stop at the tokenizer's EOS.
      seed: one seed for the call (row b uses fold_in(key(seed), b)) or one
        per row; the same seed gives the same samples.
      return_logprobs: return each token's log-probability under the model.
      return_logits: return the `[n, V]` logits of every step (large).
      state: continue these rows (from an earlier `return_state=True` call):
        the prompts are appended to them (no BOS), and may be empty.
      return_state: return the state after the generated tokens.
      chat: wrap each prompt (a string or a `messages` list) in the chat
        template and stop at `<end_of_turn>` (see the module docstring).

    Returns:
      `SamplerOutput`.
    """
    start = self._start(prompts, max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, stop=stop,
                        stop_at_eos=stop_at_eos, seed=seed, state=state,
                        chat=chat)
    b = len(start.rows)
    out = self._run_decode(
        start, start.state, start.max_new_tokens,
        capacity=_next_power_of_two(max(start.max_new_tokens, 1)),
        step_offset=0, finished=np.zeros((b,), bool),
        return_logprobs=return_logprobs, return_logits=return_logits,
        keep_state=return_state,
        # The start state's buffers are reused unless the caller owns them
        # (`state` continued with no new tokens) or a replay may need them
        # (a stop string found only in the text, see below).
        donate=start.state is not state and not (return_state and
                                                 start.criteria.strings),
    )
    tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    stopped = np.asarray(out.stopped)
    logprobs = None if out.logprobs is None else np.asarray(out.logprobs)
    logits = None if out.logits is None else np.asarray(out.logits)

    result = SamplerOutput(text=[] if self.tokenizer else None, tokens=[],
                           finish_reasons=[], prompt_tokens=start.rows,
                           logprobs=[] if logprobs is not None else None,
                           logits=[] if logits is not None else None)
    replay = []  # tokens each row must have consumed, when a text stop cut it
    for i in range(b):
      gen = tokens[i, :lengths[i]].tolist()
      end = self._row_end(gen, bool(stopped[i]), start.criteria)
      if result.text is not None:
        result.text.append(end.text)
      replay.append(gen[:end.consumed])
      result.tokens.append(gen[:end.keep])
      result.finish_reasons.append("stop" if end.stopped else "length")
      if logprobs is not None:
        result.logprobs.append(logprobs[i, :end.keep])
      if logits is not None:
        result.logits.append(logits[i, :end.keep])
    if return_state:
      result.consumed = replay
      if any(len(r) < n for r, n in zip(replay, lengths)):
        # A stop string ended a row in its text but not as the tokens the
        # device looked for: rebuild the state from before the generation
        # with exactly the tokens through the stop string.
        result.state = self.extend(start.state, replay)
      else:
        result.state = out.state
    return result

  def _start(self, prompts, max_new_tokens, *, temperature, top_k, top_p,
             stop, stop_at_eos, seed, state, chat) -> _Start:
    """Checks a `generate` / `stream` call and runs its prompts."""
    sampling = SamplingParams(temperature, top_k, top_p)
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    if chat:
      stop = self._chat_stop_for_new(stop, state)
    if state is None:
      rows = self.encode(prompts, chat=chat)
      start = self.prefill(rows, max_new_tokens)
    else:
      rows = self._continuation_rows(prompts, state.batch_size)
      start = self.extend(state, rows)
      self._check_room(start, max_new_tokens)
    criteria = stopping.resolve(
        stop, encode=self.tokenizer.encode if self.tokenizer else None,
        eos_id=self.eos_id, stop_at_eos=stop_at_eos)
    return _Start(rows=rows, state=start, max_new_tokens=max_new_tokens,
                  sampling=sampling, criteria=criteria,
                  row_keys=self._row_keys(seed, len(rows)))

  def _row_end(self, gen: list[int], stopped: bool,
               criteria: stopping.StopCriteria) -> _RowEnd:
    """Where a row's generated tokens `gen` end: at the stop token that
    ended it on the device (`stopped`), or before the first stop string of
    its text."""
    keep = consumed = len(gen)
    if stopped and gen and gen[-1] in criteria.token_ids:
      keep -= 1
    text = None
    if self.tokenizer is not None:
      text = self._decode_text(gen[:keep])
      cut = stopping.find_stop(text, criteria.strings)
      if cut is not None:
        stopped = True
        stop_end = cut + min(len(s) for s in criteria.strings
                             if text.startswith(s, cut))
        through = stopping.tokens_through(gen[:keep], stop_end,
                                          self._decode_text)
        consumed = min(consumed, through)
        keep = stopping.tokens_before(gen[:keep], cut, self._decode_text)
        text = text[:cut]
    return _RowEnd(keep=keep, consumed=consumed, text=text, stopped=stopped)

  def _chat_stop_for_new(self, stop, state) -> list[str | int]:
    if state is not None:
      raise ValueError("chat=True starts new conversations; continue one "
                       "turn by turn with Sampler.conversation(chat=True)")
    return self._chat_stop(stop)

  def _continuation_rows(self, prompts, batch_size: int) -> list[list[int]]:
    if prompts is None or (isinstance(prompts, (list, tuple)) and
                           not prompts):
      return [[] for _ in range(batch_size)]
    if isinstance(prompts, str) or _is_id_row(prompts):
      prompts = [prompts]
    rows = [[] if (not isinstance(p, str) and len(p) == 0) else
            self.encode([p], add_bos=False)[0] for p in prompts]
    if len(rows) != batch_size:
      raise ValueError(f"{len(rows)} prompts for a state of {batch_size} "
                       "rows")
    return rows

  def _row_keys(self, seed, batch: int) -> RowKeys:
    if isinstance(seed, (int, np.integer)):
      base = jax.random.key(int(seed))
      return jax.vmap(lambda i: jax.random.fold_in(base, i))(
          jnp.arange(batch))
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
      raise ValueError(f"{len(seeds)} seeds for {batch} rows")
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))

  def _run_decode(self, start: _Start, state: DecodeState, num_steps: int,
                  *, capacity: int, step_offset: int, finished: np.ndarray,
                  keep_state: bool, donate: bool,
                  return_logprobs: bool = False, return_logits: bool = False,
                  sync_every: int | None = None) -> decode_lib.DecodeOutput:
    """One decode-loop call from `state` with `start`'s sampling, stop
    criteria and keys."""
    inputs = decode_lib.DecodeInputs.create(
        num_steps, start.row_keys, start.criteria, finished=finished,
        step_offset=step_offset,
        temperature=start.sampling.temperature or 1.0,
        top_p=start.sampling.top_p or 1.0)
    options = decode_lib.DecodeOptions(
        capacity=capacity, sampling=start.sampling.mode, pad_id=self.pad_id,
        return_logprobs=return_logprobs, return_logits=return_logits,
        freeze_finished=keep_state, sync_every=sync_every or self.sync_every)
    return self._decode[donate](self.params, state, inputs, options)

  # Streaming -------------------------------------------------------------------

  def stream(
      self,
      prompts: Prompt | Sequence[Prompt],
      max_new_tokens: int,
      *,
      temperature: float = 0.0,
      top_k: int | None = None,
      top_p: float | None = None,
      stop: str | int | Sequence[str | int] | None = None,
      stop_at_eos: bool = True,
      seed: int | Sequence[int] = 0,
      state: DecodeState | None = None,
      chat: bool = False,
  ) -> Stream:
    """Like `generate`, but yields each step as soon as it is sampled.

    One jitted decode step per token (the host sees every token), with the
    same samples as `generate` for the same seed. A row ends at a stop token
    or when its text contains a stop string; the iterator ends when every
    row has ended. Text that could be the start of a stop string is held
    back until it is known not to be one, so stop text never appears.
    The returned `Stream`'s `state` holds the state once the loop has
    ended. `chat` as in `generate`.
    """
    return Stream(self._stream_steps(
        prompts, max_new_tokens, temperature=temperature, top_k=top_k,
        top_p=top_p, stop=stop, stop_at_eos=stop_at_eos, seed=seed,
        state=state, chat=chat))

  def _stream_steps(self, prompts, max_new_tokens, *, state, **options
                    ) -> Generator[StreamStep, None, DecodeState]:
    """`stream`'s steps; returns the final state. Runs (and checks its
    arguments) on the first `next`."""
    start = self._start(prompts, max_new_tokens, state=state, **options)
    current = start.state
    b = len(start.rows)
    finished = np.zeros((b,), bool)
    generated: list[list[int]] = [[] for _ in range(b)]
    shown = [0] * b  # characters of text already yielded per row
    for step in range(start.max_new_tokens):
      out = self._run_decode(
          start, current, 1, capacity=1, step_offset=step,
          finished=finished, keep_state=True, donate=current is not state,
          sync_every=1)
      current = out.state
      token = np.asarray(out.tokens)[:, 0]
      active = np.asarray(out.lengths) > 0
      stopped = np.asarray(out.stopped)
      last = step == start.max_new_tokens - 1
      step_tokens, step_text = [], []
      for i in range(b):
        if not active[i]:
          step_tokens.append(None)
          step_text.append("")
          continue
        tok = int(token[i])
        step_tokens.append(tok)
        generated[i].append(tok)
        end = self._row_end(generated[i], bool(stopped[i]), start.criteria)
        delta = ""
        if end.text is not None:
          text = end.text
          if not (end.stopped or last):  # more text may follow
            if text.endswith("\ufffd"):
              text = text[:-1]  # an incomplete multi-byte character
            text = text[:stopping.shown_length(text, start.criteria.strings)]
          if len(text) > shown[i]:
            delta = text[shown[i]:]
            shown[i] = len(text)
        step_text.append(delta)
        if end.stopped:
          finished[i] = True
      yield StreamStep(tokens=step_tokens, text=step_text,
                       finished=finished.tolist())
      if finished.all():
        break
    return current

  def conversation(self, *, chat: bool = False, **defaults
                   ) -> "Conversation":
    """A `Conversation` over this sampler (`defaults` go to each turn)."""
    return Conversation(self, chat=chat, **defaults)


class Conversation:
  """A single row that remembers its state between turns.

      chat = sampler.conversation(max_new_tokens=64, stop=["\\nUser:"])
      reply = chat.send("User: hi\\nModel:")        # str (or token ids)
      reply = chat.send("\\nUser: and then?\\nModel:")

  Each turn feeds only the new text: the model's cache already holds the
  conversation, whatever its length (constant memory).

  With `chat=True`, each `send` takes a user turn (a string, or a
  `messages` list, e.g. a system message and the first user turn) and
  wraps it in the chat template: the first as `<bos><start_of_turn>user\\n
  ...<end_of_turn>\\n<start_of_turn>model\\n`, later ones after the `\\n`
  that follows the reply's `<end_of_turn>` (added first if the reply was
  cut, e.g. by max_new_tokens). Replies stop at `<end_of_turn>`.
  """

  def __init__(self, sampler: Sampler, *, chat: bool = False, **defaults):
    self.sampler = sampler
    self.chat = chat
    self.defaults = defaults
    self.state: DecodeState | None = None
    self.history: list[tuple[Prompt, SamplerOutput]] = []
    self._turn_open = False  # chat: the last reply has no <end_of_turn>
    if chat:
      sampler.chat_format  # pylint: disable=pointless-statement  # fail now

  def _chat_ids(self, prompt) -> list[int]:
    from recurrentgemma_jax.data import chat as chat_lib  # pylint: disable=g-import-not-at-top

    if not (isinstance(prompt, str) or _is_messages(prompt)):
      raise ValueError("a chat turn is a string or a messages list, not "
                       "token ids")
    fmt = self.sampler.chat_format
    turns = chat_lib.as_turns(prompt)
    if self.state is None:
      return fmt.prompt(turns, bos=self.sampler.add_bos)
    return fmt.continuation(turns, close_model_turn=self._turn_open)

  def send(self, prompt: Prompt, **kwargs) -> str | list[int]:
    """Appends `prompt`, generates a reply; returns its text (or tokens)."""
    options = {**self.defaults, **kwargs}
    options.setdefault("max_new_tokens", 64)
    row = prompt
    if self.chat:
      row = self._chat_ids(prompt)
      options["stop"] = self.sampler._chat_stop(options.get("stop"))  # pylint: disable=protected-access
    out = self.sampler.generate([row], state=self.state,
                                return_state=True, **options)
    self.state = out.state
    if self.chat:
      self._turn_open = not self.sampler.chat_format.ends_turn(
          out.consumed[0])
    self.history.append((prompt, out))
    return out.text[0] if out.text is not None else out.tokens[0]
