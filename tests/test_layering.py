"""The import graph of idjax/ has no arrow upwards (STYLE.md, habit 11).

Layers, bottom to top: utilities -> data -> face/models -> diffusion/losses ->
train/sampling/eval -> CLIs. A module may import its own layer and the ones
below, never one above; training and sampling never import each other, and
evaluation (less its CLI) imports neither. Every import counts, at module
level or inside a function at any depth (an import in a function is not a
way around the order). An import inside a function must say why, in a
comment: it is for an optional heavy dependency.
"""

import ast
import os

import pytest

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "idjax")

# (layer, modules); an entry names a module or a package (all modules under
# it), and a module takes the layer of its longest entry. `idjax` itself is
# only the package's __init__.
LAYERS = (
    (
        "utilities",
        (
            "idjax",
            "idjax.configlib",
            "idjax.config_rules",
            "idjax.paths",
            "idjax.restore",
            "idjax.rng",
            "idjax.sharding",
            "idjax.video_io",
            "idjax.weight_files",
        ),
    ),
    ("data", ("idjax.data",)),
    ("face/models", ("idjax.face", "idjax.models", "idjax.autoencoder")),
    ("diffusion/losses", ("idjax.diffusion", "idjax.losses", "idjax.layout", "idjax.conditioning")),
    (
        "train/sampling/eval",
        (
            "idjax.train",
            "idjax.face.train",
            "idjax.autoencoder.train",
            "idjax.sampling",
            "idjax.eval",
        ),
    ),
    (
        "CLIs",
        (
            "idjax.eval.__main__",
            "idjax.app",
            "idjax.data.prepare.__main__",
            "idjax.models.wan.convert",  # builds the trainer's step-0 state
        ),
    ),
)
TRAINING = ("idjax.train", "idjax.face.train", "idjax.autoencoder.train")
SAMPLING = ("idjax.sampling",)


def _modules() -> dict[str, str]:
  """Dotted name -> file, for every module under idjax/."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


MODULES = _modules()


def _under(module: str, entries) -> str | None:
  """The longest entry that is `module` or a package holding it (`idjax`: exact only)."""
  hits = [e for e in entries if module == e or (e != "idjax" and module.startswith(e + "."))]
  return max(hits, key=len, default=None)


def layer_of(module: str) -> int | None:
  best = None
  for index, (_, entries) in enumerate(LAYERS):
    hit = _under(module, entries)
    if hit and (best is None or len(hit) > len(best[1])):
      best = (index, hit)
  return None if best is None else best[0]


def _resolve(module: str, node) -> list[str]:
  """The idjax modules an import statement in `module` loads by name."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.split(".")[0] == "idjax"]
  base = node.module or ""
  if node.level:  # relative: from the importing module's package
    package = (
        module.split(".") if MODULES[module].endswith("__init__.py") else module.split(".")[:-1]
    )
    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
  if base.split(".")[0] != "idjax":
    return []
  # `from idjax.x import y` loads the module idjax.x.y when there is one.
  return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(module: str, source: str | None = None):
  """(line, imported module, inside a function or class) for every import."""
  tree = ast.parse(open(MODULES[module]).read() if source is None else source)
  out = []

  def walk(node, nested):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        out.extend((child.lineno, target, nested) for target in _resolve(module, child))
      inner = nested or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
      )
      walk(child, inner)

  walk(tree, False)
  return out


def _in(module: str, group) -> bool:
  return _under(module, group) is not None


def test_every_module_has_a_layer():
  assert len(MODULES) > 40, sorted(MODULES)
  missing = sorted(m for m in MODULES if layer_of(m) is None)
  assert not missing, f"add these to LAYERS in {__file__}: {missing}"


def test_imports_point_down_only():
  upward = []
  for module in sorted(MODULES):
    for line, target, _ in _imports(module):
      assert target in MODULES, f"{module}:{line} imports {target}, which is not in idjax/"
      if layer_of(target) > layer_of(module):
        upward.append(
            f"{module}:{line} ({LAYERS[layer_of(module)][0]}) imports {target} "
            f"({LAYERS[layer_of(target)][0]})"
        )
  assert not upward, "\n".join(upward)


def test_training_and_sampling_never_import_each_other():
  sideways = [
      f"{module}:{line} imports {target}"
      for module in sorted(MODULES)
      for line, target, _ in _imports(module)
      if (_in(module, TRAINING) and _in(target, SAMPLING))
      or (_in(module, SAMPLING) and _in(target, TRAINING))
  ]
  assert not sideways, "\n".join(sideways)


def test_evaluation_imports_neither_training_nor_sampling():
  """Only its CLI (`python -m idjax.eval`, a layer above) samples a model."""
  found = [
      f"{module}:{line} imports {target}"
      for module in sorted(MODULES)
      if _in(module, ("idjax.eval",)) and layer_of(module) < len(LAYERS) - 1
      for line, target, _ in _imports(module)
      if _in(target, TRAINING + SAMPLING)
  ]
  assert not found, "\n".join(found)


def test_an_import_inside_a_function_says_why():
  """A comment on its line, or right above its run of import lines."""
  silent = []
  for module in sorted(MODULES):
    lines = open(MODULES[module]).read().splitlines()
    tree = ast.parse("\n".join(lines))
    for node in ast.walk(tree):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for inner in ast.walk(node):
        if not isinstance(inner, (ast.Import, ast.ImportFrom)):
          continue
        i = inner.lineno - 1
        while (
            i > 0 and "#" not in lines[i] and lines[i - 1].strip().startswith(("import ", "from "))
        ):
          i -= 1
        said = "#" in lines[i] or (i > 0 and lines[i - 1].strip().startswith("#"))
        if not said:
          silent.append(f"{module}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
  assert not silent, "\n".join(sorted(set(silent)))


@pytest.mark.parametrize(
    "module, target, expected",
    [
        ("idjax.train.step", "idjax.layout", 4),
        ("idjax.face.train", "idjax.face", 4),
        ("idjax.eval.__main__", "idjax.sampling.generator", 5),
        ("idjax.face.crop", "idjax.face", 2),
        ("idjax", "idjax", 0),
    ],
)
def test_the_table_itself(module, target, expected):
  """Longest entry wins; `idjax` is only the package's own __init__."""
  assert layer_of(module) == expected
  assert layer_of(target) <= expected


def test_imports_are_found_at_any_depth():
  source = (
      "import os\n"
      "from idjax import layout\n"
      "class A:\n"
      "  def f(self):\n"
      "    def g():\n"
      "      if True:\n"
      "        from idjax.sampling import generator\n"
      "    return lambda: __import__('x')\n"
      "try:\n"
      "  import idjax.train.step as s\n"
      "except ImportError:\n"
      "  pass\n"
  )
  assert _imports("idjax.train.loop", source) == [
      (2, "idjax.layout", False),
      (7, "idjax.sampling.generator", True),
      (10, "idjax.train.step", False),
  ]
