"""The README's Python tour runs as written."""

import pathlib
import re

from recurrentgemma_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run():
  text = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README has no python examples"
  namespace = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["logits"].shape == (2, 1, 256)
  assert namespace["y"].shape == (2, 100, 8)


def _commands(text: str) -> list[list[str]]:
  """The `recurrentgemma VERB ...` commands of the bash blocks, as argument
  lists from the verb on (continuation lines joined)."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("#")[0].split()
      if line[:1] == [cli.SCRIPT]:
        commands.append(line[1:])
  return commands


def _flag(args: list[str], name: str) -> str | None:
  for arg in args:
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return None


def test_readme_commands_read_only_what_earlier_commands_write():
  text = (ROOT / "README.md").read_text()
  assert "source .venv/bin/activate" in text
  made = []  # workdirs and output folders of the commands so far
  commands = _commands(text)
  assert len(commands) > 5
  for name, *args in commands:
    assert name in cli.COMMANDS, f"README runs an unknown verb: {name}"
    if name == "train" or (name == "reproduce" and args[0] == "run"):
      made.append(_flag(args, "workdir") or _flag(args, "outdir"))
      continue
    if name == "plot":
      used = [a for a in args if not a.startswith("-")]
      out = _flag(args, "out")
      assert out and out.startswith("/"), f"plot writes into the cwd: {args}"
    elif name == "convert":  # other sources are released weights
      used = [_flag(args, "src")] if _flag(args, "from") == "workdir" else []
    else:
      used = [_flag(args, "workdir") or _flag(args, "outdir")]
    for path in used:
      assert any(path == m or path.startswith(m + "/") for m in made), (
          f"{name} reads {path}, which no earlier README command writes")
