"""A Byzantine peer's messages cannot silence or stop an honest replica's driver.

The driver decodes and verifies each peer envelope in a task of its own and hands
the results to the replica in arrival order (``_deliver_verified``). A message that
made that delivery task fail would leave the replica deaf for good, with health
still SERVING: every such message must become a fault of its sender instead, and a
core task that ends anyway is fatal (the process exits and is restarted), never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from cretoai.channels import service_channel
from cretoai.crypto import NodeKey
from cretoai.crypto.backend import get_backend
from cretoai.v1 import pbft_pb2, storage_pb2, transport_pb2, vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from devkit.storage import make_config as storage_config
from services.consensus.core.codec import (
    DecodeError,
    decode_envelope,
    encode_body,
    encode_envelope,
)
from services.consensus.core.config import Config
from services.consensus.core.crypto import CONTEXT, MlDsaSigner, MlDsaVerifier, batch_digest
from services.consensus.core.messages import (
    BatchEnvelope,
    Checkpoint,
    CheckpointProofEnvelope,
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
    StateRequestEnvelope,
    StatusEnvelope,
)
from services.consensus.core.ready import Outbound, Ready, Record, ServeState
from services.consensus.core.replica import Replica
from services.consensus.core.reputation import Fault, FaultKind
from services.consensus.driver import (
    PERSIST_MAX_BYTES,
    Driver,
    StorageClient,
    persist_writes,
    request_hash,
)
from services.consensus.retry import StorageCallFailed, call_until_done
from services.consensus.service import load_records
from services.consensus.vouches import VOUCH_CONTEXT
from tests.storage.support import start_service
from tests.support.driver import unstarted_driver

TIMEOUT = 10
SAMPLED = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
BYZANTINE = 3


def nested_new_views(depth: int) -> bytes:
    """A signed NEW-VIEW whose VIEW-CHANGE is a NEW-VIEW, ``depth`` times (about 13 B a level)."""
    body = pbft_pb2.PbftMessage(new_view=pbft_pb2.NewView(view=1)).SerializeToString()
    for _ in range(depth):
        inner = vertex_pb2.SignedMessage(body=body, signer=BYZANTINE)
        body = pbft_pb2.PbftMessage(
            new_view=pbft_pb2.NewView(view=1, view_changes=[inner])
        ).SerializeToString()
    signed = vertex_pb2.SignedMessage(body=body, signer=BYZANTINE)
    return pbft_pb2.ConsensusEnvelope(signed=signed).SerializeToString()


def _from(driver: Driver, payload: bytes, carrier: dict[str, str] | None = None) -> Any:
    envelope = transport_pb2.Envelope(payload=payload)
    setattr(envelope, "from", driver.node_ids[BYZANTINE])
    envelope.trace_context.update(carrier or {})
    return envelope


STATUS = encode_envelope(StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=0))


async def _next(driver: Driver) -> Any:
    return await asyncio.wait_for(driver._inbox.get(), TIMEOUT)


@pytest.fixture
async def driver() -> Any:
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)
    fatal: list[str] = []
    driver.on_fatal = fatal.append
    deliver = asyncio.create_task(driver._deliver_verified(), name="verified")
    deliver.add_done_callback(driver._core_task_done)
    yield driver
    assert not deliver.done(), deliver  # delivery never stopped
    assert fatal == [] and driver.halted is None
    deliver.cancel()
    await asyncio.gather(deliver, return_exceptions=True)


def test_nested_signed_messages_are_checked_for_their_kind_before_they_are_decoded() -> None:
    with pytest.raises(DecodeError, match="expected a signed ViewChange, got NewView"):
        decode_envelope(nested_new_views(2), request_hash=request_hash)
    # a few KB that once recursed until the interpreter's stack limit
    with pytest.raises(DecodeError):
        decode_envelope(nested_new_views(2000), request_hash=request_hash)


async def test_deep_nesting_is_a_malformed_message_and_delivery_goes_on(driver: Driver) -> None:
    await driver._on_inbound(_from(driver, nested_new_views(2000)))
    fault = await _next(driver)
    assert (fault.sender, fault.kind) == (BYZANTINE, FaultKind.MALFORMED)
    await driver._on_inbound(_from(driver, STATUS))  # the next message still arrives
    assert isinstance((await _next(driver)).envelope, StatusEnvelope)


async def test_a_trace_context_key_that_is_no_ascii_number_is_ignored(driver: Driver) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: a request's trace context key
    (``r<index>``) must be ASCII digits, or it is skipped."""
    carrier = {"traceparent": SAMPLED, "r²": SAMPLED, "r①": SAMPLED}
    driver.traces.forwarded((), carrier)  # no ValueError
    await driver._on_inbound(_from(driver, encode_envelope(RequestsEnvelope(())), carrier))
    await driver._on_inbound(_from(driver, STATUS))
    assert isinstance((await _next(driver)).envelope, StatusEnvelope)


