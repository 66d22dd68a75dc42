"""The gateway follows consensus's admission state (``WatchAdmission``) and refuses what
consensus would refuse, as it arrives, instead of after the calls ahead of it.

Real gateway and storage over real HTTP and gRPC; the stand-in consensus of support.py,
whose admission stream the tests turn on (it starts as an older consensus without it)
and drive.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import types
from collections import Counter
from typing import Any

import grpc
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from cretoai.v1 import gateway_pb2, vertex_pb2
from tests.gateway.support import (
    TIMEOUT,
    Node,
    hold_both_calls,
    patient,
    queue_behind_the_calls,
)

OVERLOADED = "consensus at this node is overloaded"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def follow_admission(node: Node) -> None:
    """Give the fake consensus its admission stream and have the gateway follow it."""
    fake, admission = node.consensus, node.gateway.gateway.admission
    await admission.close()  # it gave up at start: the fake had no WatchAdmission
    fake.admission_unimplemented = False
    admission.start()
    await asyncio.wait_for(admission.wait_until(overloaded=False, live=True), TIMEOUT)


async def turn(node: Node, *, overloaded: bool) -> None:
    node.consensus.set_overloaded(overloaded)
    await asyncio.wait_for(
        node.gateway.gateway.admission.wait_until(overloaded=overloaded), TIMEOUT
    )


async def post_text(node: Node, path: str, data: bytes) -> tuple[int, Any]:
    async with node.http.post(
        node.url + path, data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.json()


async def test_an_older_consensus_without_the_stream_is_left_to_decide(node: Node) -> None:
    """The node fixture's consensus has no WatchAdmission: the gateway says so in a gauge
    and sends every submission to consensus."""
    admission = node.gateway.gateway.admission
    await asyncio.wait_for(admission.wait_until(overloaded=False, live=False), TIMEOUT)
    assert gauge("cretoai_gateway_admission_live") == 0
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"sent")})
    assert status == 202 and len(node.consensus.submit_calls) == 1


async def test_while_consensus_is_overloaded_submissions_get_429_without_a_call(
    node: Node,
) -> None:
    fake = node.consensus
    await follow_admission(node)
    assert gauge("cretoai_gateway_admission_live") == 1
    await turn(node, overloaded=True)
    assert gauge("cretoai_gateway_consensus_overloaded") == 1
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"refused here")})
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert OVERLOADED in reply["error"]["message"]
    # refused before the body is read: a malformed one is not a 400
    status, reply = await post_text(node, "/v1/vertices", b"not json")
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    status, reply = await node.post(
        "/v1/vertices:batch", {"vertices": [{"payload": b64(b"a")}, {"payload": b64(b"b")}]}
    )
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.stub.SubmitVertex(
            gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"grpc")),
            timeout=TIMEOUT,
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert OVERLOADED in (refused.value.details() or "")
    assert fake.submit_calls == []  # none of them reached consensus
    # consensus admits again: so does the gateway, at once (no hold, no probe)
    await turn(node, overloaded=False)
    assert gauge("cretoai_gateway_consensus_overloaded") == 0
    for i in range(3):
        status, _ = await node.post("/v1/vertices", {"payload": b64(b"admitted %d" % i)})
        assert status == 202
    assert len(fake.submit_calls) == 3


async def test_what_was_admitted_as_it_arrived_is_carried_through_when_consensus_turns(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both calls in flight and held by consensus, one submission queued behind them, all
    admitted as they arrived (the stream said consensus admitted): when consensus turns
    overloaded, a new submission is refused at once, but the queued one is not refused
    after its wait. It goes to consensus once a call ends, in a call that says the gateway
    admitted it, and consensus (overloaded still) takes it."""
    fake = node.consensus
    patient(node, monkeypatch)
    await follow_admission(node)
    held, hold = await hold_both_calls(node)
    queued = await queue_behind_the_calls(node, monkeypatch, b"queued")
    await turn(node, overloaded=True)
    status, reply = await node.post("/v1/vertices", {"payload": b64(b"arrived after")})
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert OVERLOADED in reply["error"]["message"]
    assert len(fake.submit_calls) == 2  # refused at the gateway's door, without a call
    hold.set()
    assert [status for status, _ in await asyncio.gather(*held)] == [202, 202]
    status, reply = await asyncio.wait_for(queued, TIMEOUT)
    assert status == 202, reply
    assert fake.submit_calls == [1, 1, 1] and fake.submit_admitted == [True, True, True]
    assert fake.overloaded


