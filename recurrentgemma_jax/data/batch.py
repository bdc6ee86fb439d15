"""The batch every input pipeline yields and every train/eval step takes.

A batch is a dict of `[B, T]` arrays (one example: `[T]`) with exactly the
keys of `BATCH_DTYPES`: inputs and targets (token ids), segment_pos (0 at
each document start) and mask (float32 loss weights; 0 on padding and on
tokens that are not trained).
"""

from __future__ import annotations

import numpy as np

BATCH_DTYPES = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_pos": np.int32,
    "mask": np.float32,
}


def example(**arrays) -> dict[str, np.ndarray]:
  """`arrays` as one example (or batch) with the batch keys and dtypes.

  Raises:
    ValueError: when a key is missing or unknown.
  """
  if set(arrays) != set(BATCH_DTYPES):
    raise ValueError(f"a batch has exactly the keys {sorted(BATCH_DTYPES)}, "
                     f"got {sorted(arrays)}")
  return {k: np.asarray(arrays[k]).astype(dtype, copy=False)
          for k, dtype in BATCH_DTYPES.items()}
