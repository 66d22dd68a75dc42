"""Consensus durable state and Byzantine evidence over real gRPC."""

from __future__ import annotations

import grpc

from cretoai.v1 import pbft_pb2, storage_pb2, vertex_pb2
from tests.storage.support import RawDb, Running, collect
from tests.storage.test_commit import expect

Entry = storage_pb2.StateEntry


async def state(running: Running, *keys: bytes) -> list[bytes | None]:
    """Each key's value (None: absent), as consensus reads them: by ScanState."""
    values: list[bytes | None] = []
    for key in keys:
        found = await scan(running, key, limit=1)
        values.append(found[0][1] if found and found[0][0] == key else None)
    return values


async def scan(running: Running, prefix: bytes = b"", **kw: object) -> list[tuple[bytes, bytes]]:
    pages = await collect(
        running.stub.ScanState(storage_pb2.ScanStateRequest(prefix=prefix, **kw))  # type: ignore[arg-type]
    )
    return [(e.key, e.value) for page in pages for e in page.entries]


async def test_puts_gets_and_deletes(running: Running) -> None:
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(
            puts=[Entry(key=b"view", value=b"3"), Entry(key=b"signed/1", value=b"pp")]
        )
    )
    assert await state(running, b"view", b"signed/1", b"absent") == [b"3", b"pp", None]
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(deletes=[b"view"], puts=[Entry(key=b"v2", value=b"")])
    )
    assert await state(running, b"view", b"v2") == [None, b""]


async def test_one_request_is_applied_as_deletes_then_puts(running: Running) -> None:
    puts = [Entry(key=b"log/%08d" % i, value=b"old") for i in range(10)]
    await running.stub.WriteState(storage_pb2.WriteStateRequest(puts=puts))
    # replace everything under a prefix in one atomic write
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(
            delete_prefixes=[b"log/"],
            puts=[Entry(key=b"log/%08d" % 5, value=b"new")],
        )
    )
    assert await scan(running, b"log/") == [(b"log/%08d" % 5, b"new")]


async def test_range_and_prefix_deletes(running: Running) -> None:
    keys = [b"a", b"b/1", b"b/2", b"b/3", b"c", b"\xff\xff", b"\xff\xff\x01"]
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(puts=[Entry(key=k, value=k) for k in keys])
    )
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(delete_ranges=[storage_pb2.KeyRange(start=b"b/2", end=b"c")])
    )
    assert [k for k, _ in await scan(running)] == [b"a", b"b/1", b"c", b"\xff\xff", b"\xff\xff\x01"]
    # a prefix of 0xff bytes has no successor key: the delete still covers it
    await running.stub.WriteState(storage_pb2.WriteStateRequest(delete_prefixes=[b"\xff"]))
    assert [k for k, _ in await scan(running)] == [b"a", b"b/1", b"c"]
    # a range without an end runs to the end of the key space
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(delete_ranges=[storage_pb2.KeyRange(start=b"b")])
    )
    assert [k for k, _ in await scan(running)] == [b"a"]


async def test_scan_pages_prefixes_and_limits(running: Running) -> None:
    entries = [Entry(key=b"p/%05d" % i, value=b"x" * 100) for i in range(700)]
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(
            puts=[*entries, Entry(key=b"q", value=b"1"), Entry(key=b"o", value=b"0")]
        )
    )
    pages = await collect(running.stub.ScanState(storage_pb2.ScanStateRequest(prefix=b"p/")))
    assert [len(p.entries) for p in pages] == [256, 256, 188]
    assert [e.key for p in pages for e in p.entries] == [e.key for e in entries]
    assert [k for k, _ in await scan(running, b"p/", limit=3)] == [
        b"p/00000",
        b"p/00001",
        b"p/00002",
    ]
    resumed = await scan(running, b"p/", after=b"p/00697")
    assert [k for k, _ in resumed] == [b"p/00698", b"p/00699"]
    assert len(await scan(running)) == 702


