"""Batched ingress: ``POST /v1/vertices:batch``, gRPC ``SubmitVertices``, the coalescing of
submissions into few consensus calls, and ``?wait=true`` answers built from the finalized
batch (no storage read per vertex).

Real gateway and storage over real HTTP and gRPC; the stand-in consensus of support.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY

from cretoai.config import NodeConfig
from cretoai.telemetry import format_traceparent
from cretoai.v1 import gateway_pb2, storage_pb2, storage_pb2_grpc, vertex_pb2
from cretoai.vertex import vertex_hash
from services.gateway.codec import Draft
from services.gateway.core import MAX_BATCH_VERTICES
from tests.gateway.support import (
    FINALIZED,
    PENDING,
    TIMEOUT,
    Node,
    client_key,
    hold_both_calls,
    patient,
    queue_behind_the_calls,
    signed_body,
    start_node,
)

BATCH = "/v1/vertices:batch"
KEY = client_key()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def signed(payload: bytes, parents: list[bytes] | None = None) -> tuple[dict[str, Any], bytes]:
    """A client-signed submission body and its vertex's hash."""
    body, vertex = signed_body(KEY, payload, parents or [])
    return body, vertex_hash(vertex)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def submit_calls() -> float:
    return sample("cretoai_gateway_consensus_submit_calls_total", {"rpc": "SubmitVertices"})


def storage_calls(method: str) -> float:
    labels = {"service": "storage", "method": f"/cretoai.v1.Storage/{method}", "code": "OK"}
    return sample("cretoai_grpc_server_handled_total", labels)


def assert_error(status: int, body: Any, expected_status: int, code: str, needle: str) -> None:
    assert (status, body["error"]["code"]) == (expected_status, code), body
    assert needle in body["error"]["message"], body


async def post_raw(node: Node, path: str, data: bytes) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with node.http.post(
        node.url + path,
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
    ) as resp:
        return resp.status, await resp.json(), resp


async def said_overloaded(node: Node) -> None:
    """Consensus answers one submission overloaded (the gateway is impatient for a while
    after); the hold that follows is ended here rather than slept through, and the
    probe after it is admitted."""
    fake = node.consensus
    fake.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"said overloaded")})
    assert status == 429
    fake.submit_error = None
    node.gateway.gateway._shed_until = 0.0
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"probe admitted")})
    assert status == 202


# ---------------------------------------------------------------------------- REST


async def test_a_batch_goes_to_consensus_in_one_call_and_is_answered_in_order(
    node: Node,
) -> None:
    root, root_hash = signed(b"root")
    child, child_hash = signed(b"child", [root_hash])  # its parent is earlier in the batch
    unsigned = {"payload": b64(b"signed by the node"), "parents": [root_hash.hex()]}
    calls = submit_calls()
    status, reply = await node.post(BATCH, {"vertices": [root, child, unsigned]})
    assert status == 200, reply
    results = reply["results"]
    assert [r["hash"] for r in results[:2]] == [root_hash.hex(), child_hash.hex()]
    assert all(r["status"] == "pending" and r["duplicate"] is False for r in results), results
    assert node.consensus.submit_calls == [3] and submit_calls() == calls + 1
    assert [vertex_hash(v).hex() for v in node.consensus.submissions] == [
        r["hash"] for r in results
    ]
    # again: each is a duplicate now
    status, reply = await node.post(BATCH, {"vertices": [root, child]})
    assert status == 200 and [r["duplicate"] for r in reply["results"]] == [True, True], reply


