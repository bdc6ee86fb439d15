"""Tokenizers: a byte-level default that needs no file, and SentencePiece.

Both map text to a list of int ids and expose `vocab_size`, `bos_id`,
`eos_id` and `pad_id`, and `piece_id(piece)`: the single id of a special
piece such as `<end_of_turn>` (None when the vocabulary has none).
"""

from __future__ import annotations

import os
from typing import Protocol

from recurrentgemma_jax.config import ConfigError


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...

  def piece_id(self, piece: str) -> int | None: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: pad 0, bos 1, eos 2.

  Vocabulary: 259 ids. Lossless for any text, no file needed; it has no
  special pieces (the chat template spells its markers as bytes).
  """

  pad_id, bos_id, eos_id = 0, 1, 2
  _OFFSET = 3
  vocab_size = 256 + _OFFSET
  lossless = True

  def piece_id(self, piece: str) -> None:
    del piece
    return None

  def encode(self, text: str) -> list[int]:
    return [b + self._OFFSET for b in text.encode("utf-8")]

  def decode(self, ids: list[int]) -> str:
    data = bytes(i - self._OFFSET for i in ids
                 if self._OFFSET <= i < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model file (e.g. RecurrentGemma's `tokenizer.model`)."""

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    if os.path.isdir(path):
      raise ConfigError(f"tokenizer: {path} is a folder; give the "
                        "SentencePiece model file (e.g. tokenizer.model)")
    if not os.path.isfile(path):
      raise ConfigError(f"tokenizer: SentencePiece model not found: {path}")
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:  # its C++ parser's errors
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConfigError(f"tokenizer: {path} is not a SentencePiece model "
                        f"({reason})") from None
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id = self._sp.bos_id()
    self.eos_id = self._sp.eos_id()
    # Padding is masked out of the loss, so any valid id will do.
    self.pad_id = max(self._sp.pad_id(), 0)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: list[int]) -> str:
    return self._sp.decode(list(ids))

  def piece_id(self, piece: str) -> int | None:
    return sentencepiece_piece_id(self._sp, piece)


def sentencepiece_piece_id(sp, piece: str) -> int | None:
  """The id of `piece` in a `SentencePieceProcessor`, or None (its
  `piece_to_id` answers the unknown id for a missing piece)."""
  i = int(sp.piece_to_id(piece))
  return i if sp.id_to_piece(i) == piece else None


def get_tokenizer(name: str) -> Tokenizer:
  """`"bytes"` for the byte tokenizer, else a SentencePiece model path."""
  if name in ("", "bytes"):
    return ByteTokenizer()
  return SentencePieceTokenizer(os.path.expanduser(name))
