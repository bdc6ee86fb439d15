"""The jitted parts of sampling: prefill, continuation and the decode loop.

Everything here is a pure function of `(graphdef, params, ...)`; the
`Sampler` jits them once per static configuration. The decoding state of a
batch is a `DecodeState`: the model's constant-size `GriffinCache` after
every token consumed so far, plus the logits of the next token. A decode
step samples a token from those logits and feeds it to the model, so the
cache always holds everything generated (stop tokens included) and a later
call can continue the rows with more tokens.

Device loop: `lax.while_loop` over blocks of `sync_every` steps, each block
a fixed-trip-count `fori_loop`. The loop condition (steps left, rows still
running) is checked once per block, so the host synchronises with the device
every `sync_every` tokens instead of every token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from recurrentgemma_jax.model import GriffinCache
from recurrentgemma_jax.sampling import logits as logits_lib
from recurrentgemma_jax.sampling import stopping

# Shape aliases (real objects, so typing.get_type_hints resolves them).
PerRow = Int[Array, "B"]
RowFlags = Bool[Array, "B"]
NextLogits = Float[Array, "B V"]
Generated = Int[Array, "B N"]
GeneratedLogprobs = Float[Array, "B N"]
GeneratedLogits = Float[Array, "B N V"]


class DecodeState(NamedTuple):
  """Where each row of a batch stands; pass it back to continue the rows.

  Attributes:
    cache: the model's state after every token consumed so far (its size
      does not depend on the number of tokens).
    logits: `[B, V]` logits of the next token (model dtype).
    segment_pos: `[B]` int32 position of the next token in its document.
  """

  cache: GriffinCache
  logits: NextLogits
  segment_pos: PerRow

  @property
  def batch_size(self) -> int:
    return self.segment_pos.shape[0]

  @property
  def num_tokens(self) -> jax.Array:
    """`[B]` tokens consumed so far in each row (padding included)."""
    return self.cache.num_tokens


class DecodeOutput(NamedTuple):
  """What one decode-loop call returns (device arrays).

  Attributes:
    state: the state after the generated tokens.
    tokens: `[B, N]` generated tokens (`pad` after each row's end).
    lengths: `[B]` tokens generated in each row (stop token included).
    stopped: `[B]` bool, the row ended on a stop condition.
    logprobs: `[B, N]` float32 log-probability of each token under the
      model, or None.
    logits: `[B, N, V]` float32 logits each token was sampled from, or None.
  """

  state: DecodeState
  tokens: Generated
  lengths: PerRow
  stopped: RowFlags
  logprobs: GeneratedLogprobs | None
  logits: GeneratedLogits | None


def _where_rows(mask: jax.Array, new: Any, old: Any) -> Any:
  """`new` where `mask [B]` is True, `old` elsewhere, leaf by leaf."""

  def pick(n, o):
    m = mask.reshape(mask.shape + (1,) * (n.ndim - 1))
    return jnp.where(m, n, o)

  return jax.tree.map(pick, new, old)


def _merge(graphdef, params):
  return nnx.merge(graphdef, params)


def prefill(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: jax.Array,
    segment_pos: jax.Array,
    *,
    cache_length: int | None = None,
) -> DecodeState:
  """Runs prompts through the model in one forward pass.

  Args:
    graphdef, params: the model (`nnx.split`).
    tokens: `[B, P]` prompts, left-padded: each row's padding is a document
      of its own (segment_pos restarts at 0 where the prompt begins), so no
      layer lets the prompt see it.
    segment_pos: `[B, P]` int32.
    cache_length: the attention cache length; needed only with global
      attention, whose cache must hold the prompt and every generated token.

  Returns:
    The `DecodeState` after the prompts.
  """
  model = _merge(graphdef, params)
  b = tokens.shape[0]
  cache = None if cache_length is None else model.init_cache(b, cache_length)
  logits, cache = model(tokens, segment_pos, cache, return_cache=True,
                        last_only=True)
  return DecodeState(cache=cache, logits=logits[:, -1],
                     segment_pos=segment_pos[:, -1] + 1)


def extend(
    graphdef: nnx.GraphDef,
    params: Any,
    state: DecodeState,
    tokens: jax.Array,
) -> DecodeState:
  """Feeds `tokens [B, T]` (the same count for every row) after `state`.

  One model call over the chunk (chunked prefill); the logits of its last
  token (the only ones computed) become the next-token logits.
  """
  model = _merge(graphdef, params)
  t = tokens.shape[1]
  segment_pos = state.segment_pos[:, None] + jnp.arange(t, dtype=jnp.int32)
  logits, cache = model(tokens, segment_pos, state.cache, return_cache=True,
                        last_only=True)
  return DecodeState(cache=cache, logits=logits[:, -1],
                     segment_pos=state.segment_pos + t)


def extend_ragged(
    graphdef: nnx.GraphDef,
    params: Any,
    state: DecodeState,
    tokens: jax.Array,
    lengths: jax.Array,
) -> DecodeState:
  """Feeds `tokens[b, :lengths[b]]` after each row of `state`.

  Token by token (a scan over the R columns of `tokens [B, R]`); a row whose
  tokens are used up keeps its state unchanged.
  """
  model = _merge(graphdef, params)

  def step(state, inputs):
    token, j = inputs
    active = j < lengths
    logits, cache = model(token[:, None], state.segment_pos[:, None],
                          state.cache, return_cache=True)
    new = DecodeState(cache=cache, logits=logits[:, 0],
                      segment_pos=state.segment_pos + 1)
    return _where_rows(active, new, state), None

  r = tokens.shape[1]
  state, _ = jax.lax.scan(
      step, state, (tokens.T, jnp.arange(r, dtype=jnp.int32))
  )
  return state


class _Carry(NamedTuple):
  state: DecodeState
  step: jax.Array  # [] int32, steps taken in this call
  done: jax.Array  # [B] bool
  stopped: jax.Array  # [B] bool
  lengths: jax.Array  # [B] int32
  tokens: jax.Array  # [B, N]
  recent: jax.Array | None  # [B, L] last generated tokens (stop sequences)
  logprobs: jax.Array | None  # [B, N]
  logits: jax.Array | None  # [B, N, V]


class DecodeInputs(NamedTuple):
  """The traced inputs of one decode-loop call (new values do not
  recompile).

  Attributes:
    num_steps: `[]` int32, at most `DecodeOptions.capacity`: tokens to
      generate per row.
    row_keys: `[B]` PRNG keys (unused when greedy); step s of this call uses
      `fold_in(key, step_offset + s)`.
    step_offset: `[]` int32 (see `row_keys`; streaming passes its position).
    temperature: `[]` float32 (unused when greedy).
    top_p: `[]` float32 (used when `DecodeOptions.sampling.top_p`).
    stop_ids: `[S]` int32 stop tokens, from `stopping.device_arrays`.
    stop_sequences: `[M, L]` int32 stop sequences, from
      `stopping.device_arrays`.
    finished: `[B]` bool, rows that have already ended (they generate
      nothing).
  """

  num_steps: jax.Array
  row_keys: jax.Array
  step_offset: jax.Array
  temperature: jax.Array
  top_p: jax.Array
  stop_ids: jax.Array
  stop_sequences: jax.Array
  finished: jax.Array

  @classmethod
  def create(
      cls,
      num_steps: int,
      row_keys: jax.Array,
      criteria: stopping.StopCriteria,
      *,
      finished: Any = None,
      step_offset: int = 0,
      temperature: float = 1.0,
      top_p: float = 1.0,
  ) -> DecodeInputs:
    """The inputs for `row_keys [B]` rows (`finished`: none by default)."""
    ids, seqs = stopping.device_arrays(criteria)
    if finished is None:
      finished = jnp.zeros(row_keys.shape[:1], bool)
    return cls(
        num_steps=jnp.int32(num_steps), row_keys=row_keys,
        step_offset=jnp.int32(step_offset),
        temperature=jnp.float32(temperature), top_p=jnp.float32(top_p),
        stop_ids=jnp.asarray(ids), stop_sequences=jnp.asarray(seqs),
        finished=jnp.asarray(finished))


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """The static options of the decode loop (each value compiles once).

  Attributes:
    capacity: size N of the output buffers.
    sampling: the sampling choices (greedy, top_k, top-p on).
    pad_id: written after a row's end.
    return_logprobs, return_logits: also record those.
    freeze_finished: keep a finished row's state exactly as it was after its
      last token (costs a select over the cache per step); needed only when
      the state is used afterwards.
    sync_every: steps per device-side block between loop-condition checks.
  """

  capacity: int
  sampling: logits_lib.SamplingMode
  pad_id: int = 0
  return_logprobs: bool = False
  return_logits: bool = False
  freeze_finished: bool = False
  sync_every: int = 8


def decode(
    graphdef: nnx.GraphDef,
    params: Any,
    state: DecodeState,
    inputs: DecodeInputs,
    options: DecodeOptions,
) -> DecodeOutput:
  """Generates up to `inputs.num_steps` tokens per row on the device.

  Each step samples a token from `state.logits`, records it, and feeds it to
  the model. A row ends after sampling a stop token (or completing a stop
  sequence); the loop ends when every row has ended or `num_steps` steps ran.

  Args:
    graphdef, params: the model.
    state: where the rows stand (its buffers may be donated).
    inputs: the traced inputs (steps, keys, sampling values, stop criteria,
      finished rows).
    options: the static options.

  Returns:
    `DecodeOutput`.
  """
  model = _merge(graphdef, params)
  b = state.segment_pos.shape[0]
  capacity, sampling, pad_id = (options.capacity, options.sampling,
                                options.pad_id)
  stop_sequences = inputs.stop_sequences
  seq_len = stop_sequences.shape[1] if stop_sequences.shape[0] else 0

  def one_step(carry: _Carry) -> _Carry:
    st = carry.state
    active = ~carry.done & (carry.step < inputs.num_steps)
    keys = None
    if not sampling.greedy:
      keys = jax.vmap(jax.random.fold_in, (0, None))(
          inputs.row_keys, inputs.step_offset + carry.step)
    token = logits_lib.sample_tokens(st.logits, keys, sampling,
                                     inputs.temperature, inputs.top_p)
    token = jnp.where(active, token, pad_id)
    col = jnp.minimum(carry.step, capacity - 1)

    def record(buffer, value):
      old = jax.lax.dynamic_index_in_dim(buffer, col, axis=1, keepdims=False)
      m = active.reshape((b,) + (1,) * (value.ndim - 1))
      return jax.lax.dynamic_update_index_in_dim(
          buffer, jnp.where(m, value.astype(buffer.dtype), old), col, axis=1)

    tokens = record(carry.tokens, token)
    logprobs = carry.logprobs
    if logprobs is not None:
      logprobs = record(logprobs, logits_lib.token_logprobs(st.logits, token))
    logits_buf = carry.logits
    if logits_buf is not None:
      logits_buf = record(logits_buf, st.logits.astype(jnp.float32))
    recent = carry.recent
    if recent is not None:
      shifted = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
      recent = jnp.where(active[:, None], shifted, recent)
    stop = active & stopping.is_stop(token, recent, inputs.stop_ids,
                                     stop_sequences)

    logits, cache = model(token[:, None], st.segment_pos[:, None], st.cache,
                          return_cache=True)
    new = DecodeState(cache=cache, logits=logits[:, 0],
                      segment_pos=st.segment_pos + 1)
    if options.freeze_finished:
      new = _where_rows(active, new, st)
    return _Carry(
        state=new,
        step=carry.step + 1,
        done=carry.done | stop,
        stopped=carry.stopped | stop,
        lengths=carry.lengths + active.astype(jnp.int32),
        tokens=tokens,
        recent=recent,
        logprobs=logprobs,
        logits=logits_buf,
    )

  def block(carry: _Carry) -> _Carry:
    return jax.lax.fori_loop(0, options.sync_every,
                             lambda _, c: one_step(c), carry)

  def running(carry: _Carry) -> jax.Array:
    return (carry.step < inputs.num_steps) & jnp.any(~carry.done)

  vocab = state.logits.shape[-1]
  carry = _Carry(
      state=state,
      step=jnp.zeros((), jnp.int32),
      done=inputs.finished,
      stopped=jnp.zeros((b,), bool),
      lengths=jnp.zeros((b,), jnp.int32),
      tokens=jnp.full((b, capacity), pad_id, jnp.int32),
      recent=(jnp.full((b, seq_len), -1, jnp.int32) if seq_len else None),
      logprobs=(jnp.zeros((b, capacity), jnp.float32)
                if options.return_logprobs else None),
      logits=(jnp.zeros((b, capacity, vocab), jnp.float32)
              if options.return_logits else None),
  )
  carry = jax.lax.while_loop(running, block, carry)
  return DecodeOutput(
      state=carry.state,
      tokens=carry.tokens,
      lengths=carry.lengths,
      stopped=carry.stopped,
      logprobs=carry.logprobs,
      logits=carry.logits,
  )


def jit_decode(graphdef: nnx.GraphDef, *, donate: bool):
  """`decode` jitted for one model: `fn(params, state, inputs, options)`,
  with `options` static."""
  return jax.jit(
      functools.partial(decode, graphdef),
      static_argnames=("options",),
      donate_argnames=("state",) if donate else (),
  )
