"""No import circles among the project's modules.

Reads every module of `recurrentgemma_jax` and `pallas_kernels` with `ast`
(nothing is imported), draws an edge for each import of another project
module, at module level or inside a function (an import deferred into a
function to dodge a circle is still a circle), and asserts that the graph
has no cycle. Imports under `if TYPE_CHECKING:` are annotations only and
draw no edge. `from pkg import mod` is an edge to `pkg.mod`, not to `pkg`.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("recurrentgemma_jax", "pallas_kernels")


def _module_files() -> dict[str, pathlib.Path]:
  files = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      parts = path.relative_to(REPO).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      files[".".join(parts)] = path
  return files


def _is_type_checking_block(node: ast.AST) -> bool:
  return (isinstance(node, ast.If) and
          ast.unparse(node.test).endswith("TYPE_CHECKING"))


def _imported(tree: ast.AST, modules) -> set[str]:
  """Project modules `tree` imports, outside `if TYPE_CHECKING:` blocks."""
  found = set()
  pending = [tree]
  while pending:
    node = pending.pop()
    if _is_type_checking_block(node):
      pending.extend(node.orelse)
      continue
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      subs = [f"{node.module}.{a.name}" for a in node.names]
      found.update([s for s in subs if s in modules] or
                   ([node.module] if node.module in modules else []))
    pending.extend(ast.iter_child_nodes(node))
  return found


def import_graph() -> dict[str, set[str]]:
  files = _module_files()
  return {name: _imported(ast.parse(path.read_text()), files) - {name}
          for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as a list of nodes, or None."""
  state = {}  # node -> "open" while on the DFS path, "done" after

  def visit(node, path):
    state[node] = "open"
    path.append(node)
    for succ in sorted(graph.get(node, ())):
      if state.get(succ) == "open":
        return path[path.index(succ):] + [succ]
      if succ not in state:
        cycle = visit(succ, path)
        if cycle:
          return cycle
    path.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [])
      if cycle:
        return cycle
  return None


def test_the_project_has_no_import_circle():
  graph = import_graph()
  assert "recurrentgemma_jax.model" in graph and "pallas_kernels.api" in graph
  cycle = find_cycle(graph)
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_deferred_import_circle():
  source_a = "def f():\n  from pkg import b\n"
  source_b = "from pkg import a\nfrom typing import TYPE_CHECKING\n"
  modules = {"pkg.a", "pkg.b", "pkg.c"}
  graph = {"pkg.a": _imported(ast.parse(source_a), modules),
           "pkg.b": _imported(ast.parse(source_b), modules)}
  assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
  annotation_only = "if TYPE_CHECKING:\n  from pkg import a\n"
  graph["pkg.b"] = _imported(ast.parse(annotation_only), modules)
  assert find_cycle(graph) is None
