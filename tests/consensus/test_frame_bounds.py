"""A Byzantine primary cannot make honest VIEW-CHANGEs too large to send, and a Byzantine
responder cannot throttle a lagging replica's state transfer.

The harness here has the transport's frame limit (``max_frame``: a larger message is
never sent, as ``TransportNode`` refuses it) and signatures as large as ML-DSA-87's.
"""

from __future__ import annotations

from cretoai.config import new_view_bytes_bound
from cretoai.crypto.backend import SIGNATURE_SIZE
from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    CheckpointProofEnvelope,
    PrePrepare,
    Request,
    SignedEnvelope,
    StateRequestEnvelope,
    StateResponseEnvelope,
    TransferBatch,
)
from services.consensus.sim.crypto import FastScheme, fast_request_hash
from tests.consensus.harness import Cluster, request, sign, wire

MAX_FRAME = 4 * 1024 * 1024  # transport.max_frame_bytes, the default


def test_a_primary_filling_the_window_cannot_block_the_view_change() -> None:
    """It pre-prepares full batches for every seq of the window but the first, then goes
    silent: the backups prepare them all and execute nothing, so each VIEW-CHANGE carries
    window - 1 prepared certificates. At the node's window for 4 validators (48) it and
    the NEW-VIEW fit a frame; at the old default (256) they were 4.8 MB, never sent, and
    no view change ever completed."""
    window, count = 48, 256  # cretoai.config picks 48 for 4 validators (test_config.py)
    assert new_view_bytes_bound(4, window, count) <= MAX_FRAME
    c = Cluster(
        4,
        scheme=FastScheme(4, seed=1, signature_size=SIGNATURE_SIZE),
        request_timeout=10,
        checkpoint_interval=16,
        watermark_window=window,
        batch_max_count=count,
        batch_max_bytes=1_048_576,
    )
    c.max_frame = MAX_FRAME
    byzantine = 0
    c.crash(byzantine)  # hears nothing; what it "sends" is injected
    for seq in range(2, window + 1):
        # 140 hashes: about what 1 MiB of real (8.3-KB) vertices holds
        bodies = [f"v-{seq}-{k}".encode() for k in range(140)]
        reqs = tuple(Request(hash=fast_request_hash(b), body=b) for b in bodies)
        hashes = tuple(r.hash for r in reqs)
        pp = PrePrepare(view=0, seq=seq, digest=batch_digest(hashes), request_hashes=hashes)
        data = wire(SignedEnvelope(sign(c, byzantine, pp), reqs))
        for j in (1, 2, 3):
            c.inject(byzantine, j, data)
    c.deliver()
    for j in (1, 2, 3):
        assert sum(s.prepared is not None for s in c.replica(j)._slots.values()) == window - 1
    r = request("r")
    c.propose(1, r)
    c.tick(300)
    assert c.oversized == []
    for j in (1, 2, 3):
        assert c.replica(j).view >= 1 and c.replica(j).active
        assert c.executed_hashes(j)[-1:] == [r.hash]


def test_a_byzantine_responder_cannot_throttle_a_state_transfer() -> None:
    """It sends the lagging replica the checkpoint proof with itself listed first, then
    answers each state request with one batch just before the retry timer. Asking it
    again after each answer kept every request with it: 11 of 40 batches in 200 ticks."""
    byzantine, lagging = 1, 3
    c = Cluster(4, batch_max_count=1)
    c.isolate(lagging)
    for i in range(40):
        c.propose(0, request(i))
        c.tick(1)
    c.tick(5)
    assert c.replica(0).stable_seq == 40
    c.heal()
    c.cut |= {(byzantine, lagging), (lagging, byzantine)}  # its own code stays out of it
    seen, due, start = len(c.sent), [], c.now  # the first request goes out at the inject
    proof = tuple(sorted(c.replica(byzantine)._stable_proof, key=lambda p: p.signer != byzantine))
    c.inject(byzantine, lagging, wire(CheckpointProofEnvelope(proof)))
    retry = 2 * c.replica(lagging).config.status_interval
    while c.now - start < 200 and c.replica(lagging).last_executed < 40:
        c.tick(1)
        for k in range(seen, len(c.sent)):
            who, w = c.sent[k]
            if (who, w.to) == (lagging, byzantine) and isinstance(w.envelope, StateRequestEnvelope):
                due.append((c.sent_at[k] + retry - 2, w.envelope.from_seq))
        seen = len(c.sent)
        for at, seq in [d for d in due if d[0] <= c.now]:
            due.remove((at, seq))
            done = c.log(byzantine)[seq - 1]
            batch = TransferBatch(requests=done.requests, certificate=done.certificate)
            c.inject(byzantine, lagging, wire(StateResponseEnvelope((batch,))))
    assert c.replica(lagging).last_executed == 40
    assert c.now - start <= 60