async def test_a_bad_signature_and_an_unknown_parent_fail_only_their_own_vertex(
    node: Node,
) -> None:
    good, good_hash = signed(b"good")
    forged, _ = signed(b"forged")
    forged["signature"] = ("00" if forged["signature"][:2] != "00" else "01") + forged["signature"][
        2:
    ]
    orphan, orphan_hash = signed(b"orphan", [os.urandom(32)])
    big = {"payload": b64(bytes(node.cfg.gateway.max_payload_bytes + 1))}
    last, last_hash = signed(b"last", [good_hash])
    status, reply = await node.post(BATCH, {"vertices": [good, forged, orphan, big, last]})
    assert status == 200, reply
    ok, bad_signature, unknown_parent, too_large, ok_too = reply["results"]
    assert ok == {"hash": good_hash.hex(), "status": "pending", "duplicate": False}
    assert bad_signature["error"]["code"] == "bad_signature" and bad_signature["hash"]
    assert unknown_parent["error"]["code"] == "unknown_parent", unknown_parent
    assert unknown_parent["hash"] == orphan_hash.hex()
    assert "neither finalized nor pending" in unknown_parent["error"]["message"]
    assert too_large == {"hash": None, "error": too_large["error"]}
    assert too_large["error"]["code"] == "payload_too_large"
    assert ok_too["hash"] == last_hash.hex() and ok_too["status"] == "pending"
    assert set(node.consensus.pending) == {good_hash, last_hash}


async def test_batch_wait_answers_each_record_once_final(node: Node) -> None:
    first, first_hash = signed(b"first")
    second, second_hash = signed(b"second", [first_hash])
    forged, _ = signed(b"forged")
    forged["signature"] = "00" * (len(forged["signature"]) // 2)
    waiting = asyncio.create_task(
        node.post(BATCH + "?wait=true", {"vertices": [first, second, forged]})
    )
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 2)
    assert not waiting.done()
    batch = await node.consensus.finalize_pending()
    status, reply = await asyncio.wait_for(waiting, TIMEOUT)
    assert status == 200, reply
    one, two, refused = reply["results"]
    assert refused["error"]["code"] == "bad_signature"
    for record, h, height in ((one, first_hash, 0), (two, second_hash, 1)):
        assert record["hash"] == h.hex() and record["status"] == "finalized"
        assert (record["seq"], record["height"]) == (batch.seq, height)
        assert record["certificate"]["batch_digest"] == batch.batch_digest.hex()
        assert (await node.get(f"/v1/vertices/{h.hex()}")) == (200, record)


