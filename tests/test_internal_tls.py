"""Internal gRPC is authenticated: each node's services accept only callers holding a
certificate of that node's CA, and never listen beyond loopback without TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cretoai.channels import service_channel, service_endpoint
from cretoai.config import ConfigError, NodeConfig, load_config, parse_config, to_toml_dict
from cretoai.serving import GrpcService
from cretoai.tls import InternalTls
from node.clusterinit import ClusterLayout
from tests.conftest import cli

INTERNAL = ("storage", "transport", "consensus")


async def _health(target: str, tls: InternalTls | None) -> str:
    """SERVING, or the gRPC status code's name when the call is refused."""
    async with service_channel(target, tls=tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _wait_serving(cfg: NodeConfig, service: str, proc: subprocess.Popen[bytes]) -> None:
    target, tls = service_endpoint(cfg, service)
    deadline = time.monotonic() + 60
    while await _health(target, tls) != "SERVING":
        assert proc.poll() is None, f"{service} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{service} not serving within 60 s"
        await asyncio.sleep(0.2)


@pytest.fixture
def node1_services(
    cluster_factory: Callable[..., ClusterLayout],
) -> Iterator[tuple[NodeConfig, NodeConfig, dict[str, subprocess.Popen[bytes]]]]:
    """node1's internal services of a 2-node cluster, each its own process (node2 is down)."""
    layout = cluster_factory(2)
    cfg1, cfg2 = (load_config(n.config) for n in layout.nodes)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    config = layout.nodes[0].config
    try:
        for service in INTERNAL:
            procs[service] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"services.{service}",
                    "--config",
                    str(config),
                ],
                cwd=layout.nodes[0].directory,
                stdout=subprocess.DEVNULL,
                stderr=(layout.nodes[0].directory / f"{service}.err").open("wb"),
            )
            asyncio.run(_wait_serving(cfg1, service, procs[service]))
        yield cfg1, cfg2, procs
    finally:
        for proc in reversed(list(procs.values())):
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
async def test_every_internal_service_refuses_a_caller_without_the_nodes_certificate(
    node1_services: tuple[NodeConfig, NodeConfig, dict[str, subprocess.Popen[bytes]]],
) -> None:
    cfg1, cfg2, _ = node1_services
    own, other = cfg1.internal_tls, cfg2.internal_tls
    assert own is not None and other is not None
    for service in INTERNAL:
        target, _ = service_endpoint(cfg1, service)
        assert await _health(target, own) == "SERVING", service
        # plaintext: the TLS handshake never happens
        assert await _health(target, None) == "UNAVAILABLE", service
        # a certificate of another node's CA: refused during the handshake
        assert await _health(target, other) == "UNAVAILABLE", service
        # the right CA to check the server, but no client certificate of ours
        stranger = InternalTls(ca=own.ca, cert=other.cert, key=other.key)
        assert await _health(target, stranger) == "UNAVAILABLE", service


@pytest.mark.slow
async def test_the_gateways_certificate_may_call_only_what_a_gateway_needs(
    node1_services: tuple[NodeConfig, NodeConfig, dict[str, subprocess.Popen[bytes]]],
    tmp_path: Path,
) -> None:
    """The gateway faces the internet: a compromised one must not rewrite the node's
    consensus records, back its database up anywhere, take over the transport's Exchange
    stream or ban the node's peers. Its own certificate is refused all of that."""
    from cretoai.v1 import (
        consensus_pb2,
        consensus_pb2_grpc,
        storage_pb2,
        storage_pb2_grpc,
        transport_pb2,
        transport_pb2_grpc,
    )

    cfg, _, _ = node1_services
    gateway, node = cfg.gateway_tls, cfg.internal_tls
    assert gateway is not None and node is not None and gateway.cert != node.cert
    put = storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=b"x/1", value=b"v")])
    scan = storage_pb2.ScanStateRequest(prefix=b"x/")
    denied = grpc.StatusCode.PERMISSION_DENIED

    async def code(call: object) -> grpc.StatusCode:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async with service_channel(service_endpoint(cfg, "storage")[0], tls=gateway) as channel:
        storage = storage_pb2_grpc.StorageStub(channel)
        assert await code(storage.GetVertex(storage_pb2.GetVertexRequest(hash=b"\1" * 32))) == (
            grpc.StatusCode.OK
        )
        assert await code(storage.WriteState(put)) == denied
        elsewhere = tmp_path / "elsewhere"
        backup = storage_pb2.BackupRequest(path=str(elsewhere))
        assert await code(storage.Backup(backup)) == denied
        assert not elsewhere.exists()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in storage.ScanState(scan):
                pass
        assert refused.value.code() == denied
    async with service_channel(service_endpoint(cfg, "transport")[0], tls=gateway) as channel:
        transport = transport_pb2_grpc.TransportStub(channel)
        assert await code(transport.ListPeers(transport_pb2.ListPeersRequest())) == (
            grpc.StatusCode.OK
        )
        ban = transport_pb2.BanPeerRequest(node_id="x", reason="audit")
        assert await code(transport.BanPeer(ban)) == denied
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in transport.Exchange(iter(())):
                pass
        assert refused.value.code() == denied
    async with service_channel(service_endpoint(cfg, "consensus")[0], tls=gateway) as channel:
        status = consensus_pb2_grpc.ConsensusStub(channel).GetStatus(
            consensus_pb2.GetStatusRequest()
        )
        assert await code(status) == grpc.StatusCode.OK
    for service in INTERNAL:  # health probes stay open to it
        assert await _health(service_endpoint(cfg, service)[0], gateway) == "SERVING"
    # the services' own certificate may do all of it; the gateway's write left nothing
    async with service_channel(service_endpoint(cfg, "storage")[0], tls=node) as channel:
        storage = storage_pb2_grpc.StorageStub(channel)
        assert [
            e for page in [p async for p in storage.ScanState(scan)] for e in page.entries
        ] == []
        assert await code(storage.WriteState(put)) == grpc.StatusCode.OK


