"""The finalized stream: WebSocket replay and resume, one shared consensus subscription,
re-subscription after a failure, and slow subscribers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import REGISTRY

from cretoai.config import NodeConfig
from cretoai.v1 import consensus_pb2, vertex_pb2
from cretoai.vertex import vertex_hash
from services.gateway import finality
from services.gateway.rest import WS_SLOW_CONSUMER
from tests.gateway.support import (
    TIMEOUT,
    Node,
    raw_vertex,
    small_rcvbuf_connector,
    start_node,
)

#: Another client address than the tests' own (127.0.0.1): loopback too.
ANOTHER_ADDRESS = "127.0.0.2"


def session_from(source: str) -> aiohttp.ClientSession:
    """An HTTP client connecting from the loopback address ``source``."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))


async def finalize(node: Node, payload: bytes = b"x") -> vertex_pb2.FinalizedBatch:
    return await node.consensus.finalize([raw_vertex(payload)])


async def receive_batch(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    batch: dict[str, Any] = message.json()
    return batch


def disconnects(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "cretoai_gateway_stream_disconnects_total", {"reason": reason}
    )
    return value or 0.0


async def test_stream_replays_from_seq_then_follows_live(node: Node) -> None:
    batches = [await finalize(node, b"v%d" % i) for i in range(3)]
    async with node.http.ws_connect(node.url + "/v1/stream?from_seq=2") as ws:
        first = await receive_batch(ws)
        assert first["seq"] == 2
        assert first["batch_digest"] == batches[1].batch_digest.hex()
        [vertex] = first["vertices"]
        assert vertex["hash"] == vertex_hash(batches[1].vertices[0]).hex()
        assert (vertex["status"], vertex["seq"], vertex["height"]) == ("finalized", 2, 0)
        assert first["certificate"]["seq"] == 2
        assert (await receive_batch(ws))["seq"] == 3
        await finalize(node)
        live = await receive_batch(ws)
        assert live["seq"] == 4 and live["vertices"][0]["height"] == 0  # results from storage
    # resume where the last connection stopped
    async with node.http.ws_connect(node.url + "/v1/stream?from_seq=4") as ws:
        assert (await receive_batch(ws))["seq"] == 4
        await finalize(node)
        assert (await receive_batch(ws))["seq"] == 5


async def test_stream_without_from_seq_sends_new_batches_only(node: Node) -> None:
    async with node.http.ws_connect(node.url + "/v1/stream") as first:
        await finalize(node)
        assert (await receive_batch(first))["seq"] == 1  # the gateway has seen batch 1
        async with node.http.ws_connect(node.url + "/v1/stream") as ws:
            await finalize(node)
            assert (await receive_batch(ws))["seq"] == 2


async def test_stream_reports_rejections(node: Node) -> None:
    good, bad = raw_vertex(b"good"), raw_vertex(b"bad")
    async with node.http.ws_connect(node.url + "/v1/stream") as ws:
        await node.consensus.finalize([good, bad], rejected=[vertex_hash(bad)])
        batch = await receive_batch(ws)
    statuses = [(v["status"], v["reject_reason"]) for v in batch["vertices"]]
    assert statuses == [("finalized", None), ("rejected", "test: rejected")]
    assert batch["rejected"] == [vertex_hash(bad).hex()]


async def test_one_watch_subscription_serves_every_waiter_and_subscriber(node: Node) -> None:
    sockets = [await node.http.ws_connect(node.url + "/v1/stream") for _ in range(3)]
    try:
        waiting = asyncio.create_task(node.post("/v1/vertices?wait=true", {"payload": ""}))
        await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
        assert node.consensus.watchers == 1 and len(node.consensus.watch_requests) == 1
        batch = await node.consensus.finalize_pending()
        for ws in sockets:
            assert (await receive_batch(ws))["seq"] == batch.seq
        status, record = await asyncio.wait_for(waiting, TIMEOUT)
        assert (status, record["seq"]) == (200, batch.seq)
        assert len(node.consensus.watch_requests) == 1
    finally:
        for ws in sockets:
            await ws.close()


async def test_gateway_resubscribes_from_the_last_seq_it_saw(node: Node) -> None:
    async with node.http.ws_connect(node.url + "/v1/stream") as ws:
        await finalize(node)
        await finalize(node)
        assert [(await receive_batch(ws))["seq"] for _ in range(2)] == [1, 2]
        node.consensus.drop_watchers()
        await finalize(node)  # executed while the gateway is not subscribed
        await node.consensus.wait_for(lambda: len(node.consensus.watch_requests) == 2)
        assert node.consensus.watch_requests == [1, 3]
        assert (await receive_batch(ws))["seq"] == 3
        waiting = asyncio.create_task(node.post("/v1/vertices?wait=true", {"payload": ""}))
        await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
        await node.consensus.finalize_pending()
        assert (await asyncio.wait_for(waiting, TIMEOUT))[0] == 200
        assert (await receive_batch(ws))["seq"] == 4


async def test_slow_subscriber_is_disconnected_and_resumes(
    make_config: Callable[..., NodeConfig],
) -> None:
    async with (
        start_node(make_config(stream_buffer_bytes=256 * 1024)) as node,
        aiohttp.ClientSession(connector=small_rcvbuf_connector()) as slow,
    ):
        before = disconnects("slow_consumer")
        ws = await slow.ws_connect(node.url + "/v1/stream", max_msg_size=0)
        payload = os.urandom(200_000)
        for _ in range(200):  # it does not read: kernel buffers, then its own buffer fill
            await finalize(node, payload)
            if disconnects("slow_consumer") > before:
                break
        assert disconnects("slow_consumer") == before + 1
        seqs = []
        while True:  # what was sent before the disconnection, then the close frame
            message = await ws.receive(timeout=TIMEOUT)
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            seqs.append(message.json()["seq"])
        assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, WS_SLOW_CONSUMER)
        reason = str(message.extra)
        assert reason.startswith("slow consumer; resume with from_seq=")
        resume = int(reason.rsplit("=", 1)[1])
        assert seqs == list(range(1, len(seqs) + 1)) and resume <= len(seqs) + 1
        await ws.close()
        async with node.http.ws_connect(node.url + f"/v1/stream?from_seq={resume}") as again:
            assert (await receive_batch(again))["seq"] == resume


