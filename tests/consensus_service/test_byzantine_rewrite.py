"""The test clusters' lying primary (``equivocate``) still lies when its PRE-PREPAREs
go out once per peer (each with the bodies that peer lacks), not only as a multicast."""

from __future__ import annotations

from services.consensus.byzantine import Byzantine
from services.consensus.core.codec import decode_envelope, encode_body
from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import Commit, PrePrepare, Signed, SignedEnvelope
from services.consensus.core.ready import Outbound
from services.consensus.sim.crypto import FastScheme, fast_request_hash
from tests.consensus.harness import request

SCHEME = FastScheme(4, seed=7)
REQUESTS = (request("a"), request("b"), request("c"))


def _pre_prepare() -> Signed[PrePrepare]:
    hashes = tuple(r.hash for r in REQUESTS)
    msg = PrePrepare(view=0, seq=1, digest=batch_digest(hashes), request_hashes=hashes)
    body = encode_body(msg)
    return Signed(body=body, signature=SCHEME.signer(0).sign(body), signer=0, msg=msg)


def _sent(byz: Byzantine, out: Outbound) -> list[tuple[int | None, object]]:
    return [
        (to, decode_envelope(data, request_hash=fast_request_hash).signed.msg)  # type: ignore[union-attr]
        for to, data in byz.rewrite(out)
    ]


def _lying_primary() -> Byzantine:
    return Byzantine("equivocate", replica_id=0, n=4, signer=SCHEME.signer(0))


def test_a_multicast_pre_prepare_is_split_into_conflicting_ones() -> None:
    pp = _pre_prepare()
    sent = _sent(_lying_primary(), Outbound(None, SignedEnvelope(pp, REQUESTS)))
    to_victim = [m for to, m in sent if to == 1]
    assert isinstance(to_victim[0], PrePrepare) and to_victim[0].digest != pp.msg.digest
    assert to_victim[1] == Commit(view=0, seq=1, digest=to_victim[0].digest)
    assert [m for to, m in sent if to in (2, 3)] == [pp.msg, pp.msg]


def test_a_per_peer_pre_prepare_to_a_victim_conflicts_too() -> None:
    pp = _pre_prepare()
    byz = _lying_primary()
    # peer 1 forwarded "a" itself: its envelope lacks that body
    to_victim = list(byz.rewrite(Outbound(1, SignedEnvelope(pp, REQUESTS[1:]))))
    alt = decode_envelope(to_victim[0][1], request_hash=fast_request_hash)
    assert isinstance(alt, SignedEnvelope) and isinstance(alt.signed.msg, PrePrepare)
    assert alt.signed.msg.request_hashes == pp.msg.request_hashes[:-1]
    assert alt.signed.msg.digest != pp.msg.digest
    # the bodies beside it are among those it names (the victim holds "a" in its pool)
    assert {r.hash for r in alt.requests} <= set(alt.signed.msg.request_hashes)
    assert [to for to, _ in to_victim] == [1, 1]
    honest = _sent(byz, Outbound(2, SignedEnvelope(pp, REQUESTS)))
    assert honest == [(2, pp.msg)]


def test_a_hoarder_adds_bursts_of_large_valid_forwards_and_stops_after_its_budget() -> None:
    from cretoai.crypto import get_backend
    from cretoai.v1 import vertex_pb2
    from cretoai.vertex import verify_vertex
    from services.consensus import byzantine as module
    from services.consensus.core.messages import Commit as CommitMsg
    from services.consensus.core.messages import RequestsEnvelope
    from services.consensus.driver import request_hash

    hoarder = Byzantine("hoard", replica_id=3, n=4, signer=SCHEME.signer(3))
    msg = CommitMsg(view=0, seq=1, digest=b"d" * 32)
    body = encode_body(msg)
    honest = SignedEnvelope(
        Signed(body=body, signature=SCHEME.signer(3).sign(body), signer=3, msg=msg)
    )
    sent = list(hoarder.rewrite(Outbound(1, honest)))
    assert len(sent) == 2 and sent[0][0] == 1  # the honest message first, to its peer
    to, data = sent[1]
    assert to is None  # the burst to every peer
    env = decode_envelope(data, request_hash=request_hash)
    assert isinstance(env, RequestsEnvelope) and len(env.requests) == module.HOARD_VERTICES
    backend = get_backend("auto")
    for forwarded in env.requests:
        vertex = vertex_pb2.Vertex.FromString(forwarded.body)
        assert len(vertex.payload) == module.HOARD_PAYLOAD_BYTES
        assert verify_vertex(vertex, backend)  # valid: an honest node must verify and keep it
    hoarder._hoarded = module.HOARD_BURSTS
    assert len(list(hoarder.rewrite(Outbound(1, honest)))) == 1  # its budget is spent