async def test_malformed_state_requests(running: Running) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(invalid, running.stub.WriteState(storage_pb2.WriteStateRequest()), "empty write")
    await expect(
        invalid,
        running.stub.WriteState(storage_pb2.WriteStateRequest(puts=[Entry(key=b"", value=b"1")])),
        "puts[0].key: empty key",
    )
    await expect(
        invalid,
        running.stub.WriteState(
            storage_pb2.WriteStateRequest(puts=[Entry(key=b"k" * 1025, value=b"1")])
        ),
        "1025 bytes; the limit is 1024",
    )
    await expect(
        invalid,
        running.stub.WriteState(
            storage_pb2.WriteStateRequest(
                delete_ranges=[storage_pb2.KeyRange(start=b"b", end=b"a")]
            )
        ),
        "end must be greater than start",
    )
    await expect(
        invalid,
        running.stub.WriteState(storage_pb2.WriteStateRequest(deletes=[b"k"] * 10_001)),
        "the limit is 10000",
    )
    await expect(
        invalid,
        collect(running.stub.ScanState(storage_pb2.ScanStateRequest(prefix=b"p" * 2000))),
        "prefix: 2000 bytes",
    )


def signed(body: bytes, signer: int = 2) -> vertex_pb2.SignedMessage:
    return vertex_pb2.SignedMessage(body=body, signature=b"sig-" + body, signer=signer)


def evidence(a: bytes, b: bytes, signer: int = 2) -> pbft_pb2.Evidence:
    return pbft_pb2.Evidence(first=signed(a, signer), second=signed(b, signer))


def stored_evidence(running: Running) -> list[storage_pb2.EvidenceRecord]:
    """The evidence records in the database, in id order (read once the service stopped)."""
    with RawDb(running.cfg.storage_path, read_only=True) as db:
        return [
            storage_pb2.EvidenceRecord.FromString(value)
            for key, value in db.items("evidence")
            if key.startswith(b"e")
        ]


async def test_evidence_is_recorded_once_in_order(running: Running) -> None:
    first = await running.stub.AppendEvidence(
        storage_pb2.AppendEvidenceRequest(
            evidence=evidence(b"prepare v1 s7 d1", b"prepare v1 s7 d2"), kind="equivocation"
        )
    )
    assert (first.id, first.duplicate) == (1, False)
    # the same two messages in the other order are the same evidence
    again = await running.stub.AppendEvidence(
        storage_pb2.AppendEvidenceRequest(
            evidence=evidence(b"prepare v1 s7 d2", b"prepare v1 s7 d1"), kind="equivocation"
        )
    )
    assert (again.id, again.duplicate) == (1, True)
    for i in range(5):
        reply = await running.stub.AppendEvidence(
            storage_pb2.AppendEvidenceRequest(
                evidence=evidence(b"a%d" % i, b"b%d" % i, signer=i), kind="equivocation/commit"
            )
        )
        assert reply.id == i + 2
    stats = await running.stub.GetStats(storage_pb2.GetStatsRequest())
    assert stats.evidence == 6
    await running.stop()
    records = stored_evidence(running)
    assert [r.id for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0].offender == 2 and records[0].kind == "equivocation"
    assert records[0].evidence == evidence(b"prepare v1 s7 d1", b"prepare v1 s7 d2")
    assert records[3].offender == 2 and len(records[3].digest) == 32
    assert records[0].recorded_ms > 0


async def test_malformed_evidence(running: Running) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (storage_pb2.AppendEvidenceRequest(kind="x"), "evidence: missing"),
        (
            storage_pb2.AppendEvidenceRequest(
                evidence=pbft_pb2.Evidence(first=signed(b"a")), kind="x"
            ),
            "evidence.second: missing",
        ),
        (
            storage_pb2.AppendEvidenceRequest(
                evidence=pbft_pb2.Evidence(first=signed(b"a", 1), second=signed(b"b", 2)), kind="x"
            ),
            "signed by 1 and 2",
        ),
        (
            storage_pb2.AppendEvidenceRequest(evidence=evidence(b"a", b"a"), kind="x"),
            "same body",
        ),
        (
            storage_pb2.AppendEvidenceRequest(
                evidence=pbft_pb2.Evidence(
                    first=vertex_pb2.SignedMessage(body=b"a"), second=signed(b"b")
                ),
                kind="x",
            ),
            "body and signature are required",
        ),
        (storage_pb2.AppendEvidenceRequest(evidence=evidence(b"a", b"b")), "kind: missing"),
        (
            storage_pb2.AppendEvidenceRequest(evidence=evidence(b"a", b"b"), kind="k" * 129),
            "kind: longer than 128",
        ),
    ]
    for request, needle in cases:
        await expect(invalid, running.stub.AppendEvidence(request), needle)
    stats = await running.stub.GetStats(storage_pb2.GetStatsRequest())
    assert stats.evidence == 0
    await running.stop()
    assert stored_evidence(running) == []