@pytest.mark.slow
def test_a_gateway_given_only_its_own_certificate_serves(
    node1_services: tuple[NodeConfig, NodeConfig, dict[str, subprocess.Popen[bytes]]],
    tmp_path: Path,
) -> None:
    """Kubernetes mounts a gateway only the CA and the gateway's certificate, and compose
    copies it only those: the gateway read the services' key at start all the same, and
    every gateway of both stopped with "internal TLS key .../tls/node.key: No such file".
    Given only its own files, it serves and reaches consensus with its own certificate."""
    import shutil

    from cretoai.v1 import consensus_pb2, gateway_pb2_grpc

    cfg, _, _ = node1_services
    own = tmp_path / "gateway"
    (own / "tls").mkdir(parents=True, mode=0o700)
    shutil.copy2(cfg.source, own / "node.toml")
    shutil.copy2(cfg.source.parent / "submitter.key", own / "submitter.key")
    for name in ("ca.crt", "gateway.crt", "gateway.key"):
        shutil.copy2(cfg.source.parent / "tls" / name, own / "tls" / name)
    assert not (own / "tls" / "node.key").exists()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", "--config", str(own / "node.toml")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "gateway.err").open("wb"),
    )

    async def status() -> consensus_pb2.NodeStatus:
        await _wait_serving(cfg, "gateway", proc)
        async with service_channel(service_endpoint(cfg, "gateway")[0], tls=None) as channel:
            reply: consensus_pb2.NodeStatus = await gateway_pb2_grpc.GatewayStub(channel).GetStatus(
                consensus_pb2.GetStatusRequest(), timeout=10
            )
            return reply

    try:
        assert asyncio.run(status()).node_name == cfg.node.name
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "node.key" not in (tmp_path / "gateway.err").read_text()


async def test_an_internal_service_refuses_a_public_address_without_tls() -> None:
    service = GrpcService(name="storage", bind="0.0.0.0:0", servicers=[])
    with pytest.raises(OSError, match=r"refusing to listen on 0\.0\.0\.0:0 without TLS"):
        await service.start()
    # the gateway's client API is public by design; loopback is always allowed
    for public, bind in ((True, "0.0.0.0:0"), (False, "127.0.0.1:0")):
        ok = GrpcService(name="gateway", bind=bind, servicers=[], public=public)
        await ok.start()
        assert ok.port > 0
        await ok.stop()


