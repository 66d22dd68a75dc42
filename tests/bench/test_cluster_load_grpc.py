"""bench/cluster_load.py's ``--api grpc``: the load through the public gRPC
``SubmitVertices`` (with ``wait``) instead of REST. The request is built from serialized
vertices without a parse; the answers map onto the REST outcomes and statuses, so that
the two APIs' figures compare; a real cluster finalizes what it sends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bench.cluster_load import grpc_batch_request, grpc_outcome
from cretoai.v1 import gateway_pb2, vertex_pb2
from tests.conftest import REPO


def _vertex(i: int) -> vertex_pb2.Vertex:
    return vertex_pb2.Vertex(
        payload=bytes([i]) * (100 + i),
        parents=[bytes([i]) * 32],
        creator=b"k" * 2592,
        timestamp_ms=1_700_000_000_000 + i,
        signature=b"s" * 4627,
    )


def test_the_request_is_the_vertices_as_sent_and_waits() -> None:
    vertices = [_vertex(i) for i in range(3)]
    raw = grpc_batch_request([v.SerializeToString() for v in vertices])
    request = gateway_pb2.GatewaySubmitBatchRequest.FromString(raw)
    assert request.wait is True
    assert list(request.vertices) == vertices
    # a body of 128 bytes or more needs a two-byte length: the varint is right
    assert (
        raw
        == gateway_pb2.GatewaySubmitBatchRequest(vertices=vertices, wait=True).SerializeToString()
    )


def test_answers_map_onto_the_rest_outcomes() -> None:
    finalized = gateway_pb2.GatewaySubmitResult(status=vertex_pb2.VERTEX_STATUS_FINALIZED)
    rejected = gateway_pb2.GatewaySubmitResult(status=vertex_pb2.VERTEX_STATUS_REJECTED)
    overloaded = gateway_pb2.GatewaySubmitResult(
        error=gateway_pb2.GatewayError(
            code="overloaded",
            message="consensus is overloaded",
            status=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        )
    )
    refused = gateway_pb2.GatewaySubmitResult(
        error=gateway_pb2.GatewayError(
            code="bad_signature", status=grpc.StatusCode.INVALID_ARGUMENT.value[0]
        )
    )
    assert grpc_outcome(finalized) == ("finalized", 200)
    assert grpc_outcome(rejected) == ("rejected", 200)
    assert grpc_outcome(overloaded) == ("overloaded", 429)
    assert grpc_outcome(refused) == ("bad_signature", 400)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_a_step_over_grpc_finalizes(tmp_path: Path) -> None:
    output = tmp_path / "cluster_load.json"
    argv = [
        sys.executable,
        "-m",
        "bench.cluster_load",
        "--rates",
        "40",
        "--duration",
        "4",
        "--warmup",
        "1",
        "--idle",
        "1",
        "--api",
        "grpc",
        "--client-batch",
        "8",
        "--client-linger-ms",
        "100",
        "--verify-seconds",
        "0",
        "--max-seconds",
        "300",
        "--output",
        str(output),
        "--plot",
        "",
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(output.read_text())
    assert result["parameters"]["api"] == "grpc"
    assert "gRPC SubmitVertices" in result["parameters"]["client"]
    (step,) = result["steps"]
    assert step["outcomes_whole_step"].get("finalized", 0) > 0, step["outcomes_whole_step"]
    assert step["latency"]["count"] > 0
    assert step["finalized_throughput"] > 0
    # the vertices went through the gateways' gRPC API, several per call
    assert step["generator"]["vertices_per_request"] > 1, step["generator"]
