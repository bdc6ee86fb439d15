"""Stop criteria: stop tokens and stop strings.

A row stops on the device when it samples a stop token, or when its last
generated tokens spell the tokenization of a stop string. Because a string
can be tokenized differently in context, the host also searches the decoded
text of each row for the stop strings and cuts the output there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Padding of the stop arrays: matches no token.
_NO_TOKEN = -1


@dataclasses.dataclass(frozen=True)
class StopCriteria:
  """Resolved stop conditions of one `generate` call.

  Attributes:
    token_ids: stop as soon as one of these tokens is sampled.
    sequences: stop when the generated tokens end with one of these.
    strings: cut the decoded text at the first of these (host side).
  """

  token_ids: tuple[int, ...] = ()
  sequences: tuple[tuple[int, ...], ...] = ()
  strings: tuple[str, ...] = ()

  @property
  def max_sequence_length(self) -> int:
    return max((len(s) for s in self.sequences), default=0)


def as_list(stop: str | int | Iterable[str | int] | None) -> list[str | int]:
  """A call's `stop` argument (None, one stop, or several) as a list."""
  if stop is None:
    return []
  if isinstance(stop, (str, int, np.integer)):
    return [stop]
  return list(stop)


def resolve(
    stop: str | int | Iterable[str | int] | None,
    *,
    encode: Callable[[str], list[int]] | None,
    eos_id: int | None,
    stop_at_eos: bool,
) -> StopCriteria:
  """Builds the stop criteria of a call.

  Args:
    stop: stop strings and/or stop token ids (a single one or a sequence).
    encode: the tokenizer's encode (needed for stop strings).
    eos_id: the end-of-sequence token.
    stop_at_eos: also stop at `eos_id`.
  """
  items = as_list(stop)
  ids, sequences, strings = [], [], []
  if stop_at_eos and eos_id is not None and eos_id >= 0:
    ids.append(int(eos_id))
  for item in items:
    if isinstance(item, (bool, np.bool_)):
      raise TypeError(f"stop items must be str or int, got {item!r}")
    if isinstance(item, (int, np.integer)):
      ids.append(int(item))
    elif isinstance(item, str):
      if not item:
        raise ValueError("stop strings must not be empty")
      if encode is None:
        raise ValueError(
            f"stop string {item!r} needs a tokenizer; pass token ids instead"
        )
      strings.append(item)
      seq = tuple(int(t) for t in encode(item))
      if len(seq) == 1:
        ids.append(seq[0])
      elif seq:
        sequences.append(seq)
    else:
      raise TypeError(f"stop items must be str or int, got {item!r}")
  return StopCriteria(
      token_ids=tuple(dict.fromkeys(ids)),
      sequences=tuple(dict.fromkeys(sequences)),
      strings=tuple(dict.fromkeys(strings)),
  )


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, multiple * math.ceil(n / multiple))


def device_arrays(criteria: StopCriteria) -> tuple[np.ndarray, np.ndarray]:
  """`(ids [S], sequences [M, L])` int32, padded with -1 (matches nothing).

  Sizes are rounded up (ids to a multiple of 4, sequences to multiples of
  2 x 4) so that similar calls share a compilation. Sequences are
  right-aligned: the last token of each is in column L-1.
  """
  ids = np.full(_round_up(len(criteria.token_ids), 4), _NO_TOKEN, np.int32)
  ids[:len(criteria.token_ids)] = criteria.token_ids
  if not criteria.sequences:
    return ids, np.zeros((0, 0), np.int32)
  length = _round_up(criteria.max_sequence_length, 4)
  seqs = np.full((_round_up(len(criteria.sequences), 2), length), _NO_TOKEN,
                 np.int32)
  for i, seq in enumerate(criteria.sequences):
    seqs[i, length - len(seq):] = seq
  return ids, seqs


def is_stop(
    token: jax.Array,
    recent: jax.Array | None,
    ids: jax.Array,
    sequences: jax.Array,
) -> jax.Array:
  """`[B]` bool: the sampled `token [B]` ends the row.

  Args:
    token: the token just sampled.
    recent: `[B, L]` the last L generated tokens, `token` last (-1 before
      the first); None when there are no stop sequences.
    ids: `[S]` stop token ids (-1 = unused).
    sequences: `[M, L]` right-aligned stop sequences (-1 = wildcard before
      a sequence's first token; an all -1 row never matches).
  """
  stop = jnp.any(token[:, None] == ids[None, :], axis=-1)
  if recent is not None and sequences.shape[0]:
    used = sequences >= 0  # [M, L]
    same = recent[:, None, :] == sequences[None]  # [B, M, L]
    match = jnp.all(same | ~used[None], axis=-1) & jnp.any(used, -1)[None]
    stop = stop | jnp.any(match, axis=-1)
  return stop


def find_stop(text: str, strings: Sequence[str]) -> int | None:
  """Index in `text` where the earliest stop string begins, or None."""
  best = None
  for s in strings:
    i = text.find(s)
    if i >= 0 and (best is None or i < best):
      best = i
  return best


def shown_length(text: str, strings: Sequence[str]) -> int:
  """How much of `text` (which holds no whole stop string) a stream may
  show now: all but the longest tail that could begin a stop string."""
  hold = 0
  for s in strings:
    for k in range(min(len(s) - 1, len(text)), hold, -1):
      if text.endswith(s[:k]):
        hold = k
        break
  return len(text) - hold


def tokens_before(
    tokens: Sequence[int],
    cut: int,
    decode: Callable[[list[int]], str],
) -> int:
  """The largest k whose decoding of `tokens[:k]` has at most `cut`
  characters: the tokens wholly before a stop string found at `cut`."""
  keep = 0
  for k in range(1, len(tokens) + 1):
    if len(decode(list(tokens[:k]))) > cut:
      break
    keep = k
  return keep


def tokens_through(
    tokens: Sequence[int],
    end: int,
    decode: Callable[[list[int]], str],
) -> int:
  """The smallest k whose decoding of `tokens[:k]` has at least `end`
  characters: the tokens through a stop string ending at `end` (all of
  `tokens` if none)."""
  for k in range(1, len(tokens) + 1):
    if len(decode(list(tokens[:k]))) >= end:
      return k
  return len(tokens)