async def test_a_bug_met_checking_one_message_drops_it_and_is_counted(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = driver._check
    broken = [True]

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        if broken.pop() if broken else False:
            raise RuntimeError("a bug")
        return await check(*args, **kwargs)

    monkeypatch.setattr(driver, "_check", fails_once)
    before = REGISTRY.get_sample_value(
        "cretoai_consensus_replica_failures_total", {"kind": "check"}
    )
    await driver._on_inbound(_from(driver, STATUS))  # meets the bug: dropped
    await driver._on_inbound(_from(driver, STATUS))
    assert isinstance((await _next(driver)).envelope, StatusEnvelope)
    assert driver._inbox.empty()
    after = REGISTRY.get_sample_value("cretoai_consensus_replica_failures_total", {"kind": "check"})
    assert after == (before or 0) + 1


async def test_a_core_task_that_ends_is_fatal_never_silent() -> None:
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)
    fatal: list[str] = []
    driver.on_fatal = fatal.append

    async def dies() -> None:
        raise RuntimeError("lost")

    task = asyncio.create_task(dies(), name="verified")
    task.add_done_callback(driver._core_task_done)
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert driver.halted is not None and "task verified ended: RuntimeError: lost" in driver.halted
    assert fatal == [driver.halted]


def _vertex_body() -> bytes:
    key = NodeKey(private=get_backend("auto").private_key_from_seed(bytes(32)), path=Path("<c>"))
    return make_vertex(key, b"payload", [], 1_000).SerializeToString()


@pytest.mark.parametrize(
    "change",
    [
        lambda body: body + b"\x7a\x03pad",  # an unknown field 15
        lambda body: body + b"\x20\x01",  # timestamp_ms (field 4) again: the last one wins
        lambda body: b"\x20\x01" + body,  # a field out of order
    ],
    ids=["unknown-field", "repeated-field", "reordered"],
)
def test_a_request_body_must_be_its_vertexs_canonical_encoding(change: Any) -> None:
    """The request hash covers the vertex's fields, not the bytes: a padded or re-encoded
    copy parses to a vertex with the same hash but is other bytes (honest replicas would
    store different bytes for one batch). Such a body is no request."""
    body = _vertex_body()
    vertex = vertex_pb2.Vertex.FromString(body)
    assert request_hash(body) == signed_digest(vertex)
    other = change(body)
    assert other != body
    with pytest.raises(ValueError, match="canonical"):
        request_hash(other)


async def test_padded_request_bodies_are_the_senders_fault(driver: Driver) -> None:
    body = _vertex_body()
    padded = body + b"\x7a\x03pad"
    envelope = RequestsEnvelope((Request(hash=request_hash(body), body=padded),))
    await driver._on_inbound(_from(driver, encode_envelope(envelope)))
    fault = await _next(driver)
    assert (fault.sender, fault.kind) == (BYZANTINE, FaultKind.MALFORMED)
    assert driver._inbox.empty()