async def test_without_the_stream_what_is_queued_is_refused_when_consensus_refuses(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older consensus (no admission stream): nothing is admitted by the gateway, so the
    calls do not say so, consensus decides at its door, and when a call comes back
    overloaded the submission queued behind it is refused then, without a call."""
    fake = node.consensus
    patient(node, monkeypatch)
    held, hold = await hold_both_calls(node)
    queued = await queue_behind_the_calls(node, monkeypatch, b"queued")
    fake.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    hold.set()
    assert [status for status, _ in await asyncio.gather(*held)] == [429, 429]
    status, reply = await asyncio.wait_for(queued, TIMEOUT)
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
    assert "behind its offered load" in reply["error"]["message"], reply
    assert fake.submit_calls == [1, 1] and fake.submit_admitted == [False, False]


async def test_a_refusal_by_consensus_while_following_does_not_hold_the_gateway(
    node: Node,
) -> None:
    """A call refused at consensus's door (it turned overloaded as the call arrived) is
    answered 429; the stream, not a hold of the gateway's, says when to send again."""
    fake = node.consensus
    await follow_admission(node)
    fake.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"refused there")})
    assert status == 429
    fake.submit_error = None
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"next")})
    assert status == 202 and len(fake.submit_calls) == 2


async def test_when_the_stream_drops_the_gateway_sends_to_consensus_and_follows_again(
    node: Node,
) -> None:
    """An overloaded state is not kept once the stream that said it is gone: consensus
    decides until the gateway follows it again (it re-subscribes by itself)."""
    fake = node.consensus
    admission = node.gateway.gateway.admission
    await follow_admission(node)
    await turn(node, overloaded=True)
    fake.set_overloaded(False)  # as it will say when the gateway re-subscribes
    fake.drop_admission_watchers()
    await asyncio.wait_for(admission.wait_until(overloaded=False, live=False), TIMEOUT)
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"decided by consensus")})
    assert status == 202 and len(fake.submit_calls) == 1
    await asyncio.wait_for(admission.wait_until(overloaded=False, live=True), TIMEOUT)
    await turn(node, overloaded=True)
    status, _ = await node.post("/v1/vertices", {"payload": b64(b"refused again")})
    assert status == 429 and len(fake.submit_calls) == 1


async def test_a_refusal_leaves_nothing_for_the_cyclic_collector(node: Node) -> None:
    """A refused submission is freed as soon as it is answered: its error does not keep,
    through its traceback, the frames it went through (and the request they hold) in a
    reference cycle. Under overload such cycles made the collector pause the gateway's
    event loop for 50-100 ms at a time, and every answer, a 429 too, waited for it.
    Over gRPC the call ends with its status set rather than by an abort, whose error
    grpcio keeps in the call's state (another cycle through the frames)."""
    await follow_admission(node)
    await turn(node, overloaded=True)
    request = gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"grpc"))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage
    try:
        for i in range(10):
            status, _ = await node.post("/v1/vertices", {"payload": b64(b"r%d" % i)})
            assert status == 429
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await node.stub.SubmitVertex(request, timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gc.collect()
        left = Counter(
            type(o).__name__
            for o in gc.garbage
            if isinstance(o, (BaseException, web.Request, types.FrameType))
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not left, f"refusals left in reference cycles: {dict(left)}"


async def test_a_node_cut_off_from_its_peers_sends_clients_elsewhere_instead_of_429(
    node: Node,
) -> None:
    """An audit (2026-12-04): a node cut off from the cluster (or refused by its peers)
    answered "429 overloaded, retry with backoff" to every client, since its requests
    wait, while its /readyz said cut off. While consensus says overloaded, the gateway
    checks the node's quorum as /readyz does: cut off, it answers 503 not_ready naming
    the reason, so that a client goes to another node; connected again, 429 as before."""
    fake = node.consensus
    await follow_admission(node)
    fake.connected_peers = 1  # of 3: with itself, 2 of the 3 a quorum of 4 needs
    fake.refusing_peers = 2  # the other two ban it
    await turn(node, overloaded=True)

    async def answer() -> tuple[int, Any]:
        return await node.post("/v1/vertices", {"payload": b64(b"cut off")})

    deadline = asyncio.get_running_loop().time() + TIMEOUT
    status, reply = await answer()
    while status == 429:  # until the quorum check (a status call) has answered
        assert asyncio.get_running_loop().time() < deadline, reply
        await asyncio.sleep(0.05)
        status, reply = await answer()
    assert (status, reply["error"]["code"]) == (503, "not_ready"), reply
    assert reply["error"]["message"] == (
        "this node is cut off from the cluster: it is connected to 1 of its 3 peers (2 of "
        "them ban this node), and a quorum needs 2; submit through another node"
    )
    status, reply = await node.get("/v1/status")
    assert [p["refuses_this_node"] for p in reply["peers"]] == [False, True, True]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.stub.SubmitVertex(
            gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"grpc")),
            timeout=TIMEOUT,
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert fake.submit_calls == []
    # connected again, and still overloaded: 429 once the next check has answered
    fake.connected_peers = 3
    status, reply = await answer()
    while status == 503:
        assert asyncio.get_running_loop().time() < deadline + TIMEOUT, reply
        await asyncio.sleep(0.1)
        status, reply = await answer()
    assert (status, reply["error"]["code"]) == (429, "overloaded"), reply
