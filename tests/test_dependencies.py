"""Every package that the library, the launchers and the configs import at module level is declared in
pyproject.toml's dependencies, so `pip install -e .` runs the main job; the optional ones (torch, the Colab
and benchmark extras) are imported inside functions only."""

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [*(REPO / "pixelhdm_jax").rglob("*.py"), *(REPO / "launch").glob("*.py"), *(REPO / "configs").glob("*.py")]
OURS = {"pixelhdm_jax", "configs"}


def _requirement_names(requirements: list[str]) -> set[str]:
  return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imports(module_level: bool) -> dict[str, str]:
  """{top-level module: a file importing it} for imports at module level (or only inside functions)."""
  found = {}
  for path in SOURCES:
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    for node in ast.walk(tree):
      if (id(node) in nested) == module_level:
        continue
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top not in OURS:
          found.setdefault(top, str(path.relative_to(REPO)))
  return found


def test_module_level_imports_are_declared_dependencies():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  declared = _requirement_names(project["dependencies"])
  distributions = importlib.metadata.packages_distributions()
  missing = {}
  for module, path in _imports(module_level=True).items():
    names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
    if not names & declared:
      missing[module] = path
  assert not missing, f"imported at module level but not in pyproject.toml dependencies: {missing}"


def test_torch_is_imported_lazily():
  assert "torch" not in _imports(module_level=True)
  assert "torch" in _imports(module_level=False)  # the walk sees the lazy imports (weights/interop.py)