async def test_stream_closes_when_storage_is_unavailable(node: Node) -> None:
    await finalize(node)
    await node.storage.stop()
    async with node.http.ws_connect(node.url + "/v1/stream?from_seq=1") as ws:
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER
        assert "storage_unavailable" in str(message.extra)


async def test_stream_closes_going_away_at_shutdown(node: Node) -> None:
    async with node.http.ws_connect(node.url + "/v1/stream") as ws:
        await node.gateway.stop()
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
        assert message.extra == "shutting_down: the gateway is shutting down"


async def test_stream_bad_requests(node: Node) -> None:
    status, reply = await node.get("/v1/stream")
    assert (status, reply["error"]["code"]) == (400, "bad_request")
    try:
        await node.http.ws_connect(node.url + "/v1/stream?from_seq=abc")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 400
    else:
        raise AssertionError("the handshake should fail")


async def until_unsubscribed(api: str) -> None:
    """Wait until no ``api`` subscriber counts any more (its handler has finished)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while REGISTRY.get_sample_value("cretoai_gateway_stream_subscribers", {"api": api}):
        assert loop.time() < deadline, f"a closed {api} subscriber still counts"
        await asyncio.sleep(0.01)


def _refused(api: str, limit: str = "max_streams") -> float:
    value = REGISTRY.get_sample_value(
        "cretoai_gateway_streams_refused_total", {"api": api, "limit": limit}
    )
    return value or 0.0


async def test_subscribers_are_bounded_across_websocket_and_grpc(
    make_config: Callable[..., NodeConfig],
) -> None:
    """``gateway.max_streams`` subscribers at once, WebSocket and gRPC together (each may
    hold a page of stored batches): one more is refused before any work (429 before the
    upgrade, RESOURCE_EXHAUSTED), and a slot is free again once one ends."""
    async with start_node(make_config(max_streams=2)) as node:
        await finalize(node, b"first")
        ws = await node.http.ws_connect(node.url + "/v1/stream?from_seq=1")
        watch = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        assert (await receive_batch(ws))["seq"] == 1
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).seq == 1  # both are open
        before = _refused("websocket"), _refused("grpc")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await node.http.ws_connect(node.url + "/v1/stream?from_seq=1")
        assert refused.value.status == 429
        status, reply = await node.get("/v1/stream")  # not an upgrade: still a 400
        assert (status, reply["error"]["code"]) == (400, "bad_request")
        third = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(third.read(), TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gateway.max_streams" in (caught.value.details() or "")
        assert (_refused("websocket"), _refused("grpc")) == (before[0] + 1, before[1] + 1)
        await ws.close()
        await until_unsubscribed("websocket")
        async with node.http.ws_connect(node.url + "/v1/stream?from_seq=1") as again:
            assert (await receive_batch(again))["seq"] == 1
        watch.cancel()


async def test_one_client_cannot_take_every_subscriber_slot(
    make_config: Callable[..., NodeConfig],
) -> None:
    """``gateway.max_streams_per_client`` subscribers at once from one client address,
    WebSocket and gRPC together: that client's next is refused (429 before the upgrade,
    RESOURCE_EXHAUSTED) while another address still subscribes, and a slot of its own
    is free again once one of its streams ends."""
    async with start_node(make_config(max_streams=8, max_streams_per_client=2)) as node:
        await finalize(node, b"first")
        ws = await node.http.ws_connect(node.url + "/v1/stream?from_seq=1")
        watch = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        assert (await receive_batch(ws))["seq"] == 1
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).seq == 1  # both are open
        before = _refused("websocket", "per_client"), _refused("grpc", "per_client")

        third = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(third.read(), TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gateway.max_streams_per_client" in (caught.value.details() or "")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await node.http.ws_connect(node.url + "/v1/stream?from_seq=1")
        assert refused.value.status == 429
        assert (_refused("websocket", "per_client"), _refused("grpc", "per_client")) == (
            before[0] + 1,
            before[1] + 1,
        )

        # another client address (127.0.0.2 is loopback too) is not held back by it
        async with (
            session_from(ANOTHER_ADDRESS) as elsewhere,
            elsewhere.ws_connect(node.url + "/v1/stream?from_seq=1") as stranger,
        ):
            assert (await receive_batch(stranger))["seq"] == 1

        watch.cancel()
        await until_unsubscribed("grpc")
        async with node.http.ws_connect(node.url + "/v1/stream?from_seq=1") as again:
            assert (await receive_batch(again))["seq"] == 1
        await ws.close()


async def test_a_subscriber_that_drops_mid_send_is_gone_not_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp raises ``ConnectionError("Connection lost")`` (not ConnectionResetError)
    when a subscriber resets while the gateway is blocked sending to it: any client could
    fill the log with ERROR tracebacks that way."""
    from services.gateway.rest import RestApi

    class Entry:
        def text(self) -> str:
            return "{}"

    class Stream:
        async def entries(self) -> Any:
            yield Entry()

    class DroppedSocket:
        async def send_str(self, text: str) -> None:
            raise ConnectionError("Connection lost")

    with caplog.at_level("ERROR"):
        assert await RestApi._pump(DroppedSocket(), Stream()) is None  # type: ignore[arg-type]
    assert "finalized stream failed" not in caplog.text


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_client_holding_fewer_streams_takes_a_slot_from_the_one_holding_the_most(
    make_config: Callable[..., NodeConfig],
) -> None:
    """Every ``max_streams`` slot taken by one address kept every other subscriber out
    (with 4 per address, 4 addresses did it). Now a client holding two fewer streams
    than the largest holder takes that holder's oldest stream, which ends with a reason
    to resume by seq; the holder cannot take it back, and slots end up shared."""
    async with (
        start_node(make_config(max_streams=3, max_streams_per_client=3)) as node,
        session_from(ANOTHER_ADDRESS) as holder,
    ):
        await finalize(node, b"first")
        held = []
        for _ in range(3):
            ws = await holder.ws_connect(node.url + "/v1/stream?from_seq=1")
            assert (await receive_batch(ws))["seq"] == 1
            held.append(ws)
        evictions = _sample("cretoai_gateway_stream_evictions_total", api="websocket")
        watch = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).seq == 1  # it got a slot
        closed = await held[0].receive(timeout=TIMEOUT)  # the holder's oldest gave way
        assert closed.type == aiohttp.WSMsgType.CLOSE
        assert closed.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER
        assert (closed.extra or "").endswith("this client holds the most; resume with from_seq=2")
        assert _sample("cretoai_gateway_stream_evictions_total", api="websocket") == (evictions + 1)
        refused = _refused("websocket")
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:  # not back for it
            await holder.ws_connect(node.url + "/v1/stream?from_seq=1")
        assert caught.value.status == 429
        assert _refused("websocket") == refused + 1
        await finalize(node, b"second")
        for ws in held[1:]:  # the others go on
            assert (await receive_batch(ws))["seq"] == 2
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).seq == 2
        # 2 against 1: one apart is fair, so a second stream of the newcomer is refused
        second = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await asyncio.wait_for(second.read(), TIMEOUT)
        assert refusal.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gateway.max_streams" in (refusal.value.details() or "")
        watch.cancel()
        for ws in held:
            await ws.close()


