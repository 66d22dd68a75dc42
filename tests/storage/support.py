"""Helpers for the storage tests: realistic vertices and batches, an in-process service,
raw database access. Configs, CommitBatch requests and the service process are in
:mod:`devkit.storage` (the benchmarks use them too)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cretoai.channels import service_channel
from cretoai.config import NodeConfig
from cretoai.serving import GrpcService
from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from devkit.storage import commit_request, vertex_hash
from services.storage.service import build

REPO = Path(__file__).resolve().parents[2]
PUBLIC_KEY_SIZE = 2592
SIGNATURE_SIZE = 4627

# ---------------------------------------------------------------------------- DAG data

CREATOR = os.urandom(PUBLIC_KEY_SIZE)


def make_vertex(
    parents: Sequence[bytes] = (),
    *,
    payload: bytes | None = None,
    timestamp_ms: int | None = None,
    payload_size: int = 64,
) -> vertex_pb2.Vertex:
    return vertex_pb2.Vertex(
        payload=os.urandom(payload_size) if payload is None else payload,
        parents=list(parents),
        creator=CREATOR,
        timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        signature=os.urandom(SIGNATURE_SIZE),
    )


@dataclass
class Dag:
    """Builds batches of a growing DAG: each vertex has up to two finalized parents."""

    payload_size: int = 64
    tips: list[bytes] = field(default_factory=list)
    seq: int = 0

    def next_batch(self, count: int) -> storage_pb2.CommitBatchRequest:
        self.seq += 1
        vertices = []
        new_tips: list[bytes] = []
        for _ in range(count):
            parents = self.tips[-2:] if self.tips else []
            vertex = make_vertex(parents, payload_size=self.payload_size)
            vertices.append(vertex)
            new_tips.append(vertex_hash(vertex))
        self.tips = (self.tips + new_tips)[-8:]
        return commit_request(self.seq, vertices)


# ---------------------------------------------------------------------------- a running service


@dataclass
class Running:
    """An in-process storage service on port 0 and a stub to it."""

    service: GrpcService
    channel: grpc.aio.Channel
    stub: storage_pb2_grpc.StorageStub
    cfg: NodeConfig

    async def stop(self) -> None:
        await self.channel.close()
        await self.service.stop()


async def start_service(cfg: NodeConfig) -> Running:
    service = await build(cfg)
    service.grace = 1.0
    await service.start()
    channel = service_channel(f"127.0.0.1:{service.port}", max_message_bytes=64 * 1024 * 1024)
    return Running(
        service=service, channel=channel, stub=storage_pb2_grpc.StorageStub(channel), cfg=cfg
    )


async def collect(call: Any, timeout: float = 30.0) -> list[Any]:
    async def go() -> list[Any]:
        return [item async for item in call]

    return await asyncio.wait_for(go(), timeout)


# ---------------------------------------------------------------------------- raw RocksDB access


def options_file(db: Path) -> dict[str, dict[str, str]]:
    """The sections of the newest OPTIONS file RocksDB wrote for ``db``."""
    options = max(db.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in options.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = sections.setdefault(line, {})
        elif "=" in line:
            name, _, value = line.partition("=")
            current[name] = value
    return sections


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under ``directory``: a file's bytes, None for a directory (to check that
    a refused database was left exactly as it was)."""
    entries: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            entries[os.path.relpath(os.path.join(root, name), directory)] = None
        for name in files:
            full = os.path.join(root, name)
            entries[os.path.relpath(full, directory)] = Path(full).read_bytes()
    return entries


class RawDb:
    """The database opened directly with rocksdict (all column families, raw mode)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        from rocksdict import AccessType, Options, Rdict

        names = Rdict.list_cf(str(path))
        access = AccessType.read_only(False) if read_only else AccessType.read_write()
        self.db = Rdict(
            str(path),
            Options(raw_mode=True),
            column_families={n: Options(raw_mode=True) for n in names if n != "default"},
            access_type=access,
        )
        self.cfs = {n: self.db.get_column_family(n) for n in names if n != "default"}

    def items(self, cf: str) -> list[tuple[bytes, bytes]]:
        source = self.db if cf == "default" else self.cfs[cf]
        return [(bytes(k), bytes(v)) for k, v in source.items()]  # type: ignore[arg-type]

    def close(self) -> None:
        for cf in self.cfs.values():
            cf.close()
        self.cfs.clear()
        self.db.close()

    def __enter__(self) -> RawDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A command prefix that runs a process without root's override of file modes (a mode-000
#: file is then refused to root too); none is needed when the tests are not root.
WITHOUT_DAC_OVERRIDE = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)


def write_flushed_state(store: Any, rows: int, per_row: int = 50) -> None:
    """``rows`` x ``per_row`` consensus-state records of 512 random bytes under ``k/``,
    synced and flushed into table files (so that damaging one damages data blocks)."""
    for i in range(rows):
        store.write_state(
            storage_pb2.WriteStateRequest(
                puts=[
                    storage_pb2.StateEntry(key=b"k/%08d/%03d" % (i, j), value=os.urandom(512))
                    for j in range(per_row)
                ]
            )
        )
        store.sync()
    store._db.flush()


def damage_a_table_block(db: Path) -> None:
    """Flip a byte in the middle of ``db``'s largest table file: the open still succeeds
    (RocksDB reads data blocks only when asked for them). The file is rewritten, not
    changed in place, so a backup sharing it by a hard link keeps the intact one."""
    table = max(db.glob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = table.with_suffix(".damaged")
    damaged.write_bytes(bytes(data))
    os.replace(damaged, table)
