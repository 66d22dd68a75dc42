"""Every service's /metrics page passes ``promtool check metrics`` with no warning at all,
after real traffic (so that labelled series and histogram buckets are on the page); and
their log lines are structured: node and service on each, view and seq on consensus'.

A one-node cluster whose four services run as separate ``cretoai-node start --service``
processes (debug logs, JSON), vertices submitted through the gateway's REST API (some
waiting for finality, one refused), then each page scraped and checked. Skipped, saying
so, only when promtool is absent (``scripts/system-deps.sh`` installs it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from cretoai import registry
from cretoai.config import load_config
from devkit.prometheus import promtool_check, tool
from services.consensus.tracing import STAGES
from tests.conftest import REPO, cli
from tests.support.processes import Process, wait_serving
from tests.test_services_alone import init_one_node

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        tool("promtool") is None,
        reason="promtool is not installed (Debian package prometheus; run "
        "scripts/system-deps.sh as root): the /metrics pages are NOT checked",
    ),
]

VERTICES = 6


def samples(text: str) -> dict[str, float]:
    """Sample name with labels -> value, from an exposition page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return out


def total(page: dict[str, float], name: str) -> float:
    return sum(v for k, v in page.items() if k.partition("{")[0] == name)


def test_promtool_finds_what_is_wrong() -> None:
    """The check itself: a clean page passes, a counter without _total does not."""
    assert promtool_check("# HELP a_total A.\n# TYPE a_total counter\na_total 1\n") == (0, "")
    code, output = promtool_check("# HELP b B.\n# TYPE b counter\nb 1\n")
    assert code != 0 and "_total" in output, output


async def submit(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    """VERTICES vertices, each second one waiting for finality and parented; one bad body."""
    answers = []
    parents: list[str] = []
    for i in range(VERTICES):
        wait = i % 2 == 1
        body = {"payload": base64.b64encode(f"promtool {i}".encode()).decode(), "parents": parents}
        url = f"{base}/v1/vertices" + ("?wait=true" if wait else "")
        async with http.post(url, json=body) as reply:
            answer = await reply.json(content_type=None)
            assert reply.status == (200 if wait else 202), answer
            answers.append(answer)
            if wait:
                parents = [answer["hash"]]
    async with http.post(f"{base}/v1/vertices", data=b"{not json") as reply:
        assert reply.status == 400, await reply.text()  # an error, counted by status
    return answers


async def sampled_again(
    http: aiohttp.ClientSession, address: str, series: str, seen: float, within_s: float = 10.0
) -> bool:
    """Whether ``series`` on the page at ``address`` grows past ``seen`` within
    ``within_s`` (re-read every 50 ms: the page says nothing until it is read)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        async with http.get(f"http://{address}/metrics") as reply:
            if samples(await reply.text()).get(series, 0) > seen:
                return True
        await asyncio.sleep(0.05)
    return False


def configure(config: Path) -> None:
    """Debug logs (the consensus logs each executed batch there), as JSON lines."""
    data = tomllib.loads(config.read_text())
    data.setdefault("telemetry", {}).update({"log_level": "debug", "log_format": "json"})
    config.write_text(tomli_w.dumps(data))


def check_log_lines(proc: Process, node: str) -> list[dict[str, Any]]:
    """Every stderr line of a service is one JSON object naming the node and the service."""
    lines = []
    for raw in proc.err:
        try:
            line = json.loads(raw)
        except ValueError:
            raise AssertionError(f"{proc.name}: not a JSON log line: {raw!r}") from None
        assert line.get("node") == node and line.get("service") == proc.name, line
        assert line.get("msg") and line.get("level") and line.get("ts"), line
        lines.append(line)
    assert lines, f"{proc.name} logged nothing"
    return lines


async def test_every_metrics_page_passes_promtool(tmp_path: Path) -> None:
    config = await init_one_node(tmp_path / "cluster")
    configure(config)
    cfg = load_config(config)
    running: list[Process] = []
    try:
        for name in registry.NAMES:
            proc = await Process.start(
                name, cli("start", "--config", str(config), "--service", name), REPO
            )
            running.append(proc)
            await wait_serving(cfg, name, proc, timeout=60)

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            answers = await submit(http, f"http://{cfg.gateway.http}")
            pages = {}
            for name in registry.NAMES:
                async with http.get(f"http://{getattr(cfg, name).metrics}/metrics") as reply:
                    assert reply.status == 200
                    pages[name] = await reply.text()

        results = {name: promtool_check(page) for name, page in pages.items()}
        dirty = {name: r for name, r in results.items() if r != (0, "")}
        assert not dirty, "promtool check metrics:\n" + "\n".join(
            f"--- {name} (exit {code})\n{output}" for name, (code, output) in dirty.items()
        )
        # The pages held what traffic makes: labelled series and histograms with samples.
        by = {name: samples(page) for name, page in pages.items()}
        waited = sum(1 for a in answers if a.get("status") == "finalized")
        assert waited == VERTICES // 2, answers
        assert total(by["consensus"], "cretoai_consensus_finality_seconds_count") >= waited
        assert total(by["consensus"], "cretoai_consensus_vertices_executed_total") >= waited
        assert total(by["storage"], "cretoai_storage_commit_seconds_count") >= 1
        stage = "cretoai_consensus_stage_seconds_count{{stage={}}}"
        assert all(stage.format(name) in by["consensus"] for name in STAGES), by["consensus"]
        assert by["consensus"][stage.format("queue")] >= VERTICES  # once per vertex
        for name in ("execute", "storage_commit", "notify"):  # once per batch
            assert by["consensus"][stage.format(name)] >= 1, name
        assert (
            by["gateway"][
                "cretoai_gateway_http_requests_total{method=POST,route=/v1/vertices,status=400}"
            ]
            == 1
        )
        assert total(by["transport"], "cretoai_grpc_server_handled_total") >= 1
        # the gateway follows consensus's admission state (WatchAdmission)
        assert by["gateway"]["cretoai_gateway_admission_live{}"] == 1
        assert by["gateway"]["cretoai_gateway_consensus_overloaded{}"] == 0
        for name, page in by.items():
            assert page[f"cretoai_service_serving{{service={name}}}"] == 1, name
            # every service's loop is watched, by a 50 ms timer: sampled once at least, and
            # again (the gateway, started last, may have run for only ~100 ms so far)
            lag = f"cretoai_service_event_loop_lag_seconds_count{{service={name}}}"
            assert page[lag] >= 1, name
            async with aiohttp.ClientSession(timeout=timeout) as http:
                assert await sampled_again(http, getattr(cfg, name).metrics, lag, page[lag])
    finally:
        for proc in reversed(running):
            await proc.stop(signal.SIGTERM, timeout=30)

    logs = {proc.name: check_log_lines(proc, cfg.node.name) for proc in running}
    executed = [line for line in logs["consensus"] if line["msg"] == "batch executed"]
    assert executed, "the consensus logged no executed batch"
    for line in executed:
        assert isinstance(line["view"], int) and line["seq"] >= 1, line
    assert {line["seq"] for line in executed} == set(range(1, len(executed) + 1))