def _burst(keys: list[Any], count: int) -> list[SignedEnvelope]:
    """``count`` PRE-PREPAREs of replica 0 in view 0, each a rotation of the same ~1 MiB
    of bodies (a digest of its own, bodies that cost the primary nothing)."""
    bodies = [vertex_pb2.Vertex(payload=os.urandom(7_000)).SerializeToString() for _ in range(140)]
    requests = [Request(hash=request_hash(b), body=b) for b in bodies]
    out = []
    for seq in range(1, count + 1):
        order = requests[seq:] + requests[:seq]
        hashes = tuple(r.hash for r in order)
        pp = PrePrepare(view=0, seq=seq, digest=batch_digest(hashes), request_hashes=hashes)
        body = encode_body(pp)
        signed = Signed(body=body, signature=keys[0].sign(body, context=CONTEXT), signer=0, msg=pp)
        out.append(SignedEnvelope(signed, tuple(order)))
    return out


async def test_a_burst_of_pre_prepares_is_persisted_in_writes_the_channel_takes(
    tmp_path: Path,
) -> None:
    """A (Byzantine) primary's burst of full PRE-PREPAREs makes one Ready persist ~20 MiB of
    batch bodies: one WriteState of that size was refused by the storage channel (16 MiB)
    and retried forever, the replica silently wedged. It goes in writes under the limit,
    bodies first, against the real storage service over the channel consensus uses."""
    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(bytes([i]) * 32) for i in range(4)]
    public = [k.public_key for k in keys]
    driver = unstarted_driver(Config(n=4, replica_id=1), tick_ms=10)
    driver.replica = Replica(
        Config(n=4, replica_id=1),
        signer=MlDsaSigner(keys[1]),
        verifier=MlDsaVerifier(public, backend),
    )
    storage = await start_service(storage_config(tmp_path))
    channel = service_channel(f"127.0.0.1:{storage.service.port}")  # consensus's limits
    try:
        driver._storage = StorageClient(channel)
        for envelope in _burst(keys, 20):
            driver.replica.step(0, envelope)
        ready = driver.replica.ready()
        batches = [r for r in ready.persist if r.key.startswith("batch/")]
        assert len(batches) == 20 and sum(len(r.value or b"") for r in batches) > 16 * 2**20
        encoded = persist_writes(ready.persist)
        writes = [storage_pb2.WriteStateRequest.FromString(w) for w in encoded]
        assert len(writes) > 1 and all(len(w) <= PERSIST_MAX_BYTES + 2**20 for w in encoded)
        assert [e.key for w in writes for e in w.puts] == [
            r.key.encode() for r in ready.persist if r.value is not None
        ]
        await asyncio.wait_for(driver._carry_out(ready), TIMEOUT)
        stored = await load_records(driver._storage)
        final = {r.key: r.value for r in ready.persist}  # a key written twice: the last value
        assert {k: stored.get(k) for k in final} == final
    finally:
        await channel.close()
        await storage.stop()


def test_a_message_over_the_channel_limit_is_not_retried_forever() -> None:
    async def too_large() -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="CLIENT: Sent message larger than max (17825811 vs. 16777216)",
        )

    with pytest.raises(StorageCallFailed, match="larger than max"):
        asyncio.run(call_until_done(too_large, what="persist"))


def test_a_split_persist_ends_in_the_state_one_write_would_make() -> None:
    """One WriteState applies its deletes, then its puts; split, deletes go last, minus
    the keys the Ready also puts."""
    records = [
        Record("batch/a", b"x" * 600),
        Record("own/prepare/1", b"p"),
        Record("batch/old", None),
        Record("batch/b", b"y" * 600),
        Record("batch/a", None),  # deleted after its put, in one Ready: the put wins
    ]
    one = persist_writes(records, max_bytes=10_000)
    split = persist_writes(records, max_bytes=700)
    assert len(one) == 1 and len(split) == 2

    def apply(encoded: list[bytes]) -> dict[bytes, bytes]:
        state = {b"batch/old": b"old", b"batch/a": b"older"}
        for write in map(storage_pb2.WriteStateRequest.FromString, encoded):
            for key in write.deletes:
                state.pop(key, None)
            for entry in write.puts:
                state[entry.key] = entry.value
        return state

    assert (
        apply(split)
        == apply(one)
        == {
            b"batch/a": b"x" * 600,
            b"own/prepare/1": b"p",
            b"batch/b": b"y" * 600,
        }
    )
    assert not any(storage_pb2.WriteStateRequest.FromString(w).deletes for w in split[:-1])


