"""The per-client rate limit on submitted vertices (services/gateway/ratelimit.py): the
buckets' arithmetic with a stepped clock, then the real gateway refusing one client
address over its rate while another is served, on REST and gRPC alike."""

from __future__ import annotations

import base64
from collections.abc import Callable

import aiohttp
import grpc
import pytest
from prometheus_client import REGISTRY

from cretoai.config import NodeConfig
from cretoai.v1 import gateway_pb2, vertex_pb2
from services.gateway.ratelimit import ClientRateLimit, RateLimited, retry_after_header
from tests.gateway.support import TIMEOUT, start_node


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    limit = ClientRateLimit(10.0, 20, clock=clock)
    limit.take("a", 20)
    with pytest.raises(RateLimited) as refused:
        limit.take("a", 1)
    assert refused.value.retry_after_s == pytest.approx(0.1)
    clock.now += 0.5  # five tokens back
    limit.take("a", 5)
    with pytest.raises(RateLimited):
        limit.take("a", 1)
    limit.take("b", 20)  # another client has its own bucket


def test_a_refused_request_takes_no_tokens() -> None:
    clock = Clock()
    limit = ClientRateLimit(10.0, 20, clock=clock)
    limit.take("a", 15)
    with pytest.raises(RateLimited) as refused:
        limit.take("a", 10)  # 5 left: the batch is refused whole ...
    assert refused.value.retry_after_s == pytest.approx(0.5)
    limit.take("a", 5)  # ... and took none of them


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    clock = Clock()
    limit = ClientRateLimit(10.0, 20, clock=clock)
    limit.take("a", 1)
    clock.now += 3600.0
    limit.take("a", 20)
    with pytest.raises(RateLimited):
        limit.take("a", 1)


def test_the_buckets_are_bounded_and_refilled_ones_are_dropped() -> None:
    clock = Clock()
    limit = ClientRateLimit(10.0, 20, max_clients=100, clock=clock)
    for i in range(1_000):
        limit.take(f"client-{i}", 20)
    assert len(limit) == 100  # the least recently used went first
    clock.now += 2.0  # every bucket full again: the same as none
    limit.take("newcomer", 1)
    assert len(limit) == 1


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert [retry_after_header(s) for s in (0.001, 1.0, 1.01, 7.5)] == ["1", "1", "2", "8"]


def _unsigned(count: int, tag: str) -> dict[str, object]:
    payloads = [base64.b64encode(f"{tag} {i}".encode()).decode() for i in range(count)]
    return {"vertices": [{"payload": p} for p in payloads]}


def _counted(api: str) -> float:
    value = REGISTRY.get_sample_value(
        "cretoai_gateway_submissions_total", {"api": api, "outcome": "rate_limited"}
    )
    return value or 0.0


async def test_a_client_over_its_rate_is_refused_at_once_and_another_is_served(
    make_config: Callable[..., NodeConfig],
) -> None:
    """One address that sent its burst is refused (429 ``rate_limited``, Retry-After, no
    vertex reaches consensus) on REST and on gRPC; another address is served meanwhile."""
    cfg = make_config(client_vertices_per_s=0.01, client_burst_vertices=256)
    async with start_node(cfg) as node:
        status, reply = await node.post_from("127.0.0.2", "/v1/vertices:batch", _unsigned(256, "a"))
        assert status == 200 and [r["status"] for r in reply["results"]] == ["pending"] * 256
        submitted = len(node.consensus.submissions)
        http_before, grpc_before = _counted("http"), _counted("grpc")

        status, reply = await node.post_from("127.0.0.2", "/v1/vertices", {"payload": "bW9yZQ=="})
        assert status == 429 and reply["error"]["code"] == "rate_limited"
        assert "gateway.client_vertices_per_s" in reply["error"]["message"]

        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                node.url + "/v1/vertices:batch",
                json=_unsigned(2, "b"),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            ) as resp,
        ):
            body = await resp.json()
            # 2 tokens at 0.01 a second: about 200 s, said in whole seconds
            assert resp.status == 429 and body["error"]["code"] == "rate_limited"
            assert 150 <= int(resp.headers["Retry-After"]) <= 201

        # The gRPC API counts the same address (the test's channel dials from 127.0.0.1,
        # so that address's bucket is emptied first through REST).
        status, _ = await node.post("/v1/vertices:batch", _unsigned(256, "c"))
        assert status == 200
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.stub.SubmitVertex(
                gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"d")),
                timeout=TIMEOUT,
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (caught.value.details() or "").startswith("rate_limited: ")

        # Nothing refused reached consensus; another address is served.
        assert len(node.consensus.submissions) == submitted + 256
        status, reply = await node.post_from("127.0.0.3", "/v1/vertices", {"payload": "b3RoZXI="})
        assert status == 202 and reply["status"] == "pending"
        assert _counted("http") - http_before == 3  # one vertex, then a batch of two
        assert _counted("grpc") - grpc_before == 1
