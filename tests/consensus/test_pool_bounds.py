"""The request pool is bounded in bytes as well as in count, in all and per peer: one
Byzantine replica forwarding large requests cannot fill an honest replica's memory, and
honest requests still get in."""

from __future__ import annotations

import pytest

from cretoai.crypto.backend import get_backend
from cretoai.v1 import vertex_pb2
from services.consensus.core.codec import decode_envelope, encode_body, encode_envelope
from services.consensus.core.config import Config
from services.consensus.core.crypto import CONTEXT, MlDsaSigner, MlDsaVerifier
from services.consensus.core.messages import (
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
)
from services.consensus.core.pool import Pool
from services.consensus.core.replica import ProposeResult, Replica
from services.consensus.driver import request_hash
from services.consensus.sim.crypto import fast_request_hash
from tests.consensus.harness import Cluster

KIB = 1024


def sized(tag: str, size: int) -> Request:
    body = tag.encode().ljust(size, b".")
    return Request(hash=fast_request_hash(body), body=body)


def test_a_peer_holds_at_most_its_share_of_the_pools_bytes() -> None:
    pool = Pool(capacity=1000, per_peer=250, capacity_bytes=100 * KIB, per_peer_bytes=25 * KIB)
    added = 0
    for i in range(100):
        request = sized(f"p1-{i}", 4 * KIB)
        if pool.full_for(1, request.size):
            continue
        pool.add(request, now=0, origin=1, relayed=True)
        added += 1
    assert added == 6  # 6 x 4 KiB <= 25 KiB < 7 x 4 KiB; the count bound (250) is far off
    assert pool.total_bytes == 24 * KIB
    # a smaller one still fits the peer's share; another peer and a local client are not
    # affected by peer 1's flood
    assert not pool.full_for(1, KIB)
    assert not pool.full_for(2, 4 * KIB)
    assert not pool.full_for(None, 50 * KIB)


def test_the_pools_bytes_bound_local_requests_and_executed_ones_free_them() -> None:
    pool = Pool(capacity=1000, per_peer=250, capacity_bytes=20 * KIB, per_peer_bytes=5 * KIB)
    first = sized("a", 12 * KIB)
    pool.add(first, now=0, origin=None, relayed=False)
    assert pool.full_for(None, 9 * KIB)
    assert not pool.full_for(None, 8 * KIB)
    pool.take_batch(max_count=10, max_bytes=64 * KIB)  # assigned: still held
    assert pool.total_bytes == 12 * KIB and pool.pending_bytes == 0
    assert pool.full_for(None, 9 * KIB)
    pool.remove([first.hash])  # executed
    assert pool.total_bytes == 0
    assert not pool.full_for(None, 20 * KIB)
    peer = sized("b", 5 * KIB)
    pool.add(peer, now=0, origin=3, relayed=True)
    assert pool.full_for(3, 1)
    pool.remove([peer.hash])
    assert not pool.full_for(3, 5 * KIB)


def test_a_byzantine_replica_flooding_large_forwards_holds_only_its_share() -> None:
    # per peer: max(batch_max_bytes, pool_max_bytes / n) = max(64, 256) KiB
    c = Cluster(4, batch_max_bytes=64 * KIB, pool_max_bytes=1024 * KIB, batch_timeout=10**6)
    backup = c.replica(1)
    flood = tuple(sized(f"flood-{i}", 60 * KIB) for i in range(200))  # 12 MB
    backup.step(3, RequestsEnvelope(flood))
    status = backup.status()
    assert status.pool_bytes <= 256 * KIB
    assert status.pool_size == 4  # 4 x 60 KiB: the count bound (20,000 / 4) is far off
    assert backup.peer_requests_dropped == 196  # counted (cretoai_consensus_peer_requests_...)
    # an honest peer's relay and a local client's request still get in
    relayed = sized("honest-relay", 60 * KIB)
    backup.step(2, RequestsEnvelope((relayed,)))
    assert backup.status().pool_size == 5
    assert backup.propose(sized("client", 60 * KIB)) == ProposeResult.ACCEPTED
    assert backup.status().pool_bytes == 6 * 60 * KIB


def test_a_local_flood_is_refused_once_the_pool_is_full_in_bytes() -> None:
    c = Cluster(4, batch_max_bytes=64 * KIB, pool_max_bytes=256 * KIB, batch_timeout=10**6)
    backup = c.replica(1)
    results = [backup.propose(sized(f"local-{i}", 60 * KIB)) for i in range(10)]
    assert results[:4] == [ProposeResult.ACCEPTED] * 4
    assert set(results[4:]) == {ProposeResult.POOL_FULL}
    assert backup.status().pool_bytes == 240 * KIB


def test_the_pool_must_hold_at_least_one_batch() -> None:
    with pytest.raises(ValueError, match="pool_max_bytes"):
        Config(n=4, replica_id=0, batch_max_bytes=2 * 1024 * KIB, pool_max_bytes=1024 * KIB)
    assert Config(n=4, replica_id=0, batch_max_bytes=64 * KIB).pool_per_peer_bytes == 16 * KIB**2


def test_messages_for_a_future_view_hold_a_bounded_number_of_body_bytes() -> None:
    """A replica defers a PRE-PREPARE for a view it has not entered with the bodies beside
    it. A Byzantine replica signing PRE-PREPAREs for a view it would lead (nonsense ones:
    they are deferred before any other check) could park 2L+16 frames of bodies per
    sender, gigabytes; the bodies a sender's deferred messages hold are bounded by what
    an honest primary pipelines (``max_inflight_full`` + 1 batches)."""
    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(bytes([i]) * 32) for i in range(4)]
    cfg = Config(n=4, replica_id=1, batch_max_bytes=64 * KIB)
    replica = Replica(
        cfg,
        signer=MlDsaSigner(keys[1]),
        verifier=MlDsaVerifier([k.public_key for k in keys], backend),
    )
    pp = PrePrepare(view=3, seq=2**64 - 1, digest=b"\0" * 32, request_hashes=())
    body = encode_body(pp)
    signed = Signed(body=body, signature=keys[3].sign(body, context=CONTEXT), signer=3, msg=pp)
    sent = 200
    for i in range(sent):
        junk = vertex_pb2.Vertex(payload=i.to_bytes(4, "big") + bytes(60 * KIB))
        wire = encode_envelope(SignedEnvelope(signed, (Request(b"", junk.SerializeToString()),)))
        replica.step(3, decode_envelope(wire, request_hash=request_hash))
    deferred = replica._future[3]
    held = sum(r.size for env in deferred for r in env.requests)
    assert held <= cfg.batch_max_bytes * (cfg.max_inflight_full + 1)
    assert 0 < len(deferred) < sent
    # the newest are kept (the oldest go first)
    newest = vertex_pb2.Vertex.FromString(deferred[-1].requests[0].body).payload[:4]
    assert int.from_bytes(newest, "big") == sent - 1