def test_a_config_with_a_public_internal_address_needs_tls(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    layout = cluster_factory(1)
    cfg = load_config(layout.nodes[0].config)
    data = to_toml_dict(cfg)
    data["storage"]["listen"] = "0.0.0.0:7003"
    parse_config(data, cfg.source)  # with [tls]: fine
    data.pop("tls")
    with pytest.raises(ConfigError, match=r"storage.listen: 0.0.0.0:7003 is not a loopback"):
        parse_config(data, cfg.source)
    data["tls"] = {"ca": "tls/ca.crt"}
    with pytest.raises(ConfigError, match="set ca, cert and key together"):
        parse_config(data, cfg.source)
    # nor may the others dial one off loopback: plaintext, trusting whoever answers there
    data.pop("tls")
    data["storage"]["listen"] = "127.0.0.1:7003"
    data["storage"]["advertise"] = "203.0.113.7:7003"
    with pytest.raises(ConfigError, match=r"storage.advertise: 203.0.113.7:7003 is not a loop"):
        parse_config(data, cfg.source)
    data["storage"]["advertise"] = "127.0.0.2:7003"
    parse_config(data, cfg.source)


def test_cluster_init_gives_each_node_its_own_ca_and_a_private_key(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    layout = cluster_factory(2)
    tls = [load_config(n.config).internal_tls for n in layout.nodes]
    assert tls[0] is not None and tls[1] is not None
    assert tls[0].ca != tls[1].ca
    for n in layout.nodes:
        key = n.directory / "tls" / "node.key"
        assert (key.stat().st_mode & 0o777) == 0o600
        assert not (n.directory / "tls" / "ca.key").exists()  # nobody can mint more
    # a group-readable key is refused with the fix in the message
    key = layout.nodes[0].directory / "tls" / "node.key"
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        _ = load_config(layout.nodes[0].config).internal_tls


def test_another_nodes_certificate_or_ca_is_one_clear_error(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    """Found by an audit: node2's certificate beside node1's key was reported by gRPC as
    "cannot listen ... Failed to bind" (a port problem), and another cluster's CA made
    the node's own health checks fail their handshakes for ever with no error. The
    config now refuses both, naming the file, before any service starts."""
    layout = cluster_factory(2)
    one, two = (n.directory / "tls" for n in layout.nodes)
    load_config(layout.nodes[0].config).internal_tls  # noqa: B018 - its own files load
    original = (one / "node.crt").read_bytes()
    (one / "node.crt").write_bytes((two / "node.crt").read_bytes())
    with pytest.raises(ConfigError, match="is not the certificate of the key"):
        _ = load_config(layout.nodes[0].config).internal_tls
    (one / "node.crt").write_bytes(original)
    (one / "ca.crt").write_bytes((two / "ca.crt").read_bytes())
    with pytest.raises(ConfigError, match="was not issued by the CA"):
        _ = load_config(layout.nodes[0].config).internal_tls
    result = subprocess.run(
        cli("start", "--config", str(layout.nodes[0].config)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "was not issued by the CA" in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_paths_resolve_next_to_the_config(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    layout = cluster_factory(1)
    cfg = load_config(layout.nodes[0].config)
    assert cfg.tls.ca == "tls/ca.crt"
    assert cfg.internal_tls is not None  # read relative to the config file, from anywhere


def test_new_tls_material_never_leaves_the_key_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a node's TLS key into an existing file kept that file's mode: a 0644 one
    (an operator's copy, say) held the new private key readable to every user until the
    chmod after it. The key is written to a new 0600 file and renamed over the old."""
    from cretoai.tls import KEY_FILE, generate_node_tls

    generate_node_tls(tmp_path, "node1")
    key = tmp_path / KEY_FILE
    key.chmod(0o644)
    old = key.read_bytes()
    seen: list[int] = []
    real_fchmod = os.fchmod

    def watching(fd: int, mode: int) -> None:  # the key's bytes are in: the file's mode then
        if os.pread(fd, 64, 0).startswith(b"-----BEGIN PRIVATE KEY"):
            seen.append(os.fstat(fd).st_mode & 0o777)
        real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", watching)
    generate_node_tls(tmp_path, "node1")
    monkeypatch.undo()
    assert seen == [0o600, 0o600]  # the services' key and the gateway's
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes() != old
    assert not list(tmp_path.glob(".*.tmp"))


def test_certificates_outside_their_validity_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit (2026-12-04): a node whose clock was an hour behind the host that ran
    cluster init never started (its certificates were valid from 5 minutes before init),
    and all it said was "not serving after 90s" among hundreds of gRPC lines. They are
    valid from a day before now, and one outside its period is refused naming it."""
    import datetime

    from cretoai import tls

    ca, cert, key = tls.generate_node_tls(tmp_path / "now", "node1")
    loaded = tls.load_internal_tls(ca, cert, key)
    from cryptography import x509

    start = x509.load_pem_x509_certificate(loaded.cert).not_valid_before_utc
    assert datetime.datetime.now(datetime.UTC) - start >= datetime.timedelta(hours=23)
    # made on a host whose clock is two hours ahead of this one
    monkeypatch.setattr(tls, "BACKDATE", -datetime.timedelta(hours=2))
    ca, cert, key = tls.generate_node_tls(tmp_path / "ahead", "node1")
    with pytest.raises(tls.TlsError) as info:
        tls.load_internal_tls(ca, cert, key)
    message = str(info.value)
    assert f"internal TLS CA certificate {ca} is valid from " in message
    assert "and this host's clock says" in message and "set the clock right (NTP)" in message