async def test_a_flood_of_state_requests_is_served_one_at_a_time_per_peer() -> None:
    """Each STATE-REQUEST became a background read of up to 64 batches: 2,000 requests of a
    few bytes started 2,000 reads. A peer's next transfer starts once its last is sent."""
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)
    replica = driver.replica
    replica._applied = replica._last_exec = 64  # as if it executed 64 batches
    gate = asyncio.Event()
    reads: list[int] = []

    async def slow_read(from_seq: int, to_seq: int = 0) -> Any:  # storage under load
        reads.append(from_seq)
        await gate.wait()
        return
        yield

    driver.feed.read = slow_read  # type: ignore[method-assign]
    for _ in range(200):
        replica.step(BYZANTINE, StateRequestEnvelope(from_seq=1, to_seq=2**64 - 1))
    replica.step(2, StateRequestEnvelope(from_seq=1, to_seq=10))
    ready = replica.ready()
    assert len(ready.serve) == 201
    before = REGISTRY.get_sample_value("cretoai_consensus_state_requests_dropped_total") or 0
    await driver._carry_out(ready)
    await asyncio.sleep(0)
    assert len(driver._side_tasks) == 2 and len(reads) == 2  # one per peer
    dropped = REGISTRY.get_sample_value("cretoai_consensus_state_requests_dropped_total")
    assert dropped == before + 199
    gate.set()
    await asyncio.gather(*list(driver._side_tasks))
    assert driver._serving == set()  # the next request is served again


async def test_a_peer_draws_repair_no_faster_than_its_budget() -> None:
    """A STATE-REQUEST or a STATUS that shows a peer behind draws megabytes for a few
    bytes: a Byzantine member asking thousands of times drew 232 MB in 20 s and grew
    every honest consensus process to about 2 GB (audit, 2026-12-04). Each peer may now
    draw twice ``transfer_max_bytes`` at once, then that much per status interval;
    others are not held back, nor is what is not repair."""
    now = [1000.0]
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10, clock=lambda: now[0])
    config = driver.replica.config
    body = b"x" * (config.transfer_max_bytes // 2 - 4096)  # a bit under 1 MiB
    answer = RequestsEnvelope((Request(hash=bytes(32), body=body),))
    size = len(encode_envelope(answer))

    def flood(count: int) -> Ready:
        return Ready(
            send=(
                *(Outbound(BYZANTINE, answer, repair=True) for _ in range(count)),
                Outbound(2, answer, repair=True),  # an honest peer catching up
                Outbound(BYZANTINE, answer),  # not repair: a forward, a PRE-PREPARE's bodies
            )
        )

    def queued() -> dict[str, int]:
        counts: dict[str, int] = {}
        while driver.link._outbound:
            to = driver.link._outbound.popleft().to
            counts[to] = counts.get(to, 0) + 1
        driver.link._outbound_bytes = 0
        return counts

    def throttled() -> float:
        name = driver.names[BYZANTINE]
        sample = "cretoai_consensus_repair_throttled_total"
        return REGISTRY.get_sample_value(sample, {"peer": name}) or 0.0

    byzantine, honest = driver.node_ids[BYZANTINE], driver.node_ids[2]
    before = throttled()
    await driver._carry_out(flood(200))
    at_once = -(-2 * config.transfer_max_bytes // size)  # the burst, the last one whole
    assert queued() == {byzantine: at_once + 1, honest: 1}
    assert throttled() == before + 200 - at_once
    # one status interval later: about transfer_max_bytes more, not 200 answers
    now[0] += config.status_interval * driver._tick_s
    await driver._carry_out(flood(200))
    assert queued()[byzantine] - 1 <= -(-config.transfer_max_bytes // size)
    # state requests too: dropped before any storage read while the budget is spent
    reads: list[int] = []

    async def read(from_seq: int, to_seq: int = 0) -> Any:
        reads.append(from_seq)
        return
        yield

    driver.feed.read = read  # type: ignore[method-assign]
    serve = (ServeState(peer=BYZANTINE, from_seq=1, to_seq=64), ServeState(2, 1, 64))
    await driver._carry_out(Ready(serve=serve))
    await asyncio.gather(*list(driver._side_tasks))
    assert reads == [1]  # the honest peer's


def test_a_flood_of_status_draws_one_checkpoint_proof_per_interval() -> None:
    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(bytes([i]) * 32) for i in range(4)]
    replica = Replica(
        Config(n=4, replica_id=1),
        signer=MlDsaSigner(keys[1]),
        verifier=MlDsaVerifier([k.public_key for k in keys], backend),
    )
    checkpoint = Checkpoint(seq=64, state_digest=b"\1" * 32)
    body = encode_body(checkpoint)
    proof = tuple(
        Signed(body=body, signature=keys[i].sign(body, context=CONTEXT), signer=i, msg=checkpoint)
        for i in (0, 2, 3)
    )
    replica.step(0, CheckpointProofEnvelope(proof))
    replica.ready()

    def proofs_sent() -> int:
        return sum(
            1
            for out in replica.ready().send
            if isinstance(out.envelope, CheckpointProofEnvelope) and out.to == BYZANTINE
        )

    for i in range(200):
        replica.step(
            BYZANTINE, StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=i % 2)
        )
    assert proofs_sent() == 1
    for _ in range(replica.config.status_interval):
        replica.tick()
    replica.step(BYZANTINE, StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=0))
    assert proofs_sent() == 1  # a peer still behind gets it again next interval