async def test_malformed_and_hostile_batches_are_refused_whole(node: Node) -> None:
    one, _ = signed(b"one")
    cases: list[tuple[Any, int, str, str]] = [
        ([one], 400, "bad_request", 'must be a JSON object {"vertices": [...]}'),
        ({"vertices": one}, 400, "bad_request", "vertices: expected an array, got an object"),
        ({}, 400, "bad_request", "vertices: missing"),
        ({"vertices": [], "wait": True}, 400, "bad_request", "unknown field 'wait'"),
        ({"vertices": []}, 400, "bad_request", "vertices: empty"),
        (
            {"vertices": [{}] * (MAX_BATCH_VERTICES + 1)},
            400,
            "bad_request",
            f"at most {MAX_BATCH_VERTICES} per batch",
        ),
        ({"vertices": [one, 7]}, 400, "bad_request", "vertices[1]: expected an object"),
        (
            {"vertices": [one, {"payload": "not base64!"}]},
            400,
            "bad_base64",
            "vertices[1]: payload",
        ),
        ({"vertices": [one, one]}, 400, "bad_request", "vertices[1] is the same vertex as"),
        (
            {"vertices": [{"payload": b64(b"x")}, {"payload": b64(b"x"), "parents": []}]},
            400,
            "bad_request",
            "vertices[1] is the same vertex as vertices[0]",
        ),
    ]
    # One content signed twice (ML-DSA-87 signing is randomized: two signatures) is the
    # same vertex; the same payload at another timestamp is not.
    copy_1, _ = signed_body(KEY, b"twice", timestamp_ms=1_767_225_600_000)
    copy_2, _ = signed_body(KEY, b"twice", timestamp_ms=1_767_225_600_000)
    later, _ = signed_body(KEY, b"twice", timestamp_ms=1_767_225_600_001)
    assert copy_1["signature"] != copy_2["signature"]
    cases.append(
        (
            {"vertices": [later, copy_1, copy_2]},
            400,
            "bad_request",
            "vertices[2] is the same vertex as vertices[1]",
        )
    )
    for body, status_code, code, needle in cases:
        status, reply = await node.post(BATCH, body)
        assert_error(status, reply, status_code, code, needle)
    status, reply, _ = await post_raw(node, BATCH, b'{"vertices": [')
    assert_error(status, reply, 400, "malformed_json", "not valid JSON")
    # a huge count of tiny entries is refused by its size before it is parsed
    limit = node.gateway.rest.max_batch_body
    status, reply, _ = await post_raw(
        node, BATCH, b'{"vertices": [' + b"{}," * (limit // 3) + b"{}]}"
    )
    assert_error(status, reply, 413, "body_too_large", f"exceeds {limit} bytes")
    assert node.consensus.submit_calls == []  # none of them reached consensus


async def test_an_overloaded_node_refuses_the_whole_batch_with_retry_after(node: Node) -> None:
    node.consensus.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    one, _ = signed(b"one")
    two, _ = signed(b"two")
    status, reply, resp = await post_raw(
        node,
        BATCH,
        json.dumps({"vertices": [one, two]}).encode(),
    )
    assert_error(status, reply, 429, "overloaded", "consensus is overloaded")
    assert resp.headers["Retry-After"] == "1"
    # and the single submission's 429 (shed for a moment, or refused again) says when to
    # retry too
    status, reply, resp = await post_raw(node, "/v1/vertices", b'{"payload": ""}')
    assert_error(status, reply, 429, "overloaded", "")
    assert resp.headers["Retry-After"] == "1"


# ---------------------------------------------------------------------------- gRPC


async def test_grpc_submit_vertices_answers_each_vertex(node: Node) -> None:
    _, root = signed_body(KEY, b"grpc root")
    _, child = signed_body(KEY, b"grpc child", [vertex_hash(root)])
    forged = vertex_pb2.Vertex()
    forged.CopyFrom(child)
    forged.payload = b"tampered"
    unsigned = vertex_pb2.Vertex(payload=b"node-signed")
    call = node.stub.SubmitVertices(
        gateway_pb2.GatewaySubmitBatchRequest(vertices=[root, child, forged, unsigned], wait=True),
        timeout=TIMEOUT,
    )
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 3)
    batch = await node.consensus.finalize_pending()
    reply = await call
    ok_root, ok_child, refused, ok_unsigned = reply.results
    assert refused.error.code == "bad_signature" and refused.hash == vertex_hash(forged)
    assert refused.error.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.status == vertex_pb2.VERTEX_STATUS_UNSPECIFIED
    async with grpc.aio.insecure_channel(node.cfg.storage.listen) as channel:
        storage = storage_pb2_grpc.StorageStub(channel)
        for result, v in ((ok_root, root), (ok_child, child)):
            assert result.hash == vertex_hash(v) and result.status == FINALIZED
            assert not result.HasField("error") and result.record.seq == batch.seq
            stored = await storage.GetVertex(storage_pb2.GetVertexRequest(hash=result.hash))
            # the answer built from the finalized batch is the stored record, byte for byte
            assert result.record.SerializeToString() == stored.record.SerializeToString()
    assert ok_unsigned.record.vertex.payload == b"node-signed"

    for vertices, needle in (([], "vertices: empty"), ([root] * 257, "at most 256")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await node.stub.SubmitVertices(
                gateway_pb2.GatewaySubmitBatchRequest(vertices=vertices), timeout=TIMEOUT
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (raised.value.details() or "")


# ---------------------------------------------------------------------------- coalescing


async def test_concurrent_submissions_share_one_call_to_consensus(node: Node) -> None:
    """Submissions that reach the gateway in one turn of its event loop are one call."""
    drafts = []
    for i in range(20):
        _, v = signed_body(KEY, b"concurrent %d" % i)
        drafts.append(
            Draft(
                payload=v.payload,
                parents=[],
                creator=v.creator,
                signature=v.signature,
                timestamp_ms=v.timestamp_ms,
                signed=True,
            )
        )
    gateway = node.gateway.gateway
    calls = submit_calls()
    per_call = sample("cretoai_gateway_consensus_submit_call_vertices_sum")
    results = await asyncio.gather(*(gateway.submit(d, wait=False, api="grpc") for d in drafts))
    assert all(r.status == PENDING for r in results)
    assert node.consensus.submit_calls == [20]
    assert submit_calls() - calls == 1
    assert sample("cretoai_gateway_consensus_submit_call_vertices_sum") - per_call == 20


async def test_submissions_arriving_while_calls_are_in_flight_go_out_together(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most two calls in flight: the HTTP submissions arriving meanwhile wait and then
    share the next call(s)."""
    fake = node.consensus
    patient(node, monkeypatch)
    fake.hold = asyncio.Event()
    coalescer = node.gateway.gateway._coalescer
    queued = asyncio.Event()
    schedule = coalescer._schedule

    def schedule_and_tell() -> None:  # called once a submission is queued
        schedule()
        if sum(len(group.vertices) for group in coalescer._queue) == 10:
            queued.set()

    monkeypatch.setattr(coalescer, "_schedule", schedule_and_tell)
    first = []
    for i in range(2):  # one after the other: two calls, both in flight (held)
        first.append(
            asyncio.create_task(node.post("/v1/vertices", {"payload": b64(b"first %d" % i)}))
        )
        await fake.wait_for(lambda: len(fake.submit_calls) == len(first))
    later = [
        asyncio.create_task(node.post("/v1/vertices", {"payload": b64(b"later %d" % i)}))
        for i in range(10)
    ]
    await asyncio.wait_for(queued.wait(), TIMEOUT)  # all ten wait in the gateway
    fake.hold.set()
    replies = await asyncio.gather(*first, *later)
    assert [status for status, _ in replies] == [202] * 12, replies
    assert sum(fake.submit_calls) == 12 and len(fake.submit_calls) <= 4, fake.submit_calls


async def test_each_vertex_of_a_shared_call_keeps_its_own_trace(node: Node) -> None:
    contexts = [
        SpanContext(
            int.from_bytes(os.urandom(16)) | 1,
            int.from_bytes(os.urandom(8)) | 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        for _ in range(2)
    ]
    gateway = node.gateway.gateway

    async def submit_in(context: SpanContext, payload: bytes) -> None:
        with trace.use_span(NonRecordingSpan(context)):
            _, v = signed_body(KEY, payload)
            draft = Draft(
                payload=v.payload,
                parents=[],
                creator=v.creator,
                signature=v.signature,
                timestamp_ms=v.timestamp_ms,
                signed=True,
            )
            await gateway.submit(draft, wait=False, api="http")

    await asyncio.gather(submit_in(contexts[0], b"traced a"), submit_in(contexts[1], b"traced b"))
    assert node.consensus.submit_calls == [2]
    assert node.consensus.submit_traceparents == [[format_traceparent(c) for c in contexts]]
    [metadata] = node.consensus.submit_metadata  # the call: the first submitter's trace
    assert metadata["traceparent"].split("-")[1] == f"{contexts[0].trace_id:032x}"


async def test_a_consensus_without_submit_vertices_gets_one_call_per_vertex(
    node: Node,
) -> None:
    node.consensus.batch_unimplemented = True
    one, one_hash = signed(b"one")
    two, two_hash = signed(b"two", [one_hash])
    status, reply = await node.post(BATCH, {"vertices": [one, two]})
    assert status == 200 and all(r["status"] == "pending" for r in reply["results"]), reply
    # the refused SubmitVertices call, then SubmitVertex for each vertex, in order
    assert node.consensus.submit_calls == [2, 1, 1]
    assert set(node.consensus.pending) == {one_hash, two_hash}
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"single")})
    assert status == 202 and node.consensus.submit_calls == [2, 1, 1, 1], reply


# ---------------------------------------------------------------------------- wait


async def test_waiting_callers_are_answered_from_the_notice_without_a_storage_read(
    node: Node,
) -> None:
    """Ten callers waiting for vertices of one batch: the batch's notice (results and the
    signed digest of each copy) and each caller's own copy make every answer, with no
    storage read; each answer is the record storage then returns."""
    bodies = [{"payload": b64(b"waiting %d" % i)} for i in range(10)]
    waiting = [asyncio.create_task(node.post("/v1/vertices?wait=true", b)) for b in bodies]
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 10)
    get_vertex, get_finalized = storage_calls("GetVertex"), storage_calls("GetFinalized")
    batch = await node.consensus.finalize_pending()
    replies = await asyncio.gather(*waiting)
    assert storage_calls("GetVertex") == get_vertex
    assert storage_calls("GetFinalized") == get_finalized
    for status, record in replies:
        assert status == 200 and record["status"] == "finalized" and record["seq"] == batch.seq
        assert (await node.get(f"/v1/vertices/{record['hash']}")) == (200, record)


async def test_wait_reports_a_rejection_from_a_notice_without_copies(node: Node) -> None:
    """A notice read back from storage names no copies: the gateway reads the batch to tell
    whose copy was rejected, and answers the waiter all the same."""
    node.consensus.notice_copies = False
    reads = storage_calls("GetFinalized")
    waiting = asyncio.create_task(node.post("/v1/vertices?wait=true", {"payload": b64(b"r2")}))
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
    [h] = node.consensus.pending
    await node.consensus.finalize_pending(rejected=[h])
    status, record = await asyncio.wait_for(waiting, TIMEOUT)
    assert (status, record["status"], record["hash"]) == (200, "rejected", h.hex())
    assert storage_calls("GetFinalized") == reads + 1


async def test_an_older_consensus_without_notices_is_followed_by_whole_batches(
    node: Node,
) -> None:
    """A consensus that answers WatchFinalizedNotices UNIMPLEMENTED (a rolling upgrade
    that reached the gateway first): the gateway follows WatchFinalized's whole batches,
    and waiting callers are answered, finalized and rejected alike, from storage."""
    fake = node.consensus
    fake.notices_unimplemented = True
    subscribed = len(fake.watch_requests)
    fake.drop_watchers()  # consensus "restarts": the gateway subscribes again
    await fake.wait_for(lambda: len(fake.watch_requests) > subscribed and fake.watchers == 1)
    bodies = [{"payload": b64(b"old %d" % i)} for i in range(3)]
    waiting = [asyncio.create_task(node.post("/v1/vertices?wait=true", b)) for b in bodies]
    await fake.wait_for(lambda: len(fake.pending) == 3)
    rejected = list(fake.pending)[1]
    batch = await fake.finalize_pending(rejected=[rejected])
    replies = await asyncio.gather(*waiting)
    statuses = {record["hash"]: record["status"] for _, record in replies}
    assert statuses == {
        h.hex(): "rejected" if h == rejected else "finalized" for h in fake.executed
    }
    for status, record in replies:
        assert status == 200 and record["seq"] == batch.seq
        assert (await node.get(f"/v1/vertices/{record['hash']}")) == (200, record)


async def test_a_batch_refused_as_a_whole_is_counted_per_vertex(
    make_config: Callable[..., NodeConfig],
) -> None:
    async with start_node(make_config(max_submissions_in_progress=1)) as node:
        labels = {"api": "http", "outcome": "overloaded"}
        before = sample("cretoai_gateway_submissions_total", labels)
        gateway = node.gateway.gateway
        gateway._in_progress = 1  # one submission being validated: a batch of 2 is too many
        try:
            status, reply = await node.post(
                BATCH, {"vertices": [{"payload": b64(b"a")}, {"payload": b64(b"b")}]}
            )
        finally:
            gateway._in_progress = 0
        assert_error(status, reply, 429, "overloaded", "max_submissions_in_progress")
        assert sample("cretoai_gateway_submissions_total", labels) == before + 2


async def test_submissions_beyond_the_pending_bound_are_refused_at_once(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consensus service that does not answer holds at most max_pending vertices here;
    the next submission gets 429 at once (no call, no queueing), and the held ones are
    answered when consensus is."""
    fake = node.consensus
    patient(node, monkeypatch)
    fake.hold = asyncio.Event()
    coalescer = node.gateway.gateway._coalescer
    monkeypatch.setattr(coalescer, "_max_pending", 4)
    shed_before = sample("cretoai_gateway_consensus_submit_shed_total")
    bodies = [signed(b"held %d" % i)[0] for i in range(4)]
    held = asyncio.create_task(node.post(BATCH, {"vertices": bodies}))
    await fake.wait_for(lambda: fake.submit_calls == [4])  # one call, held by consensus
    calls = len(fake.submit_calls)
    status, reply, resp = await post_raw(node, "/v1/vertices", b'{"payload": "b3Zlcg=="}')
    assert_error(status, reply, 429, "overloaded", "4 vertices are waiting for consensus")
    assert resp.headers["Retry-After"] == "1"
    assert len(fake.submit_calls) == calls  # refused without a call
    assert sample("cretoai_gateway_consensus_submit_shed_total") == shed_before + 1
    assert not held.done()
    fake.hold.set()
    status, reply = await held
    assert status == 200 and [r["status"] for r in reply["results"]] == ["pending"] * 4, reply
    assert coalescer._pending == 0


async def test_after_an_overload_one_probe_goes_to_consensus_and_the_rest_get_429_at_once(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consensus said overloaded: for the hold, submissions are refused without reading
    their body; then one submission (the probe) goes to consensus while the others are
    refused at once instead of queueing behind it; once the probe is admitted, the gate
    opens."""
    fake = node.consensus
    gateway = node.gateway.gateway
    patient(node, monkeypatch)
    fake.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"refused")})
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert len(fake.submit_calls) == 1
    # within the hold: refused before the body is read (a malformed one is not a 400)
    status, reply, _ = await post_raw(node, "/v1/vertices", b"not json")
    assert_error(status, reply, 429, "overloaded", "behind its offered load")
    # so is a batch: the whole of it, before its ~1 MB of JSON is parsed
    status, reply, _ = await post_raw(node, BATCH, b'{"vertices": [not json')
    assert_error(status, reply, 429, "overloaded", "behind its offered load")
    # a full-size body too: answered, unread, and the gateway's next answer comes as usual
    status, reply, _ = await post_raw(node, BATCH, b'{"vertices": ["' + b"0" * 1_000_000)
    assert_error(status, reply, 429, "overloaded", "behind its offered load")
    assert len(fake.submit_calls) == 1
    # the hold is over (ended here rather than slept through); consensus recovered
    gateway._shed_until = 0.0
    fake.submit_error = None
    fake.hold = asyncio.Event()
    probe = asyncio.create_task(node.post("/v1/vertices", {"payload": b64(b"probe")}))
    await fake.wait_for(lambda: len(fake.submit_calls) == 2)
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"behind the probe")})
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert len(fake.submit_calls) == 2 and not probe.done()
    fake.hold.set()
    status, _ = await probe
    assert status == 202
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"open again")})
    assert status == 202 and len(fake.submit_calls) == 3


async def test_while_a_call_to_consensus_is_slow_new_submissions_get_429_at_once(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after consensus said overloaded, a call it has not answered for slow_call_s
    means it is behind: the next submission is refused at once (no call, no queueing),
    and once the call is answered submissions go through again."""
    fake = node.consensus
    gateway = node.gateway.gateway
    monkeypatch.setattr(gateway, "_limits", replace(gateway._limits, slow_call_s=0.05))
    await said_overloaded(node)
    fake.hold = asyncio.Event()
    held = asyncio.create_task(node.post("/v1/vertices", {"payload": b64(b"held")}))
    await fake.wait_for(lambda: len(fake.submit_calls) == 3)
    coalescer = gateway._coalescer
    await asyncio.sleep(0.06)  # the threshold is time itself: let it pass
    assert coalescer.oldest_call_age() > 0.05
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"behind a slow call")})
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert "has not answered a submission for" in reply["error"]["message"]
    assert len(fake.submit_calls) == 3 and not held.done()
    fake.hold.set()
    assert (await held)[0] == 202
    assert coalescer.oldest_call_age() == 0.0
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"answered again")})
    assert status == 202 and len(fake.submit_calls) == 4


