"""Reading and writing (sharded) safetensors checkpoints without torch.

The Hugging Face layout: one `model.safetensors`, or shards
`model-00001-of-00003.safetensors`, ... listed by
`model.safetensors.index.json` (`{"metadata": {"total_size": bytes},
"weight_map": {tensor name: shard file}}`). bfloat16 tensors are NumPy
arrays of `ml_dtypes.bfloat16` (the `safetensors` NumPy backend reads and
writes them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
  """Bytes in `size`: an int, or a string such as "5GB" (10^9) or "2GiB"."""
  if isinstance(size, int) and not isinstance(size, bool):
    value = size
  else:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    unit = match[2].upper() if match else None
    if unit not in _UNITS:
      raise ValueError(
          f"max_shard_size: {size!r} is not a byte count such as 5000000, "
          f"'500MB' or '5GiB' (units: {', '.join(u for u in _UNITS if u)})")
    value = int(float(match[1]) * _UNITS[unit])
  if value <= 0:
    raise ValueError(f"max_shard_size: must be positive, got {size!r}")
  return value


def checkpoint_files(directory: str) -> list[str]:
  """The safetensors files (and index) of a checkpoint in `directory`."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(n for n in names
                if n in (SINGLE_FILE, INDEX_FILE) or _SHARD.match(n))


def read(directory: str) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint in `directory`, by name.

  Raises:
    FileNotFoundError: no `model.safetensors` or index, or a shard the index
      names is missing.
    ValueError: the index is malformed or two shards hold one name.
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  single = os.path.join(directory, SINGLE_FILE)
  index = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    files = [os.path.join(directory, f) for f in _index_files(index)]
  else:
    found = sorted(os.listdir(directory))
    hint = (" (PyTorch .bin weights are not read: save them with "
            "safe_serialization=True, transformers' default)"
            if any(n.endswith(".bin") for n in found) else "")
    raise FileNotFoundError(
        f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE}{hint}; it "
        f"holds {found[:10]}")
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: named by {INDEX_FILE} but missing")
    with safe_open(path, framework="np") as f:
      for name in f.keys():
        if name in tensors:
          raise ValueError(f"{path}: tensor {name!r} is also in another "
                           "shard")
        tensors[name] = f.get_tensor(name)
  return tensors


def _index_files(index: str) -> list[str]:
  try:
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
  for name in files:
    if not isinstance(name, str) or os.path.basename(name) != name:
      raise ValueError(f"{index}: shard {name!r} is not a file name in the "
                       "checkpoint folder")
  return files


def plan_shards(sizes: Sequence[tuple[str, int]], max_bytes: int
                ) -> list[list[str]]:
  """Names grouped in order into shards of at most `max_bytes` (a tensor
  larger than that gets a shard of its own)."""
  shards: list[list[str]] = [[]]
  used = 0
  for name, nbytes in sizes:
    if shards[-1] and used + nbytes > max_bytes:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += nbytes
  return shards


def write(
    directory: str,
    tensors: Mapping[str, np.ndarray],
    *,
    max_shard_size: int | str,
    extra_files: Mapping[str, str],
    overwrite: bool = False,
) -> list[str]:
  """Writes a checkpoint so that `directory` never holds a mix of two.

  Everything is written to a temporary folder inside `directory` first;
  then any old checkpoint files are removed (only with `overwrite`) and
  the new ones moved in, `extra_files` (e.g. `config.json`) last, so an
  interrupted write leaves no loadable half checkpoint.

  Args:
    directory: the output folder (created if missing).
    tensors: name -> array (shards keep this order).
    max_shard_size: bytes per shard (int, or e.g. "5GB").
    extra_files: file name -> text, e.g. {"config.json": "..."}.
    overwrite: replace an existing checkpoint in `directory`.

  Returns:
    The names of the files written.

  Raises:
    FileExistsError: `directory` already holds a checkpoint (or one of
      `extra_files`) and `overwrite` is False.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  max_bytes = parse_size(max_shard_size)
  os.makedirs(directory, exist_ok=True)
  old = checkpoint_files(directory) + sorted(
      n for n in extra_files if os.path.exists(os.path.join(directory, n)))
  if old and not overwrite:
    raise FileExistsError(
        f"{directory} already holds a checkpoint ({', '.join(old)}); choose "
        "another folder or pass overwrite=True")
  shards = plan_shards([(n, int(v.nbytes)) for n, v in tensors.items()],
                       max_bytes)
  if len(shards) == 1:
    names = [SINGLE_FILE]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
             for i in range(len(shards))]
  tmp = tempfile.mkdtemp(prefix=".tmp-write-", dir=directory)
  try:
    weight_map = {}
    for file_name, shard in zip(names, shards):
      arrays = {n: np.ascontiguousarray(tensors[n]) for n in shard}
      save_file(arrays, os.path.join(tmp, file_name),
                metadata={"format": "pt"})
      weight_map.update({n: file_name for n in shard})
      del arrays
    written = list(names)
    if len(shards) > 1:
      total = sum(int(v.nbytes) for v in tensors.values())
      index = {"metadata": {"total_size": total},
               "weight_map": dict(sorted(weight_map.items()))}
      with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
      written.append(INDEX_FILE)
    for name, text in extra_files.items():
      with open(os.path.join(tmp, name), "w") as f:
        f.write(text)
    for name in old:  # only reached with overwrite
      os.remove(os.path.join(directory, name))
    for name in written + list(extra_files):
      os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    return written + list(extra_files)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