async def test_a_grpc_subscriber_holding_the_most_gives_its_oldest_stream_up(
    make_config: Callable[..., NodeConfig],
) -> None:
    """The same between a gRPC holder and a WebSocket newcomer at another address: the
    holder's oldest ``WatchFinalized`` ends RESOURCE_EXHAUSTED with where to resume,
    counted as an eviction of the gRPC API, and its other streams go on."""
    async with (
        start_node(make_config(max_streams=3, max_streams_per_client=3)) as node,
        session_from(ANOTHER_ADDRESS) as newcomer,
    ):
        await finalize(node, b"first")
        held = []
        for _ in range(3):
            call = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
            assert (await asyncio.wait_for(call.read(), TIMEOUT)).seq == 1
            held.append(call)
        evictions = _sample("cretoai_gateway_stream_evictions_total", api="grpc")
        ws = await newcomer.ws_connect(node.url + "/v1/stream?from_seq=1")
        assert (await receive_batch(ws))["seq"] == 1  # it got a slot
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(held[0].read(), TIMEOUT)
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (ended.value.details() or "").endswith(
            "this client holds the most; resume with from_seq=2"
        )
        assert _sample("cretoai_gateway_stream_evictions_total", api="grpc") == evictions + 1
        await finalize(node, b"second")
        for call in held[1:]:
            assert (await asyncio.wait_for(call.read(), TIMEOUT)).seq == 2
        assert (await receive_batch(ws))["seq"] == 2
        for call in held:
            call.cancel()
        await ws.close()


