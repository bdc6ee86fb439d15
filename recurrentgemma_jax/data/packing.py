"""Tokenize documents and pack them into fixed-length rows.

Documents become `[bos] + tokens + [eos]` and are concatenated, then cut into
rows of `seq_len + 1` tokens (grain's concat-then-split packing, whose state
checkpoints exactly). A row yields the training example

  inputs = row[:-1], targets = row[1:],
  segment_pos = position of each input in its document piece (0 at starts),
  mask = 1 where the target continues the input's document piece.

A document cut at a row end continues in the next row as a new piece that
starts at position 0: the model never carries state across rows.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from recurrentgemma_jax.data.tokenizers import Tokenizer


class Tokenize(grain.transforms.Map):
  """`{text_field: bytes | str}` -> `{"tokens": int32 [n]}` with bos / eos."""

  def __init__(self, tokenizer: Tokenizer, text_field: str = "text"):
    self.tokenizer = tokenizer
    self.text_field = text_field

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    text = element[self.text_field]
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    ids = self.tokenizer.encode(text)
    ids = [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id]
    return {"tokens": np.asarray(ids, np.int32)}


def to_example(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed row of `T + 1` tokens -> `[T]` inputs, targets, positions, mask."""
  tokens = row["tokens"]
  segments = row["tokens_segment_ids"]
  positions = row["tokens_positions"]
  same_piece = (segments[1:] == segments[:-1]) & (segments[1:] > 0)
  return {
      "inputs": tokens[:-1].astype(np.int32),
      "targets": tokens[1:].astype(np.int32),
      "segment_pos": positions[:-1].astype(np.int32),
      "mask": same_piece.astype(np.float32),
  }


def pack(documents: grain.IterDataset, seq_len: int) -> grain.IterDataset:
  """Packs `{"tokens": [n]}` documents into `[seq_len]` training examples."""
  packed = grain.experimental.ConcatThenSplitIterDataset(
      documents,
      length_struct={"tokens": seq_len + 1},
      split_full_length_features=True,
  )
  return packed.map(to_example)
