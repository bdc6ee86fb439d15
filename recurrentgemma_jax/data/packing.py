"""Tokenize documents and pack them into fixed-length rows.

Documents become `[bos] + tokens + [eos]` and are concatenated, then cut into
rows of `seq_len + 1` tokens (grain's concat-then-split packing, whose state
checkpoints exactly). A row yields the training example

  inputs = row[:-1], targets = row[1:],
  segment_pos = position of each input in its document piece (0 at starts),
  mask = 1 where the target continues the input's document piece.

A document cut at a row end continues in the next row as a new piece that
starts at position 0: the model never carries state across rows.

Documents may carry a per-token `loss_mask` (float32 [n], chat data: 1 on
the tokens of model turns, see `chat.py`); it is packed beside the tokens
and multiplies the mask: `mask[i] *= loss_mask of targets[i]`.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import batch
from recurrentgemma_jax.data import chat
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


class ChatTokenize(grain.transforms.Map):
  """`{field: JSON conversation}` -> `{"tokens": int32 [n], "loss_mask":
  float32 [n]}` in the chat template (`chat.py`).

  The JSON is a `messages` list (what `chat.dumps` stores) or an object with
  a "messages" key.
  """

  def __init__(self, chat_format: chat.ChatFormat, field: str = "text"):
    self.chat_format = chat_format
    self.field = field

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
      turns = chat.loads(element[self.field])
    except ConfigError as e:
      raise ConfigError(f"data.format=chat: {e}") from None
    ids, weights = self.chat_format.encode(turns)
    return {"tokens": ids, "loss_mask": weights}


def to_example(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed row of `T + 1` tokens -> `[T]` inputs, targets, positions, mask."""
  tokens = row["tokens"]
  segments = row["tokens_segment_ids"]
  positions = row["tokens_positions"]
  same_piece = (segments[1:] == segments[:-1]) & (segments[1:] > 0)
  mask = same_piece.astype(np.float32)
  if "loss_mask" in row:
    # Equal lengths pack identically; a packer that split them differently
    # would misalign the mask silently.
    if not np.array_equal(row["loss_mask_segment_ids"], segments):
      raise ValueError("packing: loss_mask and tokens were packed "
                       "differently")
    mask *= row["loss_mask"][1:].astype(np.float32)
  return batch.example(inputs=tokens[:-1], targets=tokens[1:],
                       segment_pos=positions[:-1], mask=mask)


def pack(documents: grain.IterDataset, seq_len: int, *,
         loss_mask: bool = False) -> grain.IterDataset:
  """Packs `{"tokens": [n]}` documents into `[seq_len]` training examples.

  With `loss_mask`, documents are `{"tokens": [n], "loss_mask": [n]}` and
  the per-token mask is packed alongside (see the module docstring).
  """
  lengths = {"tokens": seq_len + 1}
  if loss_mask:
    lengths["loss_mask"] = seq_len + 1
  packed = grain.experimental.ConcatThenSplitIterDataset(
      documents,
      length_struct=lengths,
      split_full_length_features=True,
  )
  return packed.map(to_example)
