"""The package's shape (issue 15): imports run only downward through the
layers, and no module uses another module's private names.

Layers, bottom first; a module may import its own layer and those beneath.
"""

from __future__ import annotations

import ast
import pathlib

import jaxckpt

PACKAGE = pathlib.Path(jaxckpt.__file__).parent
LAYERS = [
    {"errors", "_faults", "_tree"},
    {"_format"},
    {"_storage"},
    {"_commit"},
    {"_read"},
    {"_directory"},
    {"_save"},
    {"_report", "_export"},
    {"_managed_restore", "_api"},
    {"manager", "tf_compat", "_demo"},
    {"_import"},
    {"cli", "__init__", "__main__"},
]


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"jaxckpt.{top} is in no layer of tests/test_layers.py")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imports(path, parts):
    """(line, absolute module, imported name) of every ``from ... import`` inside the package."""
    here = ["jaxckpt", *parts[:-1]]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield node.lineno, module, alias


def _top(module: str, name: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest else name


def test_every_module_is_in_a_layer():
    for _, parts in _modules():
        _layer(parts[0])


def test_imports_run_only_downward():
    upward = []
    for path, parts in _modules():
        mine = _layer(parts[0])
        for line, module, alias in _imports(path, parts):
            top = _top(module, alias.name)
            if top != parts[0] and _layer(top) > mine:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports "
                              f"{module}.{alias.name}")
    assert not upward, "\n".join(upward)


def test_no_module_uses_another_modules_private_names():
    found = []
    for path, parts in _modules():
        tree = ast.parse(path.read_text())
        modules = set()  # local names bound to jaxckpt modules
        for line, module, alias in _imports(path, parts):
            target = f"{module}.{alias.name}"
            if (PACKAGE.parent / (target.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / target.replace(".", "/") / "__init__.py").exists():
                modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses "
                             f"{node.value.id}.{node.attr}")
    assert not found, "\n".join(found)
