"""The cretoai-node command line: help, cluster init, errors."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomli_w

from cretoai import registry
from cretoai.config import load_config
from cretoai.crypto import load_private_key
from devkit.ports import free_base_port
from node.clusterinit import load_cluster
from tests.conftest import cli


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("keygen",),
        ("cluster",),
        ("cluster", "init"),
        ("cluster", "up"),
        ("start",),
        ("health",),
        ("backup",),
        ("restore",),
    ],
)
def test_help_everywhere(args: tuple[str, ...]) -> None:
    proc = run(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: cretoai-node" in proc.stdout


def test_cluster_init_writes_a_consistent_cluster(tmp_path: Path) -> None:
    base = free_base_port()
    target = tmp_path / "c"
    proc = run(
        "cluster", "init", "--nodes", "4", "--dir", str(target), "--base-port", str(base),
        "--http-port", str(base + 100),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "4-node cluster" in proc.stdout
    summary = json.loads((target / "cluster.json").read_text())
    assert [n["name"] for n in summary["nodes"]] == ["node1", "node2", "node3", "node4"]
    configs = load_cluster(target)
    assert len(configs) == 4
    ports: list[str] = []
    validator_sets = set()
    for i, path in enumerate(configs):
        cfg = load_config(path, environ={})
        assert cfg.replica_index == i
        key = load_private_key(cfg.key_path)
        assert key.public_key == cfg.validators[i].public_key_bytes
        assert key.node_id == summary["nodes"][i]["node_id"]
        assert (cfg.key_path.stat().st_mode & 0o777) == 0o600
        validator_sets.add(tuple(v.public_key for v in cfg.validators))
        ports += [
            cfg.gateway.http, cfg.gateway.grpc, cfg.gateway.metrics, cfg.consensus.listen,
            cfg.consensus.metrics, cfg.transport.listen, cfg.transport.metrics,
            cfg.storage.listen, cfg.storage.metrics, cfg.quic_listen,
        ]  # fmt: skip
        assert summary["nodes"][i]["gateway_url"] == f"http://{cfg.gateway.http}"
    assert len(validator_sets) == 1, "every node must share one validator set"
    assert len(ports) == len(set(ports)), "every endpoint must be distinct"
    assert all(p.startswith("127.0.0.1:") for p in ports)


def test_cluster_init_refuses_to_overwrite(tmp_path: Path) -> None:
    base = str(free_base_port())
    created = run("cluster", "init", "--nodes", "1", "--dir", str(tmp_path), "--base-port", base)
    assert created.returncode == 0, created.stderr
    first = (tmp_path / "node1" / "node.pub").read_text()
    proc = run("cluster", "init", "--nodes", "1", "--dir", str(tmp_path), "--base-port", base)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert (tmp_path / "node1" / "node.pub").read_text() == first
    forced = run(
        "cluster", "init", "--nodes", "1", "--dir", str(tmp_path), "--base-port", base, "--force"
    )
    assert forced.returncode == 0, forced.stderr
    second = (tmp_path / "node1" / "node.pub").read_text()
    assert second != first
    # once a node has data (its database, its signing mark), new keys would make them
    # another cluster's: --force refuses, and nothing is changed
    data = tmp_path / "node1" / "data" / "consensus"
    data.mkdir(parents=True)
    (data / "signing-mark.json").write_text("{}")
    again = run(
        "cluster", "init", "--nodes", "1", "--dir", str(tmp_path), "--base-port", base, "--force"
    )
    assert again.returncode == 2 and "--reuse-keys" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / "node1" / "node.pub").read_text() == second


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cluster", "init", "--nodes", "0"), "--nodes must be at least 1"),
        (("cluster", "init", "--nodes", "4", "--base-port", "65500"), "--base-port"),
    ],
)
def test_cluster_init_bad_arguments(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run(*args, "--dir", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_health_fails_when_services_are_down(cluster_factory: object) -> None:
    layout = cluster_factory(1)  # type: ignore[operator]
    proc = run("health", "--config", str(layout.nodes[0].config), "--timeout", "0.5", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert list(report["services"]) == list(registry.NAMES)  # every service, in start order
    assert all(status != "SERVING" for status in report["services"].values())


def test_a_path_that_cannot_be_used_is_one_error_line(tmp_path: Path) -> None:
    """An OSError (a file where a directory must be) is one ``error:`` line, exit 1."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for args in (
        ("keygen", "--output", str(a_file / "node.key")),
        ("cluster", "init", "--nodes", "1", "--dir", str(a_file), "--base-port", "20000"),
    ):
        proc = run(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_a_node_with_another_nodes_key_or_no_submitter_key_starts_nothing(
    tmp_path: Path,
) -> None:
    """An audit (2026-12-04): node3 running with node2's key started storage (which made a
    database) before transport failed five times; a missing submitter key stopped the node
    after three services had joined the cluster. Both are refused before anything starts."""
    base = free_base_port(100)
    made = run("cluster", "init", "--nodes", "4", "--dir", str(tmp_path), "--base-port", str(base))
    assert made.returncode == 0, made.stderr
    node3 = tmp_path / "node3"
    (node3 / "node.key").write_bytes((tmp_path / "node2" / "node.key").read_bytes())
    wrong = run("start", "--config", str(node3 / "node.toml"))
    assert wrong.returncode == 2, wrong.stderr
    assert f"{node3 / 'node.key'}: is not the key [[validators]] lists for node3" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert not (node3 / "data" / "db").exists()  # nothing was started
    node4 = tmp_path / "node4"
    (node4 / "submitter.key").unlink()
    missing = run("start", "--config", str(node4 / "node.toml"))
    assert missing.returncode == 2, missing.stderr
    assert "submitter.key: private key file not found" in missing.stderr
    assert not (node4 / "data" / "db").exists()


def test_cluster_up_refuses_nodes_with_different_cluster_parameters(tmp_path: Path) -> None:
    """An audit (2026-12-04): node4 alone with checkpoint_interval 8 was refused by every
    peer's transport, and cluster up said "cluster ready" on 4 nodes."""
    base = free_base_port(100)
    made = run("cluster", "init", "--nodes", "4", "--dir", str(tmp_path), "--base-port", str(base))
    assert made.returncode == 0, made.stderr
    config = tmp_path / "node4" / "node.toml"
    data = tomllib.loads(config.read_text())
    data.setdefault("consensus", {})["checkpoint_interval"] = 8
    config.write_text(tomli_w.dumps(data))
    proc = run("cluster", "up", "--nodes", "4", "--dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"{config}: consensus.checkpoint_interval = 8 (node1: " in proc.stderr
    assert "every node of a cluster must run with the same cluster parameters" in proc.stderr
    assert not (tmp_path / "node1" / "data" / "db").exists()
