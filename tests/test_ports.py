"""Ports in use before a node starts (node/ports.py): real sockets hold them, the real
CLI is refused at once and starts nothing, and its hint moves the cluster."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cretoai.config import load_config
from devkit.ports import free_base_port
from node.clusterinit import load_cluster
from node.ports import Listener, busy, in_use
from tests.conftest import cli


@contextmanager
def held(address: str, *, udp: bool = False) -> Iterator[None]:
    """``address`` bound (and listening, for TCP) by a socket of this process."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind((host, int(port)))
        if not udp:
            s.listen()
        yield


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_held_port_is_in_use_and_a_released_one_is_not() -> None:
    tcp = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    udp = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with held(tcp), held(udp, udp=True):
        assert in_use(Listener("node1", "storage", tcp))
        assert in_use(Listener("node1", "QUIC", udp, udp=True))
    assert not in_use(Listener("node1", "storage", tcp))
    assert not in_use(Listener("node1", "QUIC", udp, udp=True))
    # not this machine's to try: a service host name (containers), or no fixed port
    assert not in_use(Listener("node1", "storage", "node1-storage:7003"))
    assert not in_use(Listener("node1", "storage", "127.0.0.1:0"))


def _init(directory: Path, base: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli("cluster", "init", "--nodes", "4", "--dir", str(directory),
            "--base-port", str(base), "--http-port", str(base + 100), "--reuse-keys"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cluster_up_with_a_port_in_use_starts_nothing_and_says_how_to_move(
    tmp_path: Path,
) -> None:
    target = tmp_path / "c"
    first_base = free_base_port()
    assert _init(target, first_base).returncode == 0
    node2 = load_config(load_cluster(target)[1], environ={})
    with held(node2.storage.listen), held(node2.quic_listen, udp=True):
        proc = subprocess.run(
            cli("cluster", "up", "--nodes", "4", "--dir", str(target)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"{node2.storage.listen} (node2 storage, TCP)" in proc.stderr
    assert f"{node2.quic_listen} (node2 QUIC, UDP)" in proc.stderr
    assert "nothing was started" in proc.stderr
    assert "--reuse-keys --http-port PORT --base-port PORT" in proc.stderr
    assert "Handshake failed" not in proc.stderr
    # no service was started: none wrote a log
    assert not [p for p in target.glob("node*/logs/*") if p.stat().st_size]
    # the hint moves the cluster (same keys) to ports that are free
    keys = [(target / f"node{i}" / "node.pub").read_bytes() for i in range(1, 5)]
    other_base = next(b for b in iter(free_base_port, None) if b != first_base)
    assert _init(target, other_base).returncode == 0
    moved = [load_config(p, environ={}) for p in load_cluster(target)]
    assert moved[1].storage.listen != node2.storage.listen
    assert [(target / f"node{i}" / "node.pub").read_bytes() for i in range(1, 5)] == keys
    assert busy(moved) == []
