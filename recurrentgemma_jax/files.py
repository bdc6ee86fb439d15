"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
from typing import Any

from etils import epath


def write_text_atomic(path: str | epath.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename (also on
  `gs://`, where the rename is a copy)."""
  target = epath.Path(path)
  tmp = target.parent / f".{target.name}.tmp"
  tmp.write_text(text)
  tmp.replace(target)


def write_json_atomic(path: str | epath.Path, value: Any) -> None:
  """`write_text_atomic` of `value` as indented JSON."""
  write_text_atomic(path, json.dumps(value, indent=1))
