"""``cluster init --service-host``: configs for services that are each their own host
(compose containers, Kubernetes Services), and ``health --service`` checking one
service on its own host."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from cretoai.config import load_config
from devkit.ports import free_base_port
from tests.conftest import REPO, cli
from tests.support.processes import Process

pytestmark = pytest.mark.deployment


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, cwd=REPO, timeout=120)


def init(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "cluster", "init", "--nodes", "4", "--dir", str(directory),
        "--service-host", "{node}-{service}", *extra,
    )  # fmt: skip


def test_every_service_is_its_own_host(tmp_path: Path) -> None:
    proc = init(tmp_path, "--data-dir", "/var/lib/cretoai")
    assert proc.returncode == 0, proc.stderr
    for i in range(1, 5):
        cfg = load_config(tmp_path / f"node{i}" / "node.toml", environ={})
        name = f"node{i}"
        assert cfg.node.name == name
        assert cfg.data_dir == Path("/var/lib/cretoai")
        # the same ports on every node, bound on all interfaces
        assert cfg.gateway.http == "0.0.0.0:8080"
        assert cfg.gateway.grpc == "0.0.0.0:17004"
        assert cfg.quic_listen == "0.0.0.0:17000"
        for service, port in (("consensus", 17001), ("transport", 17002), ("storage", 17003)):
            section = getattr(cfg, service)
            assert section.listen == f"0.0.0.0:{port}"
            assert section.advertise == f"{name}-{service}:{port}"
        assert cfg.transport.advertise_address == f"{name}-transport:17000"
        metrics = [cfg.gateway.metrics, cfg.consensus.metrics]
        metrics += [cfg.transport.metrics, cfg.storage.metrics]
        assert metrics == [f"0.0.0.0:{p}" for p in (17010, 17011, 17012, 17013)]
        assert [v.address for v in cfg.validators] == [
            f"node{k}-transport:17000" for k in range(1, 5)
        ]
        assert cfg.internal_tls is not None
        cert = x509.load_pem_x509_certificate(cfg.internal_tls.cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = set(names.value.get_values_for_type(x509.DNSName))
        assert {f"{name}-{s}" for s in ("gateway", "consensus", "transport", "storage")} <= dns
        for key in ("node.key", "submitter.key", "tls/node.key"):
            mode = stat.S_IMODE((tmp_path / name / key).stat().st_mode)
            assert mode == 0o600, (key, oct(mode))


def test_reuse_keys_is_idempotent(tmp_path: Path) -> None:
    assert init(tmp_path).returncode == 0
    keys = {p: p.read_bytes() for p in tmp_path.glob("node*/*.key")}
    keys |= {p: p.read_bytes() for p in tmp_path.glob("node*/tls/*")}
    again = init(tmp_path, "--reuse-keys")
    assert again.returncode == 0, again.stderr
    assert "reused the keys" in again.stdout
    assert {p: p.read_bytes() for p in keys} == keys
    refused = init(tmp_path)
    assert refused.returncode == 2 and "already exists" in refused.stderr


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{service}", "must contain {node}"),
        ("{node}-{host}", "use only {node} and {service}"),
        ("{node}:{service}", "is not a host name"),
    ],
)
def test_bad_templates(tmp_path: Path, template: str, message: str) -> None:
    proc = run("cluster", "init", "--dir", str(tmp_path), "--service-host", template)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
async def test_health_of_one_service_on_its_own_host(tmp_path: Path) -> None:
    base = free_base_port(40)
    proc = run(
        "cluster", "init", "--nodes", "1", "--dir", str(tmp_path),
        "--service-host", "{node}-{service}", "--host", "127.0.0.1",
        "--base-port", str(base), "--http-port", str(base + 30),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "node1" / "node.toml"
    storage = await Process.start("storage", cli("start", "--config", str(config),
                                                 "--service", "storage"), REPO)  # fmt: skip
    try:
        # (its advertised name, node1-storage, resolves nowhere here: --service dials the bind)
        deadline = time.monotonic() + 60
        while True:
            ok = await asyncio.to_thread(run, "health", "--config", str(config),
                                         "--service", "storage")  # fmt: skip
            if ok.returncode == 0 or time.monotonic() > deadline:
                break
            assert storage.proc.returncode is None, storage.output()
            await asyncio.sleep(0.5)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"node1 storage    127.0.0.1:{base + 3}" in ok.stdout and "SERVING" in ok.stdout
        down = run("health", "--config", str(config), "--service", "consensus")
        assert down.returncode == 1 and "UNREACHABLE" in down.stdout
    finally:
        await storage.stop()


def test_key_dir_keeps_the_validator_key_apart(tmp_path: Path) -> None:
    cluster, keys = tmp_path / "cluster", tmp_path / "keys"
    proc = init(cluster, "--key-dir", f"{keys}/{{node}}")
    assert proc.returncode == 0, proc.stderr
    for i in range(1, 5):
        name = f"node{i}"
        assert not (cluster / name / "node.key").exists()
        assert (cluster / name / "submitter.key").exists()  # the gateway's own key stays
        key = keys / name / "node.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        cfg = load_config(cluster / name / "node.toml", environ={})
        assert cfg.key_path == key
        assert cfg.validators[i - 1].public_key == (keys / name / "node.pub").read_text().strip()
    before = (keys / "node1" / "node.key").read_bytes()
    again = init(cluster, "--key-dir", f"{keys}/{{node}}", "--reuse-keys")
    assert again.returncode == 0 and "reused the keys" in again.stdout, again.stderr
    assert (keys / "node1" / "node.key").read_bytes() == before
    bad = init(tmp_path / "other", "--key-dir", str(keys))
    assert bad.returncode == 2 and "must contain {node}" in bad.stderr
