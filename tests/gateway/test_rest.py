"""The REST API over real HTTP: submission, validation, waiting, reads, status and probes."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import gzip
import json
import logging
import os
import socket
import struct
import termios
import time
import zlib
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from cretoai.config import ConfigError, NodeConfig
from cretoai.crypto import get_backend
from cretoai.vertex import verify_vertex, vertex_hash
from services.gateway import metrics
from services.gateway.errors import CODES
from services.gateway.rest import FIRST_BODY_RESERVATION, PAGE_ANSWER_BYTES
from tests.gateway.support import (
    TIMEOUT,
    Node,
    client_key,
    node_config,
    raw_vertex,
    signed_body,
    start_node,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def submit_pending(node: Node, payload: bytes = b"p") -> bytes:
    status, body = await node.post("/v1/vertices", {"payload": b64(payload)})
    assert status == 202, body
    return bytes.fromhex(body["hash"])


def assert_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert (status, body["error"]["code"]) == (expected_status, code), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert CODES[code][0] == expected_status


# ---------------------------------------------------------------------------- submit


async def test_submit_unsigned_is_signed_by_the_gateways_submitter_key(node: Node) -> None:
    before = int(time.time() * 1000)
    status, body = await node.post("/v1/vertices", {"payload": b64(b"hi")})
    assert status == 202, body
    assert body == {"hash": body["hash"], "status": "pending", "duplicate": False}
    [vertex] = node.consensus.submissions
    assert vertex_hash(vertex).hex() == body["hash"]
    assert vertex.payload == b"hi" and list(vertex.parents) == []
    assert vertex.creator == node.submitter_key.public_key
    assert vertex.creator not in node.cfg.validator_public_keys  # never a validator key
    assert before <= vertex.timestamp_ms <= int(time.time() * 1000)
    assert verify_vertex(vertex, get_backend("cryptography"))


async def test_submit_client_signed(node: Node) -> None:
    body, vertex = signed_body(client_key(), b"mine", timestamp_ms=1234)
    status, reply = await node.post("/v1/vertices", body)
    assert status == 202, reply
    assert reply["hash"] == vertex_hash(vertex).hex()
    assert node.consensus.submissions == [vertex]  # exactly as signed, not re-signed


async def test_submit_same_vertex_twice_is_a_duplicate(node: Node) -> None:
    body, _ = signed_body(client_key(), b"twice")
    first = await node.post("/v1/vertices", body)
    second = await node.post("/v1/vertices", body)
    assert (first[0], first[1]["duplicate"]) == (202, False)
    assert (second[0], second[1]["duplicate"]) == (202, True)


TAMPERINGS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "payload": lambda b: {**b, "payload": b64(b"other")},
    "timestamp": lambda b: {**b, "timestamp_ms": b["timestamp_ms"] + 1},
    # the first byte flipped (writing "00" was no change for 1 signature in 256)
    "signature": lambda b: {
        **b,
        "signature": f"{int(b['signature'][:2], 16) ^ 0xFF:02x}" + b["signature"][2:],
    },
    "key": lambda b: {**b, "public_key": signed_body(client_key(), b"x")[0]["public_key"]},
}


async def test_tampered_client_signature_is_422(node: Node) -> None:
    body, _ = signed_body(client_key(), b"mine")
    for name, tamper in TAMPERINGS.items():
        status, reply = await node.post("/v1/vertices", tamper(body))
        assert (status, reply["error"]["code"]) == (422, "bad_signature"), name
    assert node.consensus.submissions == []


async def test_wrong_lengths_are_422(node: Node) -> None:
    body, _ = signed_body(client_key(), b"mine")
    for field, value in [
        ("public_key", "ab" * 100),
        ("signature", "ab" * 100),
        ("parents", ["ab" * 31]),
    ]:
        status, reply = await node.post("/v1/vertices", {**body, field: value})
        assert (status, reply["error"]["code"]) == (422, "invalid_vertex"), field


async def test_too_many_or_duplicate_parents_are_422(node: Node) -> None:
    h = await submit_pending(node)
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": [h.hex()] * 2})
    assert_error(status, reply, 422, "invalid_vertex")
    many = [bytes([i]) * 32 for i in range(65)]
    status, reply = await node.post(
        "/v1/vertices", {"payload": "", "parents": [p.hex() for p in many]}
    )
    assert_error(status, reply, 422, "invalid_vertex")


async def test_parents_past_the_limit_are_counted_not_decoded(node: Node) -> None:
    """A vertex with 10,000 parents is refused for their number, which the answer
    names, without decoding each one on the event loop (838,851 of them in one 4-MiB
    request held it for over a second): a malformed parent past the limit is never
    read. In a batch it fails only its own vertex."""
    parents = ["ab" * 32] * 9_999 + ["zz"]
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": parents})
    assert_error(status, reply, 422, "invalid_vertex")
    assert reply["error"]["message"] == "10000 parents; the limit is 64"
    status, reply = await node.post(
        "/v1/vertices:batch",
        {"vertices": [{"payload": "", "parents": parents}, {"payload": b64(b"fine")}]},
    )
    assert status == 200
    first, second = reply["results"]
    assert first["error"]["code"] == "invalid_vertex" and "10000 parents" in str(first)
    assert second["status"] == "pending"


MALFORMED = [
    (b"not json", "malformed_json"),
    (b"{", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b'{"payload": NaN}', "malformed_json"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
    (b"", "malformed_json"),
    # a repeated name: a proxy or log reading the first value would see another vertex
    (b'{"payload": "aGVsbG8=", "payload": "d29ybGQ="}', "malformed_json"),
    (b'{"payload": "", "parents": [], "parents": ["' + b"ab" * 32 + b'"]}', "malformed_json"),
    (b"[]", "bad_request"),
    (b'"payload"', "bad_request"),
    (b"{}", "bad_request"),
    (b'{"payload": 5}', "bad_request"),
    (b'{"payload": null}', "bad_request"),
    (b'{"payload": "", "extra": 1}', "bad_request"),
    (b'{"payload": "!!notbase64"}', "bad_base64"),
    (b'{"payload": "YQ"}', "bad_base64"),
    (b'{"payload": "", "parents": "ab"}', "bad_request"),
    (b'{"payload": "", "parents": [1]}', "bad_request"),
    (b'{"payload": "", "parents": ["zz"]}', "bad_hex"),
    # bytes.fromhex skips whitespace: a field with any is not hex
    (b'{"payload": "", "parents": ["' + b"ab " * 31 + b'ab"]}', "bad_hex"),
    (b'{"payload": "", "parents": ["\\t' + b"ab" * 32 + b'"]}', "bad_hex"),
    (b'{"payload": "", "parents": ["' + "\u0661".encode() * 64 + b'"]}', "bad_hex"),
    (b'{"payload": "", "public_key": "ab"}', "partial_signature"),
    (b'{"payload": "", "public_key": "ab", "signature": "cd"}', "partial_signature"),
    (b'{"payload": "", "timestamp_ms": 5}', "partial_signature"),
    (b'{"payload": "", "public_key": "xy", "signature": "cd", "timestamp_ms": 1}', "bad_hex"),
    (b'{"payload": "", "public_key": 1, "signature": "cd", "timestamp_ms": 1}', "bad_request"),
    (
        b'{"payload": "", "public_key": "ab", "signature": "cd", "timestamp_ms": -1}',
        "bad_request",
    ),
    (
        b'{"payload": "", "public_key": "ab", "signature": "cd", "timestamp_ms": 1.5}',
        "bad_request",
    ),
    (
        b'{"payload": "", "public_key": "ab", "signature": "cd", "timestamp_ms": true}',
        "bad_request",
    ),
    (
        b'{"payload": "", "public_key": "ab", "signature": "cd", "timestamp_ms": 1e999}',
        "bad_request",
    ),
    (
        b'{"payload": "", "public_key": "ab", "signature": "cd", '
        b'"timestamp_ms": 18446744073709551616}',
        "bad_request",
    ),
]


async def test_malformed_bodies_are_400(node: Node) -> None:
    for raw, code in MALFORMED:
        status, reply = await node.post(
            "/v1/vertices", data=raw, headers={"Content-Type": "application/json"}
        )
        assert (status, reply["error"]["code"]) == (400, code), raw[:80]
        assert reply["error"]["message"]
    assert node.consensus.submissions == []


async def test_a_long_unknown_field_is_named_shortened(node: Node) -> None:
    """An unknown field's name is quoted in the error: a 500,000-character one was, whole."""
    name = "x" * 500_000
    status, reply = await node.post("/v1/vertices", {"payload": "", name: 1})
    assert (status, reply["error"]["code"]) == (400, "bad_request")
    assert "(500000 chars)" in reply["error"]["message"]
    assert len(reply["error"]["message"]) < 300
    long = b"y" * 100_000
    raw = b'{"payload": "", "' + long + b'": 1, "' + long + b'": 2}'
    status, reply = await node.post("/v1/vertices", data=raw)
    assert (status, reply["error"]["code"]) == (400, "malformed_json")
    assert "repeated" in reply["error"]["message"]
    assert len(reply["error"]["message"]) < 300


