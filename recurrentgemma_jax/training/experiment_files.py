"""Modules beside an experiment file, loaded by path.

Experiment files are loaded by path (`--config=experiments/x.py:arg`), from
any directory, and share recipes through `experiments/common.py`. Importing
it as `experiments.common` would depend on `sys.path`: another `experiments`
package of the user's (their own project's folder, an installed package, a
module already imported under that name) would stand in for ours.
`sibling(__file__, "common")` loads the file next to the caller instead,
once per process and folder, under a private module name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import sys
import types


def sibling(file: str, name: str) -> types.ModuleType:
  """The module `name`.py in the folder of `file` (an experiment file's
  `__file__`, or any path in that folder)."""
  path = pathlib.Path(file).resolve().with_name(f"{name}.py")
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no {name}.py beside {file}")
  folder = hashlib.sha256(str(path.parent).encode()).hexdigest()[:12]
  key = f"_recurrentgemma_experiments_{folder}_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before running it, as `import` does
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[key]
      raise
  return sys.modules[key]
