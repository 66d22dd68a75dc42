"""A storage service under test or benchmark: its config (with a test validator set),
CommitBatch requests as consensus sends them, and the service as a process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import tomli_w

import cretoai.vertex
from cretoai import registry
from cretoai.config import NodeConfig, parse_config
from cretoai.crypto import get_backend
from cretoai.crypto.backend import PrivateKey
from cretoai.v1 import storage_pb2, vertex_pb2
from devkit.ports import free_tcp_port
from services.consensus.core import crypto as pbft_crypto
from services.consensus.core.codec import encode_body
from services.consensus.core.messages import Commit

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- config

#: The test validator set: n = 4 (q = 3), keys derived from fixed seeds.
VALIDATORS = 4
QUORUM = 3

_KEYS: dict[int, PrivateKey] = {}


def _key(index: int) -> PrivateKey:
    """Validator ``index``'s ML-DSA-87 key (``index >= VALIDATORS``: a key of no member)."""
    if index not in _KEYS:
        seed = hashlib.sha3_256(b"cretoai tests: validator %d" % index).digest()
        _KEYS[index] = get_backend("cryptography").private_key_from_seed(seed)
    return _KEYS[index]


def validator_keys() -> list[PrivateKey]:
    """The private keys of the test validator set, in replica order."""
    return [_key(i) for i in range(VALIDATORS)]


def outsider_key() -> PrivateKey:
    """A real ML-DSA-87 key that is not in the validator set."""
    return _key(VALIDATORS)


def validator_public_keys() -> tuple[bytes, ...]:
    return tuple(key.public_key for key in validator_keys())


def config_dict(
    tmp: Path, *, port: int = 0, db: Path | None = None, metrics: bool | int = False
) -> dict[str, Any]:
    (tmp / "data").mkdir(mode=0o700, parents=True, exist_ok=True)  # as cluster init does
    return {
        "node": {"name": "node1", "key": "node.key", "data_dir": str(tmp / "data")},
        "validators": [
            {
                "name": f"node{i + 1}",
                "public_key": public_key.hex(),
                "address": f"127.0.0.1:{7000 + i}",
            }
            for i, public_key in enumerate(validator_public_keys())
        ],
        "storage": {
            "listen": f"127.0.0.1:{port}",
            # the Prometheus endpoint takes 0.5 s to shut down: only where a test reads it
            "metrics": f"127.0.0.1:{0 if metrics is True else int(metrics)}" if metrics else "",
            "path": str(db) if db else "",
        },
        "telemetry": {"log_level": "info"},
    }


def make_config(
    tmp: Path, *, port: int = 0, db: Path | None = None, metrics: bool = False
) -> NodeConfig:
    return parse_config(config_dict(tmp, port=port, db=db, metrics=metrics), tmp / "node.toml")


def write_config(tmp: Path, *, port: int, db: Path | None = None, metrics: int = 0) -> Path:
    path = tmp / "node.toml"
    data = config_dict(tmp, port=port, db=db, metrics=metrics or False)
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


# ---------------------------------------------------------------------------- batches


def vertex_hash(vertex: vertex_pb2.Vertex) -> bytes:
    """The vertex's content hash (storage checks each result's hash against its vertex)."""
    return cretoai.vertex.vertex_hash(vertex)


def batch_digest(vertices: Sequence[vertex_pb2.Vertex]) -> bytes:
    """The consensus digest of a batch: over the signed digest of each copy, in order."""
    return pbft_crypto.batch_digest(cretoai.vertex.signed_digest(v) for v in vertices)


def signed_commit(
    seq: int, digest: bytes, *, signer: int, view: int = 0, key: PrivateKey | None = None
) -> vertex_pb2.SignedMessage:
    """A COMMIT signed as a replica signs it (``key`` defaults to validator ``signer``'s)."""
    body = encode_body(Commit(view=view, seq=seq, digest=digest))
    signature = pbft_crypto.MlDsaSigner(key or _key(signer)).sign(body)
    return vertex_pb2.SignedMessage(body=body, signature=signature, signer=signer)


def certificate(
    seq: int, digest: bytes, view: int = 0, signers: Sequence[int] = range(QUORUM)
) -> vertex_pb2.FinalityCertificate:
    """A real finality certificate: COMMITs of ``signers`` (a quorum by default)."""
    return vertex_pb2.FinalityCertificate(
        view=view,
        seq=seq,
        batch_digest=digest,
        commits=[signed_commit(seq, digest, signer=s, view=view) for s in signers],
    )


def commit_request(
    seq: int,
    vertices: Sequence[vertex_pb2.Vertex],
    *,
    rejected: Sequence[int] = (),
    reasons: dict[int, str] | None = None,
    hashes: Sequence[bytes] | None = None,
) -> storage_pb2.CommitBatchRequest:
    """A CommitBatch request as consensus sends it: the batch digest over the copies' signed
    digests and a real certificate; ``rejected`` are positions the executor rejected,
    ``hashes`` (default: each vertex's hash) the results' hashes."""
    hashes = list(hashes) if hashes is not None else [vertex_hash(v) for v in vertices]
    digest = batch_digest(vertices)
    reasons = reasons or {}
    results = [
        storage_pb2.ExecutionResult(
            hash=h,
            rejected=i in rejected,
            reject_reason=reasons.get(i, "invalid signature") if i in rejected else "",
        )
        for i, h in enumerate(hashes)
    ]
    batch = vertex_pb2.FinalizedBatch(
        seq=seq,
        batch_digest=digest,
        vertices=list(vertices),
        rejected=[hashes[i] for i in sorted(rejected)],
        certificate=certificate(seq, digest),
    )
    return storage_pb2.CommitBatchRequest(batch=batch, results=results)


# ---------------------------------------------------------------------------- a service process


@dataclass
class ServiceProcess:
    """``python -m services.storage`` as a child process, for crash and startup tests."""

    config: Path
    port: int
    env: dict[str, str] | None = None
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    stderr_path: Path | None = None

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        db: Path | None = None,
        env: dict[str, str] | None = None,
        metrics: bool = False,
    ) -> ServiceProcess:
        """A process whose config (in ``directory``) listens on free loopback ports."""
        directory.mkdir(parents=True, exist_ok=True)
        port = free_tcp_port()
        metrics_port = free_tcp_port() if metrics else 0
        config = write_config(directory, port=port, db=db, metrics=metrics_port)
        return cls(config, port, env, metrics_port)

    def spawn(self, *, preexec: Any = None, wrapper: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start it; ``wrapper`` is a command prefix (e.g. a mount namespace)."""
        self.stderr_path = self.config.parent / f"storage-{time.monotonic_ns()}.log"
        env = {**os.environ, **(self.env or {})}
        command = registry.service("storage").command(self.config)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*wrapper, *command],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                preexec_fn=preexec,
            )
        return self.proc

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""

    async def wait_serving(self, timeout: float = 30.0) -> None:
        """Until the health check answers SERVING (or the process exits: AssertionError)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"storage exited {self.proc.returncode}: {self.stderr()}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"storage did not serve within {timeout}s: {self.stderr()}")

    def channel(self) -> grpc.aio.Channel:
        # a private subchannel pool: a shared one may still be backing off from the last process
        return grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}",
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )

    async def health(self) -> int:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            return int(reply.status)

    def metrics(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)