async def test_bad_wait_parameter_is_400(node: Node) -> None:
    status, reply = await node.post("/v1/vertices?wait=maybe", {"payload": ""})
    assert_error(status, reply, 400, "bad_request")
    # a repeated parameter is ambiguous, whichever copy is valid
    status, reply = await node.post("/v1/vertices?wait=false&wait=bogus", {"payload": ""})
    assert_error(status, reply, 400, "bad_request")
    status, reply = await node.get("/v1/finalized?limit=1&limit=2")
    assert_error(status, reply, 400, "bad_request")
    assert node.consensus.submissions == []


async def test_compressed_bodies_are_refused_before_they_are_read(node: Node) -> None:
    """aiohttp inflates a compressed body while the gateway's reservation
    (``gateway.max_request_bytes_in_progress``) counts the bytes on the wire: a 4-KB
    gzip body held up to 4 MiB uncounted. Compressed bodies are refused with 415, and
    one that is not what its Content-Encoding says is no 500 either."""
    raw = json.dumps({"payload": b64(bytes(200_000))}).encode()
    for path, body in (
        ("/v1/vertices", raw),
        ("/v1/vertices:batch", b'{"vertices": [' + raw + b"]}"),
    ):
        for encoding, data in (
            ("gzip", gzip.compress(body)),
            ("deflate", zlib.compress(body)),
            ("gzip", body),  # says gzip, is not
            ("br", body),
        ):
            status, reply = await node.post(
                path,
                data=data,
                headers={"Content-Type": "application/json", "Content-Encoding": encoding},
            )
            assert_error(status, reply, 415, "unsupported_encoding")
    # every header and every coding counts, not only the first
    for headers in (
        [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
        [("Content-Encoding", "identity, gzip")],
    ):
        status, reply = await node.post(
            "/v1/vertices", data=gzip.compress(raw), headers=CIMultiDict(headers)
        )
        assert_error(status, reply, 415, "unsupported_encoding")
    assert node.consensus.submissions == []
    status, _ = await node.post("/v1/vertices", data=raw, headers={"Content-Encoding": "identity"})
    assert status == 202


def _http_count(status: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "cretoai_gateway_http_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["status"] == status:
                    total += sample.value
    return total


async def test_a_client_that_hangs_up_mid_body_is_no_server_error(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its connection before its body ended is answered (to no one)
    400 ``incomplete_body``: counted as a client error, no 500 and no traceback."""
    before_400, before_500 = _http_count("400"), _http_count("500")
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", node.gateway.http_port)
        writer.write(
            b"POST /v1/vertices HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n" + b'{"payload": "'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    deadline = time.monotonic() + TIMEOUT
    while _http_count("400") < before_400 + 3:  # the gateway notices in its own time
        assert time.monotonic() < deadline, "the aborted requests were never answered"
        await asyncio.sleep(0.01)
    assert _http_count("500") == before_500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert node.consensus.submissions == []


async def test_a_websocket_upgrade_is_a_get(node: Node) -> None:
    status, reply = await node.request(
        "HEAD",
        "/v1/stream",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        },
    )
    assert status == 405, reply
    assert not REGISTRY.get_sample_value("cretoai_gateway_stream_subscribers", {"api": "websocket"})


async def test_oversized_body_and_payload_are_413(make_config: Callable[..., NodeConfig]) -> None:
    async with start_node(make_config(max_body_bytes=4096, max_payload_bytes=1000)) as node:
        status, reply = await node.post("/v1/vertices", data=b"x" * 5000)
        assert_error(status, reply, 413, "body_too_large")

        async def chunked() -> Any:  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b"x" * 1000

        status, reply = await node.post("/v1/vertices", data=chunked())
        assert_error(status, reply, 413, "body_too_large")
        status, reply = await node.post("/v1/vertices", {"payload": b64(b"x" * 1001)})
        assert_error(status, reply, 413, "payload_too_large")
        status, _ = await node.post("/v1/vertices", {"payload": b64(b"x" * 1000)})
        assert status == 202


async def test_unknown_parent_is_422_and_known_parents_are_accepted(node: Node) -> None:
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": ["ab" * 32]})
    assert_error(status, reply, 422, "unknown_parent")
    pending = await submit_pending(node, b"pending parent")
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": [pending.hex()]})
    assert status == 202, reply
    await node.consensus.finalize_pending()
    status, reply = await node.post(
        "/v1/vertices", {"payload": b64(b"a"), "parents": [pending.hex()]}
    )
    assert status == 202, reply  # now a finalized parent


async def test_rejected_parent_is_422(node: Node) -> None:
    h = await submit_pending(node)
    await node.consensus.finalize_pending(rejected=[h])
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": [h.hex()]})
    assert_error(status, reply, 422, "unknown_parent")
    assert "rejected" in reply["error"]["message"]


async def test_submissions_beyond_the_validation_limit_get_429(
    make_config: Callable[..., NodeConfig],
) -> None:
    async with start_node(make_config(max_submissions_in_progress=1)) as node:
        replies = await asyncio.gather(
            *(node.post("/v1/vertices", {"payload": b64(b"burst %d" % i)}) for i in range(20))
        )
        statuses = sorted(status for status, _ in replies)
        assert 202 in statuses and 429 in statuses, statuses
        assert all(
            reply["error"]["code"] == "overloaded" for status, reply in replies if status == 429
        )
        status, _ = await node.post("/v1/vertices", {"payload": b64(b"after the burst")})
        assert status == 202  # the slots were given back


async def test_after_consensus_says_overloaded_submissions_are_shed_for_a_moment(
    node: Node,
) -> None:
    node.consensus.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"refused")})
    assert_error(status, reply, 429, "overloaded")
    node.consensus.submit_error = None
    calls = len(node.consensus.submit_metadata)
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"shed")})
    assert_error(status, reply, 429, "overloaded")
    assert len(node.consensus.submit_metadata) == calls  # shed without asking consensus
    deadline = time.monotonic() + TIMEOUT
    while status == 429 and time.monotonic() < deadline:  # the hold is 0.1 s
        status, reply = await node.post("/v1/vertices", {"payload": b64(b"later")})
    assert status == 202, reply


async def test_consensus_refusals_are_mapped(node: Node) -> None:
    for code, status, error in [
        (grpc.StatusCode.UNAVAILABLE, 503, "consensus_unavailable"),
        (grpc.StatusCode.FAILED_PRECONDITION, 422, "unknown_parent"),
        (grpc.StatusCode.INVALID_ARGUMENT, 422, "invalid_vertex"),
        (grpc.StatusCode.INTERNAL, 502, "backend_error"),
        (grpc.StatusCode.DATA_LOSS, 502, "backend_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "overloaded"),  # last: it sheds a while
    ]:
        node.consensus.submit_error = code
        got, reply = await node.post("/v1/vertices", {"payload": ""})
        assert_error(got, reply, status, error)
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS):
            # a backend's internal failure is the operator's to read (its log), not the
            # client's: a storage audit had a database's path answered to HTTP clients
            assert "set by the test" not in str(reply), reply
            assert reply["error"]["message"] == (
                f"consensus failed ({code.name}); the node's log says why"
            ), reply


async def test_consensus_down_is_503_and_not_ready(node: Node) -> None:
    await node.stop_consensus()
    status, reply = await node.post("/v1/vertices", {"payload": ""})
    assert_error(status, reply, 503, "consensus_unavailable")
    # gRPC's own words name the internal address: the node's log has them, not clients
    # (an audit, 2026-12-04)
    assert reply["error"]["message"] == "consensus is unavailable: UNAVAILABLE", reply
    status, reply = await node.get("/readyz")
    assert_error(status, reply, 503, "not_ready")
    assert reply["ready"] is False
    assert reply["checks"] == {
        "consensus": "unreachable",
        "storage": "serving",
        "quorum": "unknown",
    }
    status, reply = await node.get("/v1/status")
    assert_error(status, reply, 503, "consensus_unavailable")
    assert reply["services"]["consensus"] == "unreachable"
    assert (await node.get("/healthz"))[0] == 200


async def test_storage_down_is_503(node: Node) -> None:
    await node.storage.stop()
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": ["ab" * 32]})
    assert_error(status, reply, 503, "storage_unavailable")
    status, reply = await node.get("/v1/vertices/" + "ab" * 32)
    assert_error(status, reply, 503, "storage_unavailable")
    status, reply = await node.get("/readyz")
    assert_error(status, reply, 503, "not_ready")
    assert reply["checks"]["storage"] == "unreachable"


# ---------------------------------------------------------------------------- wait


async def test_wait_answers_200_once_final(node: Node) -> None:
    waiting = asyncio.create_task(node.post("/v1/vertices?wait=true", {"payload": b64(b"w")}))
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
    assert not waiting.done()
    batch = await node.consensus.finalize_pending()
    status, record = await asyncio.wait_for(waiting, TIMEOUT)
    assert status == 200, record
    assert record["status"] == "finalized" and record["seq"] == batch.seq == 1
    assert record["height"] == 0 and record["reject_reason"] is None
    assert record["hash"] == vertex_hash(batch.vertices[0]).hex()
    assert base64.b64decode(record["payload"]) == b"w"
    assert record["certificate"]["seq"] == 1
    assert record["certificate"]["batch_digest"] == batch.batch_digest.hex()
    assert len(record["certificate"]["commits"]) == 1  # a one-node cluster: q = 1


async def test_wait_reports_a_rejection(node: Node) -> None:
    waiting = asyncio.create_task(node.post("/v1/vertices?wait=true", {"payload": b64(b"r")}))
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
    [h] = node.consensus.pending
    await node.consensus.finalize_pending(rejected=[h])
    status, record = await asyncio.wait_for(waiting, TIMEOUT)
    assert (status, record["status"], record["reject_reason"]) == (
        200,
        "rejected",
        "test: rejected",
    )


async def test_wait_times_out_with_504_and_the_vertex_stays_pending(node: Node) -> None:
    started = time.monotonic()
    status, reply = await node.post("/v1/vertices?wait=true", {"payload": b64(b"slow")})
    assert_error(status, reply, 504, "wait_timeout")
    assert 1.4 <= time.monotonic() - started < TIMEOUT  # wait_timeout_ms = 1500
    [h] = node.consensus.pending
    status, record = await node.get(f"/v1/vertices/{h.hex()}")
    assert (status, record["status"]) == (200, "pending")


async def test_submitting_an_executed_vertex_answers_its_record(node: Node) -> None:
    body, vertex = signed_body(client_key(), b"again")
    assert (await node.post("/v1/vertices", body))[0] == 202
    await node.consensus.finalize_pending()
    status, record = await node.post("/v1/vertices", body)
    assert (status, record["status"], record["seq"]) == (200, "finalized", 1)
    status, record = await node.post("/v1/vertices?wait=true", body)
    assert (status, record["hash"]) == (200, vertex_hash(vertex).hex())


# ---------------------------------------------------------------------------- reads


async def test_get_vertex_pending_finalized_and_unknown(node: Node) -> None:
    key = client_key()
    body, vertex = signed_body(key, b"read me", timestamp_ms=42)
    h = vertex_hash(vertex).hex()
    assert (await node.post("/v1/vertices", body))[0] == 202
    status, record = await node.get(f"/v1/vertices/{h}")
    assert status == 200
    assert record == {
        "hash": h,
        "status": "pending",
        "seq": None,
        "height": None,
        "reject_reason": None,
        "payload": b64(b"read me"),
        "parents": [],
        "public_key": key.public_key.hex(),
        "timestamp_ms": 42,
        "signature": vertex.signature.hex(),
        "certificate": None,
    }
    await node.consensus.finalize_pending()
    child = await submit_pending(node, b"child")
    status, reply = await node.post("/v1/vertices", {"payload": "", "parents": [h]})
    await node.consensus.finalize_pending()
    status, record = await node.get(f"/v1/vertices/{h.upper()}")
    assert (status, record["status"], record["seq"], record["height"]) == (200, "finalized", 1, 0)
    [commit] = node.consensus.batches[0].certificate.commits
    assert record["certificate"]["commits"] == [
        {"signer": 0, "body": commit.body.hex(), "signature": commit.signature.hex()}
    ]
    status, record = await node.get(f"/v1/vertices/{reply['hash']}")
    assert (record["seq"], record["height"], record["parents"]) == (2, 1, [h])
    assert (await node.get(f"/v1/vertices/{child.hex()}"))[1]["status"] == "finalized"
    status, reply = await node.get("/v1/vertices/" + "cd" * 32)
    assert_error(status, reply, 404, "not_found")
    for bad in ("xyz", "ab" * 31, "ab" * 33, "%20".join(["ab" * 16] * 2), "%0A" + "cd" * 32):
        status, reply = await node.get(f"/v1/vertices/{bad}")
        assert_error(status, reply, 400, "bad_hex")


async def test_finalized_log_in_pages(node: Node) -> None:
    hashes = []
    for i in range(5):
        hashes.append(await submit_pending(node, b"v%d" % i))
        await node.consensus.finalize_pending()
    status, page = await node.get("/v1/finalized?from_seq=1&limit=2")
    assert status == 200
    assert [b["seq"] for b in page["batches"]] == [1, 2] and page["next_from_seq"] == 3
    batch = page["batches"][0]
    assert batch["vertices"][0]["hash"] == hashes[0].hex()
    assert batch["vertices"][0]["status"] == "finalized" and batch["vertices"][0]["height"] == 0
    assert batch["certificate"]["seq"] == 1 and batch["rejected"] == []
    assert batch["batch_digest"] == node.consensus.batches[0].batch_digest.hex()
    assert "certificate" not in batch["vertices"][0]
    status, page = await node.get("/v1/finalized?from_seq=3")
    assert [b["seq"] for b in page["batches"]] == [3, 4, 5] and page["next_from_seq"] == 6
    status, page = await node.get("/v1/finalized?from_seq=6")
    assert page == {"batches": [], "next_from_seq": 6}
    status, page = await node.get("/v1/finalized")
    assert [b["seq"] for b in page["batches"]] == [1, 2, 3, 4, 5]
    for query in ("limit=0", "limit=101", "limit=-1", "from_seq=x", "from_seq=1.5"):
        status, reply = await node.get(f"/v1/finalized?{query}")
        assert_error(status, reply, 400, "bad_request")


# ---------------------------------------------------------------------------- node


async def test_status(node: Node) -> None:
    await submit_pending(node)
    await node.consensus.finalize_pending()
    status, reply = await node.get("/v1/status")
    assert status == 200, reply
    assert reply["node_id"] == "fake-node-id" and reply["view"] == 3 and reply["primary"] == 3
    assert reply["last_executed_seq"] == 1 and reply["n"] == 4 and reply["f"] == 1
    assert reply["evidence"] == 2 and reply["banned"] == []
    assert reply["peers"][0]["name"] == "node2" and reply["peers"][0]["connected"] is True
    # no transport service runs in these tests
    assert reply["services"] == {
        "gateway": "serving",
        "consensus": "serving",
        "transport": "unreachable",
        "storage": "serving",
    }


async def test_healthz_and_readyz(node: Node) -> None:
    assert await node.get("/healthz") == (200, {"status": "ok"})
    assert await node.get("/readyz") == (
        200,
        {
            "ready": True,
            "checks": {"consensus": "ready", "storage": "serving", "quorum": "connected"},
        },
    )
    node.consensus.ready = False
    status, reply = await node.get("/readyz")
    assert_error(status, reply, 503, "not_ready")
    assert reply["checks"]["consensus"] == "not_ready"


async def test_a_node_cut_off_from_a_quorum_is_not_ready(node: Node) -> None:
    """With 1 of its 3 peers connected, a node of 4 cannot finalize anything it is
    given: /readyz says so, so that a load balancer (the Kubernetes readiness probe)
    sends clients to a node that can; 2 peers make a quorum with it again."""
    node.consensus.connected_peers = 1
    status, reply = await node.get("/readyz")
    assert_error(status, reply, 503, "not_ready")
    assert reply["checks"] == {"consensus": "ready", "storage": "serving", "quorum": "cut_off"}
    assert "quorum cut_off" in reply["error"]["message"]
    node.consensus.connected_peers = 2
    assert (await node.get("/readyz"))[0] == 200


async def test_a_node_alone_in_a_view_its_peers_are_not_in_is_not_ready(node: Node) -> None:
    """Connected, but waiting for a view its peers have not entered, a node orders
    nothing until they change views too: /readyz and /v1/status say so."""
    node.consensus.alone_in_view = True
    status, reply = await node.get("/readyz")
    assert_error(status, reply, 503, "not_ready")
    assert reply["checks"]["quorum"] == "alone_in_view"
    assert (await node.get("/v1/status"))[1]["alone_in_view"] is True
    node.consensus.alone_in_view = False
    assert (await node.get("/readyz"))[0] == 200
    assert (await node.get("/v1/status"))[1]["alone_in_view"] is False


async def test_unknown_routes_and_methods_are_json(node: Node) -> None:
    status, reply = await node.get("/v2/nothing")
    assert_error(status, reply, 404, "not_found")
    status, reply = await node.request("DELETE", "/v1/vertices")
    assert_error(status, reply, 405, "method_not_allowed")


async def test_methods_a_client_invents_are_one_metric_label(node: Node) -> None:
    """An audit (2026-12-04): each method the HTTP parser takes became a label value
    on every route (about 885 series from one anonymous client)."""

    def methods() -> set[str]:
        return {
            sample.labels["method"]
            for metric in REGISTRY.collect()
            if metric.name == "cretoai_gateway_http_requests"
            for sample in metric.samples
        }

    for invented in ("PROPFIND", "MKCOL", "LOCK", "SEARCH"):
        status, _ = await node.request(invented, "/v1/vertices")
        assert status == 405
    seen = methods()
    assert "other" in seen and not seen & {"PROPFIND", "MKCOL", "LOCK", "SEARCH"}, seen


async def test_openapi_document_lists_every_route(node: Node) -> None:
    status, doc = await node.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in node.gateway.rest.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(m, path) for path, item in doc["paths"].items() for m in item}
    assert documented == routes
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in doc["components"]["schemas"], ref
    assert set(
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    ) == set(CODES)


async def test_docs_page_is_self_contained(node: Node) -> None:
    async with node.http.get(node.url + "/docs") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        html = await resp.text()
    assert "/openapi.json" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html


async def test_trace_context_continues_into_consensus(node: Node) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    status, _ = await node.post("/v1/vertices", {"payload": ""}, headers=headers)
    assert status == 202
    [metadata] = node.consensus.submit_metadata
    _version, got_trace, parent, _flags = metadata["traceparent"].split("-")
    assert got_trace == trace_id and parent != "00f067aa0ba902b7"


async def test_a_clients_sampled_traceparent_is_honoured_only_within_a_budget(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REST's server span follows :func:`extract_client_context`: a client asking for a
    trace of every request gets the budget's worth (2 here), then the sampling ratio's
    (our coin says no here); the trace id is carried on to consensus either way."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cretoai import telemetry

    class Never:
        def random(self) -> float:
            return 0.999999

    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setattr(telemetry, "_client_traces", telemetry.TokenBucket(0.0, 2))
    monkeypatch.setattr(telemetry, "_coin", Never())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_ids = [os.urandom(16).hex() for _ in range(6)]
    for trace_id in trace_ids:
        headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        status, _ = await node.post("/v1/vertices", {"payload": ""}, headers=headers)
        assert status == 202
    recorded = [
        f"{s.context.trace_id:032x}"
        for s in exporter.get_finished_spans()
        if s.name == "POST /v1/vertices" and s.context is not None
    ]
    assert recorded == trace_ids[:2]
    sent = [m["traceparent"].split("-") for m in node.consensus.submit_metadata]
    assert [t for _, t, _, _ in sent] == trace_ids
    assert [flags for *_, flags in sent] == ["01", "01", "00", "00", "00", "00"]


async def test_unsigned_submissions_can_be_turned_off(
    make_config: Callable[..., NodeConfig],
) -> None:
    async with start_node(make_config(submitter_key="")) as node:
        status, body = await node.post("/v1/vertices", {"payload": b64(b"hi")})
        assert status == 422 and body["error"]["code"] == "signature_required", body
        assert "sign the vertex yourself" in body["error"]["message"]
        assert node.consensus.submissions == []
        signed, _ = signed_body(client_key(), b"mine")
        status, body = await node.post("/v1/vertices", signed)
        assert status == 202, body


async def test_a_validator_key_as_submitter_key_is_refused(
    make_config: Callable[..., NodeConfig],
) -> None:
    cfg = make_config()
    bad = node_config(cfg.source, submitter_key=str(cfg.key_path))
    with pytest.raises(ConfigError, match="is a validator key"):
        async with start_node(bad):
            pass


async def test_slow_uploads_hold_a_bounded_number_of_bytes(
    make_config: Callable[..., NodeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that declares a large body and sends it slowly holds
    ``gateway.max_request_bytes_in_progress`` for what it sent: 64 KiB at first, more as
    its body arrives. Until an audit (2026-12-04) it held what it declared from the
    start, and uploads that declared 4 MiB and sent nothing, from 4 addresses, held the
    whole budget: every submission on the node got 429. A body that outgrows the room
    left gets 429 as it arrives; one client's holdings stay within its share; the bytes
    are given back when the slow one is answered."""
    held: list[float] = []
    reserved = asyncio.Event()
    gauge = metrics.REQUEST_BYTES
    set_gauge = gauge.set

    def observe(value: float) -> None:  # the gateway runs in this process
        set_gauge(value)
        held.append(value)
        reserved.set()

    monkeypatch.setattr(gauge, "set", observe)
    async with start_node(make_config(max_request_bytes_in_progress=200_000)) as node:
        body = json.dumps({"payload": b64(b"slow" * 30_000)}).encode()  # ~160 KB
        reader, writer = await asyncio.open_connection("127.0.0.1", node.gateway.http_port)
        head = (
            "POST /v1/vertices HTTP/1.1\r\nHost: gateway\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[:1000])  # the rest later
        await writer.drain()
        await asyncio.wait_for(reserved.wait(), TIMEOUT)  # the slow one reached its handler
        assert held == [FIRST_BODY_RESERVATION]  # not the 160 KB it declared
        # its client is at its share (a quarter of the budget): refused, even small
        status, reply = await node.post("/v1/vertices", {"payload": b64(b"small")})
        assert_error(status, reply, 429, "overloaded")
        assert "from your address" in reply["error"]["message"]
        # another client's 53-KB submission fits beside it (it did not before)
        payload = {"payload": b64(b"x" * 40_000)}
        status, _ = await node.post_from("127.0.0.2", "/v1/vertices", payload)
        assert status == 202
        # a third client's 160-KB body outgrows the room left as it arrives
        big = {"payload": b64(b"slow" * 30_000)}
        status, reply = await node.post_from("127.0.0.3", "/v1/vertices", big)
        assert_error(status, reply, 429, "overloaded")
        assert "max_request_bytes_in_progress" in reply["error"]["message"]
        writer.write(body[1000:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 202")
        writer.close()
        assert max(held) <= 200_000 and held[-1] == 0  # given back before the answer
        status, _ = await node.post("/v1/vertices", {"payload": b64(b"x" * 40_000)})
        assert status == 202


async def test_slowly_read_answers_hold_a_bounded_number_of_bytes(
    make_config: Callable[..., NodeConfig],
) -> None:
    """A read reserves its answer's bytes against ``gateway.max_answer_bytes_in_progress``
    from before it is fetched until it is sent: while a client that does not read holds
    a 5-MB page of batches (its JSON), another read gets 429 at once; once it is gone,
    reads pass."""
    async with start_node(make_config(max_answer_bytes_in_progress=8 * 1024 * 1024)) as node:
        h = await _fill_with_large_batches(node)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        sock = await _page_reader_that_never_reads(node, deadline)
        try:
            # reserved before the read (alone, it fits), then resized to the page and its JSON
            held = REGISTRY.get_sample_value("cretoai_gateway_answer_bytes_in_progress")
            assert held is not None and 8_000_000 < held < PAGE_ANSWER_BYTES
            status, reply = await node.get(f"/v1/vertices/{h}")
            assert_error(status, reply, 429, "overloaded")
            assert "max_answer_bytes_in_progress" in reply["error"]["message"]
        finally:
            sock.close()
        while REGISTRY.get_sample_value("cretoai_gateway_answer_bytes_in_progress"):
            assert loop.time() < deadline + TIMEOUT, "the gone reader's bytes are still held"
            await asyncio.sleep(0.01)
        status, reply = await node.get(f"/v1/vertices/{h}")
        assert status == 200 and reply["hash"] == h


@pytest.mark.parametrize("client", ["never_reads", "resets"])
async def test_a_reader_that_stalls_or_resets_mid_answer_loses_its_connection_quietly(
    make_config: Callable[..., NodeConfig], caplog: pytest.LogCaptureFixture, client: str
) -> None:
    """Found by an audit: a few clients that never read their pages held the answer
    budget, and every other client's pages got 429 for as long as they kept their
    sockets open; a client resetting its connection mid-answer was logged as an error
    with a traceback and counted as a 500. Now an answer not taken within
    ``gateway.body_timeout_ms`` is cut (its bytes given back while the client still
    holds its socket), and a reset is a client gone: 499, no error logged."""
    caplog.set_level(logging.ERROR, logger="services.gateway")
    config = make_config(max_answer_bytes_in_progress=8 * 1024 * 1024, body_timeout_ms=1000)
    async with start_node(config) as node:
        h = await _fill_with_large_batches(node)
        before = {code: _http_count(code) for code in ("499", "500")}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        sock = await _page_reader_that_never_reads(node, deadline)
        try:
            assert (await node.get(f"/v1/vertices/{h}"))[0] == 429  # the budget is held
            if client == "resets":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            # the stalled one still holds its socket open: cut after the timeout
            while REGISTRY.get_sample_value("cretoai_gateway_answer_bytes_in_progress"):
                assert loop.time() < deadline + TIMEOUT, "the stalled answer is still held"
                await asyncio.sleep(0.01)
            status, reply = await node.get(f"/v1/vertices/{h}")
            assert status == 200 and reply["hash"] == h
        finally:
            sock.close()
        while _http_count("499") == before["499"]:
            assert loop.time() < deadline + 2 * TIMEOUT, "the gone client was not counted"
            await asyncio.sleep(0.01)
        assert _http_count("500") == before["500"]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _fill_with_large_batches(node: Node) -> str:
    """20 finalized batches of a 200-KB vertex each; the last vertex's hash."""
    for _ in range(20):
        batch = await node.consensus.finalize([raw_vertex(os.urandom(200_000))])
    return vertex_hash(batch.vertices[0]).hex()


async def _page_reader_that_never_reads(node: Node, deadline: float) -> socket.socket:
    """A client that asks for a page of 100 batches and reads none of it; returned once
    the answer is being sent (fetched and built)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", node.gateway.http_port))
        request = "GET /v1/finalized?from_seq=1&limit=100 HTTP/1.1\r\nHost: gateway\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        while _unread_bytes(sock) == 0:
            assert loop.time() < deadline, "the page was not sent"
            await asyncio.sleep(0.01)
    except BaseException:
        sock.close()
        raise
    return sock


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in the socket's receive buffer (FIONREAD)."""
    (count,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))
    return int(count)


async def test_an_unknown_expectation_gets_the_apis_json_error(node: Node) -> None:
    """aiohttp answered ``Expect: foo`` with a plain-text 417, before any middleware (an
    audit, 2026-12-04); ``100-continue`` must still work."""
    for path in ("/v1/vertices", "/v1/status"):
        reader, writer = await asyncio.open_connection("127.0.0.1", node.gateway.http_port)
        method = "POST" if path == "/v1/vertices" else "GET"
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: gateway\r\nExpect: foo\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 417"), answer
        assert b"application/json" in head
        error = json.loads(body)["error"]
        assert error["code"] == "expectation_failed" and "100-continue" in error["message"]
    body = json.dumps({"payload": b64(b"continued")}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.gateway.http_port)
    writer.write(
        b"POST /v1/vertices HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).startswith(
        b"HTTP/1.1 100"
    )
    writer.write(body)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.close()
    assert head.startswith(b"HTTP/1.1 202"), head


async def test_web_pages_of_other_origins_may_not_submit_or_subscribe(
    make_config: Callable[..., NodeConfig],
) -> None:
    """A page any visitor opens could make the browser POST a JSON body as text/plain
    (no CORS preflight) to a gateway only the visitor's machine reaches, and have the
    gateway sign it (audit, 2026-12-04). A submission or a stream subscription naming an
    Origin not in ``gateway.allowed_origins`` is 403; without Origin (not a browser), or
    from a listed origin, it goes; reads are not guarded."""
    cfg = make_config(allowed_origins=("https://explorer.example.org",))
    async with start_node(cfg) as node:
        evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        for path in ("/v1/vertices", "/v1/vertices:batch"):
            status, reply = await node.post(path, data=b'{"payload": ""}', headers=evil)
            assert (status, reply["error"]["code"]) == (403, "origin_not_allowed")
        upgrade = {
            "Origin": "https://evil.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        status, reply = await node.get("/v1/stream", headers=upgrade)
        assert (status, reply["error"]["code"]) == (403, "origin_not_allowed")
        assert node.consensus.submissions == []
        status, _ = await node.get("/v1/status", headers={"Origin": "https://evil.example"})
        assert status == 200
        allowed = {"Origin": "https://Explorer.example.org"}
        status, _ = await node.post("/v1/vertices", {"payload": b64(b"ok")}, headers=allowed)
        assert status == 202
        status, _ = await node.post("/v1/vertices", {"payload": b64(b"curl")})
        assert status == 202
