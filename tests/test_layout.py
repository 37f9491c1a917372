"""The code's structure: one owner per concept, and imports that only run downward."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "edgediff"


def _imports() -> dict[str, set[str]]:
  """edgediff module -> the edgediff modules it imports (at the top or inside functions)."""
  modules = {}
  for path in ROOT.rglob("*.py"):
    if "assets" in path.parts:
      continue
    name = ".".join(("edgediff",) + path.relative_to(ROOT).with_suffix("").parts)
    modules[name.removesuffix(".__init__")] = path
  graph = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgediff"):
        for alias in node.names:
          child = f"{node.module}.{alias.name}"
          found.add(child if child in modules else node.module)
      elif isinstance(node, ast.Import):
        found |= {a.name for a in node.names if a.name.startswith("edgediff")}
    graph[name] = found - {name}
  return graph


def test_quant_imports_nothing_from_export():
  upward = {(m, d) for m, deps in _imports().items() if m.startswith("edgediff.quant.")
            for d in deps if d.startswith("edgediff.export")}
  assert not upward


def test_no_import_circles():
  graph = _imports()
  state, circles = {}, []

  def visit(module, stack):
    state[module] = "open"
    for dep in sorted(graph.get(module, ())):
      if state.get(dep) == "open":
        circles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not circles, [" -> ".join(c) for c in circles]
