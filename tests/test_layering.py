"""The layers import only downwards: cretoai (shared library) < services < node (the
composition root); devkit (what tests and benchmarks share) above them; tests and bench
on top, neither importing the other's code.

Imports are read with ``ast`` from every ``.py`` file of a layer, wherever they are
(module level, inside functions, under ``TYPE_CHECKING``), relative ones resolved,
and ``importlib.import_module("...")`` with a literal name counted as an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: layer -> top-level packages it must not import.
FORBIDDEN: dict[str, set[str]] = {
    "cretoai": {"services", "node", "devkit", "tests", "bench"},
    "services": {"node", "devkit", "tests", "bench"},
    "node": {"devkit", "tests", "bench"},
    "devkit": {"tests", "bench"},
    "bench": {"tests"},
}


def package_of(path: Path) -> str:
    """The package a file belongs to (what its relative imports are relative to)."""
    parts = list(path.relative_to(REPO).parent.parts)
    return ".".join(parts)


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        name == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source``, a file of ``package``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                found.append((node.lineno, node.module or ""))
                continue
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # from . import a, b: the submodules a and b
                found.extend((node.lineno, ".".join([*base, a.name])) for a in node.names)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            found.append((node.lineno, node.args[0].value))  # type: ignore[attr-defined]
    return found


def violations(layer: str) -> list[str]:
    forbidden = FORBIDDEN[layer]
    out = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for line, module in imports_in(path.read_text(), package_of(path)):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_what_lies_below_it(layer: str) -> None:
    assert (REPO / layer).is_dir()
    assert violations(layer) == []


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = (
        "import services.storage\n"
        "from node import cli\n"
        "from . import config, serving\n"
        "from .crypto import keys\n"
        "from .. import tests\n"
        "def f():\n"
        "    from devkit.ports import free_tcp_port\n"
        "    importlib.import_module('bench.cluster_load')\n"
    )
    assert [m for _, m in imports_in(source, "cretoai.tools")] == [
        "services.storage",
        "node",
        "cretoai.tools.config",
        "cretoai.tools.serving",
        "cretoai.tools.crypto",
        "cretoai.tests",
        "devkit.ports",
        "bench.cluster_load",
    ]
