"""Synthetic copy and retrieval tasks, generated from the example index.

Each task is a random-access source: example `i` of split `s` is drawn from
`np.random.default_rng([seed, s, i])`, so any example can be rebuilt from its
index alone and a resumed run sees exactly the data it would have seen.

An example is a dict of `[T]` arrays: `inputs`, `targets` (int32),
`segment_pos` (int32, one document per row) and `mask` (float32, 1 on the
answer tokens that are scored and trained on).

Tasks (De et al. 2024, Appendix H; Arora et al. 2023 for MQAR):
- selective copy: data tokens scattered among blanks; after a separator the
  model must repeat them in order.
- induction heads: a trigger token followed by a random token somewhere in a
  random sequence; at the end the trigger appears again and the model must
  recall the token that followed it.
- MQAR: key-value pairs, then queries of some keys among blanks; at each query
  the model must output the key's value.
"""

from __future__ import annotations

import abc

import numpy as np

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import batch

SPLITS = {"train": 0, "eval": 1}
# Examples per split. Indices are generated, never stored, so this only needs
# to exceed any number of examples a run will draw.
NUM_EXAMPLES = 2**40


class SyntheticTask(abc.ABC):
  """Random-access source of fixed-length examples.

  Attributes:
    seq_len: T, the length of every example.
    vocab_size: tokens the model must support.
  """

  vocab_size: int

  def __init__(self, seq_len: int, seed: int, split: str):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    self.seq_len = seq_len
    self.seed = seed
    self.split = split

  def __len__(self) -> int:
    return NUM_EXAMPLES

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
    inputs, targets, mask = self.sample(rng)
    return batch.example(inputs=inputs, targets=targets,
                         segment_pos=np.arange(self.seq_len), mask=mask)

  @abc.abstractmethod
  def sample(self, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One example: `(inputs [T], targets [T], mask [T])`."""

  @property
  @abc.abstractmethod
  def chance_accuracy(self) -> float:
    """Accuracy of guessing uniformly among the possible answers."""


def _next_token(sequence: np.ndarray, answer_len: int):
  """Next-token prediction on `sequence [T+1]`, scoring the last answers."""
  inputs, targets = sequence[:-1], sequence[1:]
  mask = np.zeros(len(targets), np.float32)
  mask[-answer_len:] = 1.0
  return inputs, targets, mask


class SelectiveCopy(SyntheticTask):
  """Blank 0, separator 1, data tokens 2..V-1.

  `[context with num_tokens data tokens at random positions] [sep] [data]`,
  trained as next-token prediction; only the copied tokens are scored.
  """

  BLANK, SEP = 0, 1

  def __init__(self, seq_len: int, seed: int, split: str, *,
               vocab_size: int = 16, num_tokens: int = 16):
    super().__init__(seq_len, seed, split)
    if vocab_size < 3:
      raise ConfigError(f"data.vocab_size={vocab_size} must be >= 3")
    context = seq_len - num_tokens  # T + 1 = context + sep + num_tokens
    if num_tokens < 1 or context < num_tokens:
      raise ConfigError(
          f"selective copy: seq_len={seq_len} is too short for "
          f"num_tokens={num_tokens} (need seq_len >= 2 * num_tokens)"
      )
    self.vocab_size = vocab_size
    self.num_tokens = num_tokens
    self._context = context

  def sample(self, rng):
    data = rng.integers(2, self.vocab_size, self.num_tokens)
    positions = np.sort(rng.choice(self._context, self.num_tokens,
                                   replace=False))
    context = np.full(self._context, self.BLANK)
    context[positions] = data
    sequence = np.concatenate([context, [self.SEP], data])
    return _next_token(sequence, self.num_tokens)

  @property
  def chance_accuracy(self) -> float:
    return 1.0 / (self.vocab_size - 2)


class InductionHeads(SyntheticTask):
  """Trigger 0, other tokens 1..V-1; one scored answer at the end."""

  TRIGGER = 0

  def __init__(self, seq_len: int, seed: int, split: str, *,
               vocab_size: int = 16):
    super().__init__(seq_len, seed, split)
    if vocab_size < 3 or seq_len < 4:
      raise ConfigError("induction heads: need vocab_size >= 3, seq_len >= 4")
    self.vocab_size = vocab_size

  def sample(self, rng):
    t = self.seq_len
    sequence = rng.integers(1, self.vocab_size, t + 1)
    first = rng.integers(0, t - 2)  # trigger + answer end before the query
    sequence[first] = self.TRIGGER
    sequence[t - 1] = self.TRIGGER
    sequence[t] = sequence[first + 1]
    return _next_token(sequence, 1)

  @property
  def chance_accuracy(self) -> float:
    return 1.0 / (self.vocab_size - 1)


class MultiQueryAssociativeRecall(SyntheticTask):
  """Keys from [1, V/2), values from [V/2, V), blank 0.

  inputs:  k1 v1 k2 v2 ... kn vn | blanks with the n keys placed as queries
  targets: the value of each query key at its position; mask 1 there.
  """

  BLANK = 0

  def __init__(self, seq_len: int, seed: int, split: str, *,
               vocab_size: int = 256, num_pairs: int = 16):
    super().__init__(seq_len, seed, split)
    half = vocab_size // 2
    if num_pairs < 1 or half - 1 < num_pairs:
      raise ConfigError(
          f"mqar: vocab_size={vocab_size} needs more than 2 * num_pairs="
          f"{2 * num_pairs} tokens (distinct keys)"
      )
    if seq_len < 3 * num_pairs:
      raise ConfigError(
          f"mqar: seq_len={seq_len} must be >= 3 * num_pairs={3 * num_pairs}"
      )
    self.vocab_size = vocab_size
    self.num_pairs = num_pairs

  def sample(self, rng):
    n, t = self.num_pairs, self.seq_len
    half = self.vocab_size // 2
    keys = rng.choice(np.arange(1, half), n, replace=False)
    values = rng.integers(half, self.vocab_size, n)
    inputs = np.full(t, self.BLANK)
    targets = np.full(t, self.BLANK)
    mask = np.zeros(t, np.float32)
    inputs[0:2 * n:2], inputs[1:2 * n:2] = keys, values
    order = rng.permutation(n)
    slots = 2 * n + np.sort(rng.choice(t - 2 * n, n, replace=False))
    inputs[slots] = keys[order]
    targets[slots] = values[order]
    mask[slots] = 1.0
    return inputs, targets, mask

  @property
  def chance_accuracy(self) -> float:
    return 1.0 / (self.vocab_size - self.vocab_size // 2)


TASKS: dict[str, type[SyntheticTask]] = {
    "selective_copy": SelectiveCopy,
    "induction_heads": InductionHeads,
    "mqar": MultiQueryAssociativeRecall,
}
