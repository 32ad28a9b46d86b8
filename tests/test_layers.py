"""The package's layers: each subpackage imports only from its own layer and the layers below it (the import-layer
contract). The import graph is read from the source (every import statement, those inside functions included), so a
lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bayestda.core.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "bayestda"
# Lowest first; each subpackage's __init__ says what it holds.
LAYERS = ["core", "data", "tasks", "training", "models", "artifacts", "runs", "methods", "analysis", "pipeline"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every bayestda import in a module's source."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            # `from . import families` names modules; `from .x import y` depends on x
            found += [(node.lineno, f"{target}.{a.name}" if node.module is None else target) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, t) for line, t in found if t == "bayestda" or t.startswith("bayestda.")]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """The imports of a module from a higher layer, or from the package root (which imports every layer)."""
    own = layer_of(module)
    return [(line, t) for line, t in imports_of(source, module, is_package)
            if layer_of(t) is None or layer_of(t) > own]  # fmt: skip


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    loose = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None and module_name(p) != "bayestda"]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


@pytest.mark.parametrize("path", [p for p in MODULES if module_name(p) != "bayestda"], ids=module_name)
def test_imports_go_down_only(path):
    upward = upward_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not upward, f"{module_name(path)} ({LAYERS[layer_of(module_name(path))]}) imports upward: {upward}"


def test_the_contract_catches_upward_imports():
    """The check itself: a `data` module that imports the method registry inside a function, or the package root,
    fails it; one that imports from `core` passes."""
    lazy = "def f():\n    from ..methods import registry\n    return registry\n"
    assert upward_imports(lazy, "bayestda.data.probe") == [(2, "bayestda.methods")]
    assert upward_imports("from .. import __version__\n", "bayestda.data.probe") == [(1, "bayestda.__version__")]
    assert upward_imports("import bayestda\n", "bayestda.data.probe") == [(1, "bayestda")]
    assert upward_imports("from ..core.errors import UserError\n", "bayestda.data.probe") == []
