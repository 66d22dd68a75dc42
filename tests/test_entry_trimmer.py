"""Every service's entry (cretoai.entry.run_service) runs the heap trimmer beside the
service while it serves, and stops it with the service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cretoai import allocator, entry


class Probe:
    """Stands in for a built service: which tasks run while it serves."""

    def __init__(self) -> None:
        self.tasks_while_running: set[str] = set()

    async def run(self) -> None:
        await asyncio.sleep(0)  # the trimmer's task has started
        self.tasks_while_running = {t.get_name() for t in asyncio.all_tasks()}


def test_the_trimmer_runs_beside_every_service(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = cluster_factory(1)
    probe = Probe()
    trimmers: list[asyncio.Task[Any]] = []
    original = allocator.trim_heap_every

    async def watched(*args: Any, **kwargs: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        trimmers.append(task)
        await original(*args, **kwargs)

    async def build(cfg: object) -> Any:
        return probe

    monkeypatch.setattr(entry, "trim_heap_every", watched)
    assert entry.run_service("consensus", build, ["--config", str(layout.nodes[0].config)]) == 0
    assert "malloc-trim" in probe.tasks_while_running
    (trimmer,) = trimmers
    assert trimmer.cancelled()