async def test_bodies_the_replica_cannot_use_cost_no_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A BATCH's bodies are verified ahead only when a slot waits for that batch, and a
    PRE-PREPARE's only for the hashes it lists: bodies nobody asked for (4 MiB of them
    cost hundreds of ML-DSA-87 verifications) are not verified. An honest relayer may
    carry copies with bad signatures that a primary ordered, so they are no one's fault."""
    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(bytes([i]) * 32) for i in range(4)]
    driver = unstarted_driver(Config(n=4, replica_id=1), tick_ms=10)
    driver.replica = Replica(
        Config(n=4, replica_id=1),
        signer=MlDsaSigner(keys[1]),
        verifier=MlDsaVerifier([k.public_key for k in keys], backend),
    )
    driver._keys = tuple(k.public_key for k in keys)  # the PRE-PREPARE signers
    verified: list[bytes] = []
    verify_all = driver._verify_all

    async def counting(requests: Any, vertices: Any, contents: Any) -> list[bool]:
        verified.extend(r.hash for r in requests)
        result: list[bool] = await verify_all(requests, vertices, contents)
        return result

    monkeypatch.setattr(driver, "_verify_all", counting)
    [pre_prepare] = _burst(keys, 1)
    bodies = pre_prepare.requests[:3]
    # a BATCH no slot waits for: delivered (the replica ignores it), not verified
    step = await driver._check(BYZANTINE, encode_envelope(BatchEnvelope(bodies)))
    assert step is not None and verified == []
    # the PRE-PREPARE alone, its bodies to come: then the batch's bodies are wanted
    pp_only = SignedEnvelope(pre_prepare.signed, ())
    driver.replica.step(0, pp_only)
    pp = pre_prepare.signed.msg
    assert isinstance(pp, PrePrepare) and driver.replica.awaits_batch(pp.digest)
    await driver._check(BYZANTINE, encode_envelope(BatchEnvelope(pre_prepare.requests)))
    assert verified == [r.hash for r in pre_prepare.requests]
    # bodies beside a PRE-PREPARE that it does not list are not verified
    verified.clear()
    stranger = Request(hash=request_hash(_vertex_body()), body=_vertex_body())
    padded = SignedEnvelope(pre_prepare.signed, (*bodies, stranger))
    await driver._check(0, encode_envelope(padded))
    assert verified == [r.hash for r in bodies]