async def test_a_grpc_subscriber_that_never_reads_gives_its_slot_back(
    make_config: Callable[..., NodeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gRPC subscriber that stops reading overflows its buffer, but its handler stayed
    blocked in a write for as long as the client kept the call: it held its stream slot
    (and its call slot) for good (found 2026-12-04: still counted 20 s on). A stream the
    gateway ended is now aborted END_GRACE_S later if its handler has not closed it."""
    monkeypatch.setattr(finality, "END_GRACE_S", 0.5)
    async with start_node(make_config(stream_buffer_bytes=256 * 1024)) as node:
        aborts = _sample("cretoai_gateway_stream_aborts_total", api="grpc")
        call = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        await node.consensus.finalize([vertex_pb2.Vertex(payload=b"first")])
        assert (await asyncio.wait_for(call.read(), TIMEOUT)).seq == 1  # then never again
        overflows = _sample("cretoai_gateway_stream_overflows_total", api="grpc")
        payload = os.urandom(200_000)
        for _ in range(300):  # HTTP/2 flow control, then the subscriber's buffer fill up
            await finalize(node, payload)
            if _sample("cretoai_gateway_stream_overflows_total", api="grpc") > overflows:
                break
        await until_unsubscribed("grpc")
        assert _sample("cretoai_gateway_stream_aborts_total", api="grpc") == aborts + 1
        call.cancel()
