"""Imports run down the layers (docs/architecture.md): a module imports its own layer and the ones below.

The walk is static (every `import` statement of every file, inside functions too), so a violation fails here
whether or not a test happens to execute the import.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "pixelhdm_jax"

# Lowest first; a module belongs to the entry that is the longest prefix of its dotted name (without
# `pixelhdm_jax.`). data/ sits at the bottom and imports no JAX; config imports the registries below it.
LAYERS = (
    ("errors", "user_cache", "storage", "data", "cli"),
    ("perf.target", "perf.gpu_targets", "flow", "parallel", "compilation_cache"),
    ("kernels",),
    ("models", "optim", "evaluation.inception"),
    ("encoders", "losses"),
    ("sample.solvers", "sample.guidance", "perf.flops"),
    ("config",),
    ("weights", "sample"),
    ("evaluation",),
    ("train",),
    ("perf", "colab"),
)
JAX_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
  """The index in LAYERS of a package module; KeyError for a module no layer names."""
  if module == PACKAGE:
    return 0  # the package's `__init__` holds the version only
  name = module.removeprefix(PACKAGE + ".")
  best = max(((len(entry), index) for index, layer in enumerate(LAYERS) for entry in layer
              if name == entry or name.startswith(entry + ".")), default=None)
  if best is None:
    raise KeyError(module)
  return best[1]


def is_module(name: str) -> bool:
  path = REPO.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str) -> set[str]:
  """Every module an import statement names: `from a import b` names `a.b` when b is a module of ours (a package
  whose `__init__` only documents it), else `a`."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        found.add(submodule if is_module(submodule) else node.module)
  return found


def upward_imports(module: str, source: str) -> list[str]:
  """The package modules that `module` imports from a layer above its own."""
  own = layer_of(module)
  climbs = []
  for name in sorted(imported_modules(source)):
    if name.split(".")[0] == PACKAGE and layer_of(name) > own:
      climbs.append(name)
  return climbs


def package_files() -> list[pathlib.Path]:
  return sorted((REPO / PACKAGE).rglob("*.py"))


def test_every_module_has_a_layer():
  for path in package_files():
    layer_of(module_name(path))


@pytest.mark.parametrize("path", package_files(), ids=lambda p: module_name(p))
def test_imports_do_not_climb(path):
  module = module_name(path)
  assert not upward_imports(module, path.read_text()), f"{module} imports from a layer above its own"


def test_the_walk_sees_a_climbing_import():
  source = "def f():\n  from pixelhdm_jax.train import loop\n  from pixelhdm_jax import flow\n"
  assert upward_imports("pixelhdm_jax.models.blocks", source) == ["pixelhdm_jax.train.loop"]
  assert upward_imports("pixelhdm_jax.train.loop", source) == []


def test_data_imports_no_jax():
  for path in (REPO / PACKAGE / "data").rglob("*.py"):
    roots = {name.split(".")[0] for name in imported_modules(path.read_text())}
    assert not roots & set(JAX_PACKAGES), f"{module_name(path)} imports {sorted(roots & set(JAX_PACKAGES))}"


def test_the_library_never_imports_launchers_or_tests():
  for path in package_files():
    roots = {name.split(".")[0] for name in imported_modules(path.read_text())}
    assert not roots & {"launch", "tests", "configs"}, module_name(path)