async def test_stop_ends_a_task_that_swallowed_its_cancellation() -> None:
    """Python 3.11's ``wait_for`` can lose a cancellation that races its timeout (the
    ticker waits in one): stop cancels again instead of waiting on it for ever, which
    held a container's stop until it was killed (exit 137)."""
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # as a wait_for that lost the race returns instead
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    driver._tasks = [task]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(driver.stop(), 6)
    assert loop.time() - started < 4  # cancelled again after a second, not waited on
    assert swallowed.is_set() and task.cancelled()


async def test_only_faults_that_cost_reputation_count_as_byzantine_events() -> None:
    """Honest peers send stale and out-of-window messages when retransmissions cross: a
    healthy cluster must not show them as Byzantine events, but they are still counted."""
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)
    peer = driver.names[BYZANTINE]

    def sample(name: str, kind: FaultKind) -> float:
        return REGISTRY.get_sample_value(name, {"peer": peer, "kind": kind.value}) or 0.0

    byzantine = "cretoai_consensus_byzantine_events_total"
    late = "cretoai_consensus_late_messages_total"
    kinds = (FaultKind.STALE, FaultKind.OUT_OF_WINDOW, FaultKind.PROTOCOL)
    before = {(name, kind): sample(name, kind) for name in (byzantine, late) for kind in kinds}
    faults = tuple(Fault(BYZANTINE, kind, score=0) for kind in kinds)
    await driver._carry_out(Ready(faults=faults))
    moved = {key for key, value in before.items() if sample(*key) != value}
    assert moved == {
        (late, FaultKind.STALE),
        (late, FaultKind.OUT_OF_WINDOW),
        (byzantine, FaultKind.PROTOCOL),
    }


async def test_a_side_task_failing_on_an_unavailable_service_is_a_warning_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A storage killed while a state transfer was being served logged "background task
    failed" at error level with a full traceback (crash audit, 2026-12-04): a service
    restarting is not a bug. A bug still is one."""
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)

    async def storage_restarting() -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="Connection refused",
        )

    async def a_bug() -> None:
        raise ValueError("a bug")

    with caplog.at_level(logging.WARNING, logger="services.consensus.driver"):
        driver._background(storage_restarting())
        driver._background(a_bug())
        await asyncio.gather(*list(driver._side_tasks), return_exceptions=True)
        await asyncio.sleep(0)
    records = [r for r in caplog.records if "background task failed" in r.getMessage()]
    assert [(r.levelno, r.exc_info is not None) for r in records] == [
        (logging.WARNING, False),
        (logging.ERROR, True),
    ]


@pytest.mark.parametrize(
    "vouched",
    [[b"\x01" * 31], [os.urandom(32) for _ in range(4097)]],
    ids=["short_digest", "too_many"],
)
async def test_malformed_claims_of_validity_are_the_senders_fault(vouched: list[bytes]) -> None:
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10, vouches=True)
    deliver = asyncio.create_task(driver._deliver_verified())
    try:
        vouch = pbft_pb2.Vouch(copies=vouched, signer=BYZANTINE, signature=b"\x00" * 4627)
        bad = pbft_pb2.ConsensusEnvelope(requests=pbft_pb2.Requests(), vouch=vouch)
        await driver._on_inbound(_from(driver, bad.SerializeToString()))
        fault = await _next(driver)
        assert (fault.sender, fault.kind) == (BYZANTINE, FaultKind.MALFORMED)
        assert driver._verifier.vouches is not None and len(driver._verifier.vouches) == 0
    finally:
        deliver.cancel()
        await asyncio.gather(deliver, return_exceptions=True)


async def test_a_claim_counts_for_the_member_whose_signature_it_carries() -> None:
    """A claim is the signer's, verified with its key: the transport's word on who sent
    it is not enough (a compromised transport could name any member), and a claim that
    does not verify is its sender's fault and records nothing."""
    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(os.urandom(32)) for _ in range(4)]
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10, vouches=True, keys=keys)
    deliver = asyncio.create_task(driver._deliver_verified())
    copy = b"\x02" * 32

    def claim(signer: int, key_index: int) -> bytes:
        signature = keys[key_index].sign(copy, context=VOUCH_CONTEXT)
        vouch = pbft_pb2.Vouch(copies=[copy], signer=signer, signature=signature)
        return pbft_pb2.ConsensusEnvelope(
            requests=pbft_pb2.Requests(), vouch=vouch
        ).SerializeToString()

    try:
        vouches = driver._verifier.vouches
        assert vouches is not None
        # sent by BYZANTINE, naming member 2, signed with BYZANTINE's own key: a forgery
        await driver._on_inbound(_from(driver, claim(2, BYZANTINE)))
        fault = await _next(driver)
        assert (fault.sender, fault.kind) == (BYZANTINE, FaultKind.INVALID_SIGNATURE)
        assert vouches.count(copy) == 0
        # member 2's real claim, whoever carried it, counts for member 2
        await driver._on_inbound(_from(driver, claim(2, 2)))
        await driver._on_inbound(_from(driver, claim(BYZANTINE, BYZANTINE)))
        await driver._on_inbound(_from(driver, STATUS))  # delivered in order after them
        assert isinstance((await _next(driver)).envelope, StatusEnvelope)
        assert vouches.count(copy) == 2 and vouches.vouched(copy)
    finally:
        deliver.cancel()
        await asyncio.gather(deliver, return_exceptions=True)


