"""The operator's path: `cluster up` as a real process, the node commands against it,
the supervisor's restart of a killed service, and a clean stop on Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devkit.ports import free_base_port
from tests.conftest import REPO, cli
from tests.gateway.support import client_key, signed_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _wait_for(proc: subprocess.Popen[str], marker: str, lines: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"cluster up exited early: {lines}")
        lines.append(line.rstrip())
        if marker in line:
            return
    raise AssertionError(f"no {marker!r} within {timeout}s: {lines}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=60, cwd=REPO)


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _service_pid(config: Path, service: str) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"services.{service} --config {config}"], capture_output=True, text=True
    ).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_single_node_cluster_up_submit_status_restart_stop(tmp_path: Path) -> None:
    base = free_base_port(40)
    directory = tmp_path / "c"
    proc = subprocess.Popen(
        cli("cluster", "up", "--nodes", "1", "--dir", str(directory),
            "--base-port", str(base), "--http-port", str(base + 30)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        _wait_for(proc, "press Ctrl-C", lines, 120)
        assert f"http://127.0.0.1:{base + 30}" in "\n".join(lines)
        summary = json.loads((directory / "cluster.json").read_text())
        assert summary["nodes"][0]["gateway_url"] == f"http://127.0.0.1:{base + 30}"
        config = directory / "node1" / "node.toml"

        submitted = _run("submit", "--config", str(config), "--payload", "hello", "--wait")
        assert submitted.returncode == 0, submitted.stderr
        digest, status = submitted.stdout.split()[:2]
        assert status == "finalized" and len(digest) == 64

        status_json = _run("status", "--config", str(config), "--json")
        assert status_json.returncode == 0, status_json.stderr
        report = json.loads(status_json.stdout)
        assert report["last_executed_seq"] >= 1 and report["n"] == 1 and report["ready"]

        logs = list((directory / "node1" / "logs").iterdir())
        assert logs and all(not p.stat().st_mode & 0o007 for p in logs)  # not every user's

        # A second cluster up, or an init, on the running cluster's directory is refused at
        # once: two supervisors took each other's ports and databases for their own and
        # both ended with every node given up (an audit, 2026-12-04).
        second = _run("cluster", "up", "--nodes", "1", "--dir", str(directory))
        assert second.returncode == 2, second.stderr
        assert "a cretoai-node cluster up (or init) runs on this directory" in second.stderr
        reinit = _run("cluster", "init", "--nodes", "1", "--dir", str(directory), "--reuse-keys")
        assert reinit.returncode == 2 and "stop it before initialising it again" in reinit.stderr

        bad = _run("submit", "--config", str(config), "--payload", "x", "--parent", "ab")
        assert bad.returncode == 1 and "HTTP 422" in bad.stderr

        # A client-signed vertex whose signature does not verify: the real consensus
        # refuses it (it verifies once for the node) and the gateway says why.
        body, _ = signed_body(client_key(), b"signed")
        body["payload"] = base64.b64encode(b"tampered").decode()
        code, reply = _post(f"http://127.0.0.1:{base + 30}/v1/vertices", body)
        assert (code, reply["error"]["code"]) == (422, "bad_signature"), reply
        # A parent the node does not know: consensus checks parents, the gateway maps it.
        orphan = {"payload": "", "parents": ["ab" * 32]}
        code, reply = _post(f"http://127.0.0.1:{base + 30}/v1/vertices", orphan)
        assert (code, reply["error"]["code"]) == (422, "unknown_parent"), reply

        # The supervisor restarts a service that dies.
        old_pid = _service_pid(config, "consensus")
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = _run("health", "--config", str(config), "--timeout", "1")
            if health.returncode == 0 and _service_pid(config, "consensus") != old_pid:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("consensus was not restarted")
        # The gateway answers 503 until its channel to the new consensus reconnects.
        deadline = time.monotonic() + 30
        while True:
            again = _run("submit", "--config", str(config), "--payload", "after", "--wait")
            if again.returncode == 0 or "HTTP 503" not in again.stderr:
                break
            assert time.monotonic() < deadline, again.stderr
            time.sleep(0.2)
        assert again.returncode == 0 and "finalized" in again.stdout, again.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        remaining, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, remaining
    assert "stopped" in remaining
    leftovers = subprocess.run(
        ["pgrep", "-f", f"--config {directory}"], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == [], "every service process must be gone after Ctrl-C"


def test_cluster_up_refuses_a_different_size(tmp_path: Path) -> None:
    base = free_base_port(40)
    made = _run("cluster", "init", "--nodes", "1", "--dir", str(tmp_path), "--base-port", str(base))
    assert made.returncode == 0, made.stderr
    proc = _run("cluster", "up", "--nodes", "4", "--dir", str(tmp_path))
    assert proc.returncode == 2
    assert "holds 1 nodes, not 4" in proc.stderr and "Traceback" not in proc.stderr


def test_cluster_init_refuses_another_size_over_a_cluster_that_holds_data(tmp_path: Path) -> None:
    """An audit (2026-12-04) rewrote a running 4-node cluster's configs for 7 nodes with
    --reuse-keys: a restarted consensus ran under 7 validators and banned its honest peers.
    A cluster's validator set cannot change while its nodes hold its history."""
    base = free_base_port(100)
    made = _run("cluster", "init", "--nodes", "4", "--dir", str(tmp_path), "--base-port", str(base))
    assert made.returncode == 0, made.stderr
    same = _run("cluster", "init", "--nodes", "4", "--dir", str(tmp_path), "--reuse-keys")
    assert same.returncode == 0, same.stderr  # rewriting the configs of the same cluster
    (tmp_path / "node2" / "data" / "db").mkdir(parents=True)
    (tmp_path / "node2" / "data" / "db" / "CURRENT").write_text("MANIFEST-000001\n")
    before = {p: p.read_bytes() for p in tmp_path.glob("node*/node.toml")}
    other = _run("cluster", "init", "--nodes", "7", "--dir", str(tmp_path), "--reuse-keys")
    assert other.returncode == 2
    assert "holds a 4-node cluster whose nodes hold its history (node2)" in other.stderr
    assert "--nodes 7 would run them under another validator set" in other.stderr
    assert {p: p.read_bytes() for p in tmp_path.glob("node*/node.toml")} == before
