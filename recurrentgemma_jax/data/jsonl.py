"""Reading JSON-lines files: one record per non-blank line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from recurrentgemma_jax.config import ConfigError


def json_lines(path: str) -> Iterator[tuple[int, Any]]:
  """`(line number, record)` of each non-blank line of `path`.

  Raises:
    ConfigError: `PATH:LINE: not a JSON line (...)`.
  """
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except ValueError as e:
        raise ConfigError(f"{path}:{line_no}: not a JSON line ({e})") from None