async def test_a_claim_on_a_copy_found_invalid_is_charged_to_its_claimant() -> None:
    """A member's signed claim that a badly signed copy is valid is a lie an honest member
    never tells (it vouches only for copies it verified): charged to the claimant, whether
    the claim arrives after this node found the copy invalid or before, and never counted."""
    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(os.urandom(32)) for _ in range(4)]
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10, vouches=True, keys=keys)
    deliver = asyncio.create_task(driver._deliver_verified())
    client = NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<c>"))
    first, second = (make_vertex(client, b"lie %d" % i, [], 1_700_000_000_000) for i in (1, 2))
    for vertex in (first, second):
        vertex.signature = bytes(len(vertex.signature))  # no valid signature

    def claim(vertex: vertex_pb2.Vertex) -> bytes:
        copies = [signed_digest(vertex)]
        signature = keys[BYZANTINE].sign(copies[0], context=VOUCH_CONTEXT)
        vouch = pbft_pb2.Vouch(copies=copies, signer=BYZANTINE, signature=signature)
        return pbft_pb2.ConsensusEnvelope(
            requests=pbft_pb2.Requests(), vouch=vouch
        ).SerializeToString()

    async def verify(vertex: vertex_pb2.Vertex) -> list[bool]:
        return await driver._verifier.verify_vertices(
            [vertex], [signed_digest(vertex)], [vertex_hash(vertex)]
        )

    try:
        vouches = driver._verifier.vouches
        assert vouches is not None
        # found invalid first, then the claim arrives
        assert await verify(first) == [False]
        await driver._on_inbound(_from(driver, claim(first)))
        fault = await _next(driver)
        assert (fault.sender, fault.kind) == (BYZANTINE, FaultKind.INVALID_SIGNATURE)
        assert vouches.count(signed_digest(first)) == 0
        # the claim first (f claims: not adopted), then the copy is verified and found invalid
        await driver._on_inbound(_from(driver, claim(second)))
        await driver._on_inbound(_from(driver, STATUS))
        assert isinstance((await _next(driver)).envelope, StatusEnvelope)
        assert vouches.count(signed_digest(second)) == 1
        assert await verify(second) == [False]
        fault = await _next(driver)
        assert (fault.sender, fault.kind) == (BYZANTINE, FaultKind.INVALID_SIGNATURE)
        assert vouches.count(signed_digest(second)) == 0
    finally:
        deliver.cancel()
        await asyncio.gather(deliver, return_exceptions=True)