async def test_a_submission_queued_behind_calls_that_do_not_end_is_refused_in_time(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after consensus said overloaded, with both calls in flight and held: a
    submission queued behind them gets 429 once it waited max_queue_wait_s, without a
    call; the held ones are still answered."""
    fake = node.consensus
    patient(node, monkeypatch)
    coalescer = node.gateway.gateway._coalescer
    monkeypatch.setattr(coalescer, "_max_queue_wait_s", 0.05)
    await said_overloaded(node)
    held, hold = await hold_both_calls(node)
    shed_before = sample("cretoai_gateway_consensus_submit_shed_total")
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"queued")})
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert "waited 50 ms at this node for a call to consensus" in reply["error"]["message"]
    assert len(fake.submit_calls) == 4 and not any(task.done() for task in held)
    assert sample("cretoai_gateway_consensus_submit_shed_total") == shed_before + 1
    hold.set()
    assert [status for status, _ in await asyncio.gather(*held)] == [202, 202]
    assert len(fake.submit_calls) == 4  # the refused one was never sent


async def test_what_is_queued_when_consensus_says_overloaded_is_refused_at_once(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both calls in flight, a submission queued behind them: the calls come back
    overloaded, and the queued one is refused then, without a call of its own (it would
    only reach consensus to be refused there, later)."""
    fake = node.consensus
    patient(node, monkeypatch)
    coalescer = node.gateway.gateway._coalescer
    held, hold = await hold_both_calls(node)
    queued = await queue_behind_the_calls(node, monkeypatch, b"queued")
    shed_before = sample("cretoai_gateway_consensus_submit_shed_total")
    fake.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    hold.set()
    for status, reply in await asyncio.gather(*held):
        assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    status, reply = await queued
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert "behind its offered load" in reply["error"]["message"], reply
    assert len(fake.submit_calls) == 2  # never sent
    assert sample("cretoai_gateway_consensus_submit_shed_total") == shed_before + 1
    assert not coalescer._queue and coalescer._pending == 0


async def test_a_slow_call_without_an_overload_is_waited_for(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consensus has not said overloaded: a slow call is a load spike. A submission
    arriving meanwhile is not refused, and one queued behind held calls waits past
    max_queue_wait_s for its call."""
    fake = node.consensus
    gateway = node.gateway.gateway
    monkeypatch.setattr(gateway, "_limits", replace(gateway._limits, slow_call_s=0.02))
    monkeypatch.setattr(gateway._coalescer, "_max_queue_wait_s", 0.02)
    held, hold = await hold_both_calls(node)
    queued = asyncio.create_task(node.post("/v1/vertices", {"payload": b64(b"queued")}))
    await asyncio.sleep(0.1)  # five times both thresholds: time itself is the condition
    assert gateway._coalescer.oldest_call_age() > 0.02 and not queued.done()
    hold.set()
    replies = await asyncio.gather(*held, queued)
    assert [status for status, _ in replies] == [202] * 3, replies
    assert len(fake.submit_calls) == 3


async def test_one_client_cannot_take_every_submission_slot(
    make_config: Callable[..., NodeConfig],
) -> None:
    """One client sending batches of node-signed vertices back to back (whose parents
    consensus then refused) held every validation slot for a second each time, and
    other clients got 429 (audit, 2026-12-04). A request validates a quarter of the
    slots at a time, and one client holds at most a quarter while another request of
    its is in progress; other addresses still get in."""
    async with start_node(make_config(max_submissions_in_progress=8)) as node:
        core = node.gateway.gateway
        gate = asyncio.Event()
        original = core._vertex_of

        async def held_back(draft: Draft) -> Any:
            await gate.wait()
            return await original(draft)

        core._vertex_of = held_back  # type: ignore[method-assign]
        batch = {"vertices": [{"payload": b64(b"heavy %d" % i)} for i in range(8)]}
        heavy = asyncio.create_task(node.post_from("127.0.0.2", "/v1/vertices:batch", batch))
        for _ in range(200):  # until its first chunk is being validated (yields only)
            if core._in_progress:
                break
            await asyncio.sleep(0)
        assert core._in_progress == 2  # a quarter of 8, not all 8
        again = await node.post_from("127.0.0.2", "/v1/vertices", {"payload": b64(b"more")})
        assert again[0] == 429 and "this client has 2" in again[1]["error"]["message"]
        other = asyncio.create_task(
            node.post_from("127.0.0.3", "/v1/vertices", {"payload": b64(b"light")})
        )
        for _ in range(200):
            if core._in_progress == 3:
                break
            await asyncio.sleep(0)
        assert core._in_progress == 3  # the other client got in
        gate.set()
        status, reply = await asyncio.wait_for(heavy, TIMEOUT)
        assert status == 200 and [r["status"] for r in reply["results"]] == ["pending"] * 8
        assert (await asyncio.wait_for(other, TIMEOUT))[0] == 202
        assert core._in_progress == 0 and core._in_progress_by == {}
