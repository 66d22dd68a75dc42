"""ScanState pages are bounded in bytes, not only in entries: the consensus reads its
durable records at start (``services.consensus.service.load_records``) over a channel
that receives at most 16 MiB per message, and ``batch/<digest>`` records hold up to
~1 MiB of vertex bodies each. Real service, real RocksDB, the project's client channel."""

from __future__ import annotations

import os

from cretoai.channels import service_channel
from cretoai.v1 import storage_pb2, storage_pb2_grpc
from services.storage.store import STATE_PAGE_BYTES
from tests.storage.support import Dag, Running, collect

Entry = storage_pb2.StateEntry

#: What the consensus's channel to storage accepts per message (cretoai.channels).
CLIENT_LIMIT = 16 * 1024 * 1024
MIB = 1024 * 1024


def _size(entries: list[storage_pb2.StateEntry]) -> int:
    return sum(len(e.key) + len(e.value) for e in entries)


async def _scan_pages(
    running: Running, prefix: bytes, **kw: object
) -> list[storage_pb2.ScanStateResponse]:
    """ScanState over a channel with the limits consensus uses (not the tests' 64 MiB one)."""
    channel = service_channel(f"127.0.0.1:{running.service.port}")
    try:
        stub = storage_pb2_grpc.StorageStub(channel)
        return await collect(
            stub.ScanState(storage_pb2.ScanStateRequest(prefix=prefix, **kw)),  # type: ignore[arg-type]
            timeout=60,
        )
    finally:
        await channel.close()


async def test_scan_of_many_one_mib_records_fits_the_client_channel(running: Running) -> None:
    # 24 records of ~1 MiB under one prefix, as batch/<digest> records of pending
    # batches are; their sizes straddle the page bound (a little under and a little over).
    sizes = [MIB - 4096 + (i % 3) * 4096 for i in range(24)]
    records = [(b"batch/%064x" % i, os.urandom(size)) for i, size in enumerate(sizes)]
    for key, value in records:  # one WriteState each: one request of 24 MiB would be refused
        await running.stub.WriteState(
            storage_pb2.WriteStateRequest(puts=[Entry(key=key, value=value)])
        )
    # neighbours outside the prefix are not returned
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(
            puts=[Entry(key=b"batch.", value=b"x"), Entry(key=b"batcg/", value=b"y")]
        )
    )

    pages = await _scan_pages(running, b"batch/")
    got = [(e.key, e.value) for page in pages for e in page.entries]
    assert [k for k, _ in got] == [k for k, _ in records]
    assert got == records
    for page in pages:
        assert page.entries
        assert page.ByteSize() < CLIENT_LIMIT
        # about 1 MiB: several entries only while they stay within the bound
        if len(page.entries) > 1:
            assert _size(list(page.entries)) <= STATE_PAGE_BYTES

    # resumption with `after` from the last key of any page gives the rest, the same way
    for page in pages[:-1]:
        after = page.entries[-1].key
        rest = await _scan_pages(running, b"batch/", after=after)
        expected = [r for r in records if r[0] > after]
        assert [(e.key, e.value) for p in rest for e in p.entries] == expected


async def test_small_records_still_page_by_256_and_large_ones_go_alone(running: Running) -> None:
    small = [(b"s/%05d" % i, b"v" * 10) for i in range(600)]
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(puts=[Entry(key=k, value=v) for k, v in small])
    )
    pages = await _scan_pages(running, b"s/")
    assert [len(p.entries) for p in pages] == [256, 256, 88]
    assert [(e.key, e.value) for p in pages for e in p.entries] == small

    # a record larger than the page bound is readable, alone in its page (not after
    # small ones); one just below the bound does not join a page it would take past
    # the bound, and takes a small one that still fits
    mixed = [
        (b"m/0", b"a" * 1000),
        (b"m/1", os.urandom(3 * MIB)),
        (b"m/2", b"b" * 1000),
        (b"m/3", os.urandom(STATE_PAGE_BYTES - 100)),
        (b"m/4", b"c" * 50),
    ]
    for key, value in mixed:
        await running.stub.WriteState(
            storage_pb2.WriteStateRequest(puts=[Entry(key=key, value=value)])
        )
    pages = await _scan_pages(running, b"m/")
    assert [[e.key for e in p.entries] for p in pages] == [
        [b"m/0"],
        [b"m/1"],
        [b"m/2"],
        [b"m/3", b"m/4"],
    ]
    assert [(e.key, e.value) for p in pages for e in p.entries] == mixed
    # the limit still counts entries across pages
    limited = await _scan_pages(running, b"m/", limit=3)
    assert [e.key for p in limited for e in p.entries] == [b"m/0", b"m/1", b"m/2"]


async def test_finalized_batches_of_megabytes_stream_over_the_client_channel(
    running: Running,
) -> None:
    # GetFinalized sends one batch per message (as do the vertex streams, one vertex
    # per message): many large batches never add up in one message.
    dag = Dag(payload_size=60_000)
    requests = [dag.next_batch(40) for _ in range(12)]  # ~2.6 MiB per batch, 31 MiB in all
    for request in requests:
        await running.stub.CommitBatch(request)
    channel = service_channel(f"127.0.0.1:{running.service.port}")
    try:
        stub = storage_pb2_grpc.StorageStub(channel)
        entries = await collect(stub.GetFinalized(storage_pb2.GetFinalizedRequest()), timeout=60)
    finally:
        await channel.close()
    assert [e.batch.seq for e in entries] == list(range(1, 13))
    for entry, request in zip(entries, requests, strict=True):
        assert entry.batch == request.batch
        assert 2 * MIB < entry.ByteSize() < CLIENT_LIMIT
