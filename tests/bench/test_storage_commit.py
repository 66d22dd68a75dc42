"""bench.storage_commit without the service: the raw floor writes exactly what the store
writes, and the comparison of the service with it."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from rocksdict import AccessType, Rdict

from bench.storage_commit import (
    COMMIT_METHOD,
    TARGET_OVER_RAW_P99,
    Batches,
    FloorProcess,
    RawDatabase,
    batches_for,
    commit_method,
    compare_phase,
    floor_phase,
    histogram_delta,
    raw_phase,
    sizes,
)
from services.storage import keys
from services.storage.options import open_options
from services.storage.store import Store


def contents(path: Path) -> dict[str, dict[bytes, bytes]]:
    """Every key and value of every column family of the database at ``path``."""
    options, families = open_options(Rdict.list_cf(str(path)), create=False)
    db = Rdict(
        str(path),
        options,
        column_families=families,
        access_type=AccessType.read_only(error_if_log_file_exist=False),
    )
    try:
        sources = {name: db.get_column_family(name) for name in keys.COLUMN_FAMILIES}
        sources["default"] = db
        # raw mode: every key and value is bytes
        return {
            name: {cast(bytes, k): cast(bytes, v) for k, v in source.items()}
            for name, source in sources.items()
        }
    finally:
        db.close()


@pytest.mark.parametrize("vertices", [1, 5])
def test_the_raw_floor_writes_what_the_store_writes(tmp_path: Path, vertices: int) -> None:
    batches = Batches(vertices, 64)
    requests = [batches.next() for _ in range(4)]
    store = Store.open(tmp_path / "store")
    try:
        for request in requests:
            store.commit_batch(request)
            store.sync()
    finally:
        store.close()
    raw = RawDatabase(tmp_path / "raw")
    try:
        for request in requests:
            write, sync = raw.commit(raw.write_batch(request))
            assert write >= 0 and sync >= 0
    finally:
        raw.close()
    stored, written = contents(tmp_path / "store"), contents(tmp_path / "raw")
    assert written == stored
    # the DAG grows: the last batch's vertices sit above the first's, each with its edges
    assert len(stored[keys.VERTICES]) == 4 * vertices
    assert len(stored[keys.EDGES]) == sum(
        len(v.parents) for r in requests for v in r.batch.vertices
    )
    assert len(stored[keys.FINALIZED]) == 4
    # the requests are left as they were sent (the creator is cleared only while encoding)
    assert all(v.creator == batches.creator for r in requests for v in r.batch.vertices)


def test_a_raw_phase_is_closed_loop_or_paced(tmp_path: Path) -> None:
    batches = Batches(2, 64)
    requests = [batches.next() for _ in range(6)]
    raw = RawDatabase(tmp_path / "raw")
    try:
        closed = raw_phase("closed_loop", raw, requests[:3], 0.0, time.monotonic() + 60)
        started = time.perf_counter()
        paced = raw_phase("paced", raw, requests[3:], 50.0, time.monotonic() + 60)
        assert time.perf_counter() - started >= 2 / 50  # the third is due 40 ms after the first
    finally:
        raw.close()
    assert closed["batches"] == paced["batches"] == 3
    assert closed["rate_target_per_s"] is None and paced["rate_target_per_s"] == 50.0
    for figures in (closed, paced):
        latency = figures["commit_latency_ms"]
        assert latency["count"] == 3 and 0 < latency["p50"] <= latency["p99_9"]
        assert latency["mean"] == pytest.approx(
            figures["write_ms"]["mean"] + figures["wal_sync_ms"]["mean"], abs=0.002
        )


def latency(p50: float, p99: float, p99_9: float, mean: float) -> dict[str, float]:
    return {"count": 300, "p50": p50, "p99": p99, "p99_9": p99_9, "mean": mean}


def service_phase(p99: float) -> dict[str, Any]:
    return {
        "phase": "closed_loop",
        "commit_latency_ms": latency(10.0, p99, 40.0, 12.0),
        "service_commit_latency": {"count": 300, "mean_ms": 9.0},
        "service_proof_check": {"count": 300, "mean_ms": 4.0},
        "service_writer_wait": {"count": 300, "mean_ms": 0.1},
        "service_apply": {"count": 300, "mean_ms": 3.0},
        "service_wal_sync": {"count": 300, "mean_ms": 1.5},
    }


def raw_result() -> dict[str, Any]:
    return {
        "phase": "closed_loop",
        "commit_latency_ms": latency(2.0, 10.0, 20.0, 2.5),
        "write_ms": {"mean": 1.2},
        "wal_sync_ms": {"mean": 1.3},
    }


def test_the_service_is_compared_with_the_raw_floor() -> None:
    slow = compare_phase(service_phase(30.0), raw_result())
    assert slow["service_over_raw"] == {"p50": 5.0, "p99": 3.0, "p99_9": 2.0}
    assert slow["meets_raw_floor_target"] is False
    gap = slow["gap_mean_ms"]
    assert gap["grpc_and_client"] == 3.0  # 12 ms seen by the client, 9 in the service
    assert gap["service_other"] == pytest.approx(0.4)  # 9 - (4 + 0.1 + 3 + 1.5)
    assert gap["raw_write"] == 1.2 and gap["raw_wal_sync"] == 1.3 and gap["raw_total"] == 2.5
    close = compare_phase(service_phase(10.0 * TARGET_OVER_RAW_P99), raw_result())
    assert close["service_over_raw"]["p99"] == TARGET_OVER_RAW_P99
    assert close["meets_raw_floor_target"] is True


def test_a_service_without_its_histograms_leaves_the_parts_unknown() -> None:
    service = service_phase(30.0)
    service["service_commit_latency"] = {"count": 0}
    service["service_apply"] = {"count": 0}
    gap = compare_phase(service, raw_result())["gap_mean_ms"]
    assert gap["grpc_and_client"] is None and gap["service_other"] is None


def test_batch_sizes_and_default_counts() -> None:
    assert sizes("100,1") == [100, 1]
    with pytest.raises(argparse.ArgumentTypeError):
        sizes("0")
    assert batches_for(100) == 300 and batches_for(1) == 600


def test_the_process_floor_stores_each_request_durably_as_sent(tmp_path: Path) -> None:
    """The process floor's server, a real process over real gRPC: each CommitBatch's bytes
    end up, undecoded, under a key of its own, and the phase times every request."""

    async def go() -> dict[str, Any]:
        least = FloorProcess(tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{await least.port()}") as channel:
                call = commit_method(channel)
                return await floor_phase("paced", call, requests, 100.0, time.monotonic() + 60)
        finally:
            least.stop()

    batches = Batches(3, 64)
    requests = [batches.next() for _ in range(4)]
    figures = asyncio.run(go())
    assert figures["batches"] == 4 and figures["commit_latency_ms"]["count"] == 4
    assert figures["elapsed_s"] >= 3 / 100  # paced: the fourth is due 30 ms after the first
    db = Rdict(str(tmp_path / "floor-db"), access_type=AccessType.read_only())
    try:
        stored = [cast(bytes, db[(i + 1).to_bytes(8, "big")]) for i in range(4)]
    finally:
        db.close()
    assert stored == [r.SerializeToString() for r in requests]


def test_the_checked_floor_stores_a_proven_batch_and_refuses_a_forged_one(
    tmp_path: Path,
) -> None:
    """The checked floor, a real process over real gRPC, trusts no caller as the service:
    a batch whose proof holds is stored as sent; one vertex's payload changed after the
    batch was certified (the certificate then proves another batch) is refused with
    INVALID_ARGUMENT, and so are a certificate with one COMMIT's signature damaged and bytes
    that are no request; none is stored."""
    batches = Batches(3, 64)
    good, forged, unsigned = (batches.next() for _ in range(3))
    forged.batch.vertices[1].payload = b"not what was certified"
    commit = unsigned.batch.certificate.commits[0]
    commit.signature = bytes([commit.signature[0] ^ 1]) + commit.signature[1:]

    async def go() -> list[grpc.StatusCode]:
        checking = FloorProcess(tmp_path, check=True)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{await checking.port()}") as channel:
                call = commit_method(channel)
                raw = channel.unary_unary(COMMIT_METHOD)  # bytes as they are
                sends = [call(forged, timeout=30), call(unsigned, timeout=30)]
                codes = []
                for sent in [*sends, raw(b"\xff" * 9, timeout=30)]:
                    try:
                        await sent
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                await call(good, timeout=30)
                return codes
        finally:
            checking.stop()

    assert asyncio.run(go()) == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    db = Rdict(str(tmp_path / "checked-floor-db"), access_type=AccessType.read_only())
    try:
        stored = [cast(bytes, v) for _, v in db.items()]
    finally:
        db.close()
    assert stored == [good.SerializeToString()]


def test_the_target_is_judged_against_the_process_floor() -> None:
    process = {"phase": "closed_loop", "commit_latency_ms": latency(4.0, 15.0, 25.0, 5.0)}
    below = compare_phase(service_phase(30.0), raw_result(), process)
    assert below["process_floor_over_raw"]["p99"] == 1.5  # 15 ms against the raw 10
    assert below["target_below_process_floor"] is True
    assert below["service_over_process_floor"]["p99"] == 2.0
    process["commit_latency_ms"] = latency(2.0, 11.0, 21.0, 2.6)
    reachable = compare_phase(service_phase(30.0), raw_result(), process)
    assert reachable["target_below_process_floor"] is False
    assert "process_floor" not in compare_phase(service_phase(30.0), raw_result())
    checked = {"phase": "closed_loop", "commit_latency_ms": latency(9.0, 20.0, 30.0, 9.5)}
    both = compare_phase(service_phase(30.0), raw_result(), process, checked)
    assert both["process_floor_over_raw"]["p99"] == 1.1 and not both["target_below_process_floor"]
    assert both["checked_floor_over_raw"]["p99"] == 2.0  # 20 ms against the raw 10
    assert both["target_below_checked_floor"] is True
    assert both["service_over_checked_floor"]["p99"] == 1.5
    assert "checked_floor" not in reachable


def test_a_labelled_histogram_is_read_whatever_the_order_of_its_labels() -> None:
    """prometheus_client writes ``le`` first: a series named with its other labels (op,
    service) must still be found (it was not, and its percentiles read as unknown)."""
    before = {'x_bucket{le="0.001",op="commit"}': 0.0, 'x_count{op="commit"}': 0.0}
    after = {
        'x_bucket{le="0.001",op="commit"}': 1.0,
        'x_bucket{le="0.01",op="commit"}': 3.0,
        'x_bucket{le="0.1",op="commit"}': 4.0,
        'x_bucket{le="+Inf",op="commit"}': 4.0,
        'x_bucket{le="0.01",op="other"}': 9.0,
        'x_count{op="commit"}': 4.0,
        'x_sum{op="commit"}': 0.02,
    }
    figures = histogram_delta(before, after, "x", 'op="commit"')
    assert figures["count"] == 4 and figures["mean_ms"] == 5.0
    assert figures["p50_at_most_ms"] == 10.0 and figures["p99_at_most_ms"] == 100.0
    assert figures["share_over_5ms"] == 0.25  # above the first bound of 5 ms or more
