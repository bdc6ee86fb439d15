"""`DefaultsFormatter`: argparse help that shows each flag's default."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
  """Appends "(default: X)" to a flag's help when it has a default worth
  showing (not None, False or an empty list); keeps the description's line
  breaks (usage examples)."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    default = action.default
    if ("%(default)" in text or "default:" in text or default is None or
        default is False or default == argparse.SUPPRESS or
        (isinstance(default, list) and not default)):
      return text
    return f"{text} (default: %(default)s)"
