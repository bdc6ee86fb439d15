"""Every Python file in the repository belongs to a Bazel target."""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".whl"}

# `srcs = ["a.py", ...]` and `srcs = [name + ".py"] ... for name in [...]`.
SRCS = re.compile(r"srcs\s*=\s*\[([^\]]*)\]", re.S)
COMPREHENSION = re.compile(
    r"srcs\s*=\s*\[\s*name\s*\+\s*\"\.py\"\s*\].*?for\s+name\s+in\s*\[([^\]]*)\]",
    re.S,
)
STRING = re.compile(r'"([^"]+)"')


def _python_files() -> set[pathlib.Path]:
  try:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard",
         "*.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()
    files = {ROOT / f for f in out}
  except (OSError, subprocess.CalledProcessError):
    files = set(ROOT.rglob("*.py"))
  return {f for f in files if f.exists()
          and not SKIP_DIRS.intersection(f.relative_to(ROOT).parts)}


def _build_files() -> list[pathlib.Path]:
  return [p for p in ROOT.rglob("BUILD")
          if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]


def _covered() -> set[pathlib.Path]:
  covered = set()
  for build in _build_files():
    text = build.read_text()
    for match in COMPREHENSION.finditer(text):
      covered |= {build.parent / f"{n}.py" for n in STRING.findall(match[1])}
    for match in SRCS.finditer(text):
      if "+" in match[1]:  # the comprehension form, handled above
        continue
      covered |= {build.parent / s for s in STRING.findall(match[1])
                  if s.endswith(".py")}
  return covered


def test_every_python_file_is_in_a_build_target():
  missing = sorted(str(f.relative_to(ROOT)) for f in
                   _python_files() - _covered())
  assert not missing, f"Python files not listed in any BUILD srcs: {missing}"


def test_build_targets_name_existing_files():
  stale = sorted(str(f.relative_to(ROOT)) for f in _covered()
                 if not f.exists())
  assert not stale, f"BUILD srcs that do not exist: {stale}"


def test_each_build_lists_only_its_own_package():
  """Bazel packages stop at a BUILD file: srcs may not reach into one."""
  packages = {b.parent for b in _build_files()}
  for build in _build_files():
    for match in SRCS.finditer(build.read_text()):
      for src in STRING.findall(match[1]):
        path = (build.parent / src).parent
        while path != build.parent:
          assert path not in packages, f"{build}: {src} crosses a package"
          path = path.parent
