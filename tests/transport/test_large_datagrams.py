"""Packets larger than 16 KiB between transports on one host (docs/transport.md).

Real transports on loopback that both offer the feature send 60,000-byte datagrams once
authenticated, and a message of a MiB arrives whole in far fewer datagrams than at
15,000 bytes; one that does not offer it (an older transport) is sent 15,000-byte ones;
and the endpoint still drops unread what no node sends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cretoai.v1 import transport_pb2
from devkit.transport import RunningTransport, all_connected, make_cluster, start_transport
from services.transport.bounded_quic import LARGE_LOOPBACK_DATAGRAM_BYTES
from services.transport.endpoint import oversized
from services.transport.settings import LOOPBACK_DATAGRAM_BYTES, MAX_DATAGRAM_BYTES
from tests.conftest import REPO
from tests.transport.conftest import Starter
from tests.transport.test_service import read_n

MESSAGE = 1_000_000  # incompressible: random bytes


def _datagrams_sent() -> int:
    return int(REGISTRY.get_sample_value("cretoai_transport_datagrams_sent_total") or 0)


async def _send_one(a: RunningTransport, b: RunningTransport) -> int:
    """Send b a MESSAGE-byte payload from a; the datagrams both sent meanwhile (the
    counter is the process's: both transports run in this one)."""
    inbound = b.stub.Exchange()
    try:
        payload = os.urandom(MESSAGE)
        before = _datagrams_sent()
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=payload))
        (got,) = await read_n(inbound, 1)
        assert got.payload == payload
        return _datagrams_sent() - before
    finally:
        inbound.cancel()


async def _datagram_sizes(a: RunningTransport, b: RunningTransport) -> tuple[int, int]:
    return (
        (await a.peers())[b.node_id].max_datagram_bytes,
        (await b.peers())[a.node_id].max_datagram_bytes,
    )


async def test_transports_on_one_host_send_60000_byte_datagrams(transports: Starter) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    assert await _datagram_sizes(a, b) == (LARGE_LOOPBACK_DATAGRAM_BYTES,) * 2
    datagrams = await _send_one(a, b)
    # at 15,000 bytes the data alone needs MESSAGE / 15,000 = 67 datagrams
    assert datagrams < MESSAGE / LOOPBACK_DATAGRAM_BYTES, datagrams


async def test_a_peer_that_does_not_offer_them_gets_15000_byte_datagrams(
    tmp_path: Path,
) -> None:
    spec = make_cluster(tmp_path, 2)
    spec.data[1]["transport"]["large_loopback_datagrams"] = False  # as an older transport
    nodes = [await start_transport(spec.config(i)) for i in range(2)]
    try:
        await all_connected(nodes)
        a, b = nodes
        assert await _datagram_sizes(a, b) == (LOOPBACK_DATAGRAM_BYTES,) * 2
        assert await _send_one(a, b) >= MESSAGE / LOOPBACK_DATAGRAM_BYTES
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.parametrize(
    ("size", "host", "dropped"),
    [
        (MAX_DATAGRAM_BYTES, "192.0.2.1", False),
        (MAX_DATAGRAM_BYTES + 1, "192.0.2.1", True),  # no node sends a peer elsewhere more
        (MAX_DATAGRAM_BYTES + 1, "127.0.0.1", False),
        (LARGE_LOOPBACK_DATAGRAM_BYTES, "::1", False),
        (LARGE_LOOPBACK_DATAGRAM_BYTES, "::ffff:127.0.0.2", False),
        (LARGE_LOOPBACK_DATAGRAM_BYTES + 1, "127.0.0.1", True),
        (LARGE_LOOPBACK_DATAGRAM_BYTES, "not an address", True),
    ],
)
def test_what_no_node_sends_is_oversized(size: int, host: str, dropped: bool) -> None:
    assert oversized(size, host) is dropped


def _can_make_a_network_namespace() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-rn", "ip", "link", "set", "lo", "up", "mtu", "1500"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _ip_counters(snmp: str) -> dict[str, int]:
    """The ``Ip:`` counters of a /proc/net/snmp dump (a header line, then values)."""
    names, values = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Ip:")]
    return dict(zip(names, map(int, values), strict=True))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    not _can_make_a_network_namespace(),
    reason="needs user and network namespaces and iproute2 (unshare -rn ip link)",
)
def test_on_a_loopback_of_mtu_1500_the_large_datagrams_are_fragmented_and_arrive() -> None:
    """The loopback MTU is 65,536 on Linux, but a host or container may set it lower. The
    transport sets no DF bit, so a 60,000-byte datagram is then IP-fragmented, and still
    delivered: the test above, run in a network namespace of its own whose ``lo`` has an
    MTU of 1,500 (its connection authenticates, a MiB arrives whole in fewer datagrams
    than at 15,000 bytes), and that namespace's IP counters show the fragments."""
    script = (
        "ip link set lo up mtu 1500 && ip -o link show lo && "
        '"$@"; status=$?; cat /proc/net/snmp; exit $status'
    )
    test = (
        f"{Path(__file__).relative_to(REPO)}::test_transports_on_one_host_send_60000_byte_datagrams"
    )
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script, "sh", sys.executable, "-m", "pytest", "-q",
         "-p", "no:cacheprovider", test],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "mtu 1500" in done.stdout and "1 passed" in done.stdout, done.stdout[-4000:]
    ip = _ip_counters(done.stdout)
    assert ip["FragCreates"] > 0 and ip["ReasmOKs"] > 0, ip
    assert ip["ReasmFails"] == 0, ip
