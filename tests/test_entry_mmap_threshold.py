"""The services that carry a batch's bodies as whole messages (consensus, transport) fix
glibc's mmap threshold before they are built (``MESSAGE_MMAP_THRESHOLD_BYTES``); the
gateway keeps glibc's dynamic one and storage fixes its own in its build."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from cretoai import entry
from cretoai.allocator import MESSAGE_MMAP_THRESHOLD_BYTES


class Served:
    """Stands in for a built service that serves and stops at once."""

    async def run(self) -> None:
        return None


@pytest.mark.parametrize(
    ("service", "fixed"),
    [
        ("consensus", [MESSAGE_MMAP_THRESHOLD_BYTES]),
        ("transport", [MESSAGE_MMAP_THRESHOLD_BYTES]),
        ("gateway", []),
        ("storage", []),
    ],
)
def test_the_message_services_fix_the_mmap_threshold_before_they_are_built(
    service: str, fixed: list[int], cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = cluster_factory(1)
    module = importlib.import_module(f"services.{service}.__main__")
    calls: list[int] = []
    built_after: list[list[int]] = []

    def fix(threshold: int, **_: Any) -> bool:
        calls.append(threshold)
        return True

    async def build(cfg: object) -> Served:
        built_after.append(list(calls))
        return Served()

    monkeypatch.setattr(entry, "fix_mmap_threshold", fix)
    monkeypatch.setattr(module, "build", build)
    assert module.main(["--config", str(layout.nodes[0].config)]) == 0
    assert calls == fixed
    assert built_after == [fixed]  # before the build, which allocates the first buffers
