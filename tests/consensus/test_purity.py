"""The core is a pure state machine: no asyncio, gRPC, clock, randomness, threads or I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "services" / "consensus" / "core"
FORBIDDEN = {
    "asyncio",
    "grpc",
    "time",
    "os",
    "random",
    "threading",
    "socket",
    "subprocess",
    "multiprocessing",
    "concurrent",
    "pathlib",
    "datetime",
    "io",
    "shutil",
    "tempfile",
    "secrets",
    "logging",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(module: Path) -> None:
    roots = {name.split(".")[0] for name in imported_modules(module)}
    assert not roots & FORBIDDEN, f"{module.name} imports {sorted(roots & FORBIDDEN)}"


def test_the_scan_sees_imports() -> None:
    """The check can fail: it finds the imports of a module that has some."""
    runner = Path(__file__).resolve().parents[2] / "services" / "consensus" / "sim" / "network.py"
    assert "random" in imported_modules(runner)


def test_importing_the_core_loads_no_event_loop_or_grpc() -> None:
    code = (
        "import sys; import services.consensus.core; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'grpc')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
