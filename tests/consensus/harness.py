"""An in-memory cluster for unit tests: FIFO delivery, pumped until quiet (no sleeps).

Like etcd raft's test network: links can be cut, replicas isolated, crashed
and restarted from what they persisted. Every message crosses the real codec.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from services.consensus.core.codec import encode_body, encode_envelope
from services.consensus.core.config import Config
from services.consensus.core.messages import (
    Checkpoint,
    Commit,
    Envelope,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    Signed,
    SignedEnvelope,
    ViewChange,
)
from services.consensus.core.ready import Committed, Ready
from services.consensus.core.replica import ProposeResult
from services.consensus.sim.crypto import FastScheme, Scheme, fast_request_hash
from services.consensus.sim.node import Node, Wire

BASE = Config(
    n=4,
    replica_id=0,
    batch_max_count=4,
    batch_max_bytes=4096,
    batch_timeout=1,
    checkpoint_interval=4,
    watermark_window=8,
    view_change_timeout=20,
    max_backoff=3,
    request_timeout=30,
    progress_timeout=12,
    status_interval=10,
    # a fresh primary would wait for its peers' STATUS before proposing; the tests that
    # start a cluster and propose at once would wait a status interval for nothing
    fresh_start_asks_peers=False,
)


def request(i: int | str) -> Request:
    body = f"request-{i}".encode()
    return Request(hash=fast_request_hash(body), body=body)


class Cluster:
    def __init__(self, n: int = 4, *, scheme: Scheme | None = None, **overrides: Any) -> None:
        self.n = n
        self.scheme = scheme or FastScheme(n, seed=1)
        self.nodes = [
            Node(
                replace(BASE, n=n, replica_id=i, **overrides),
                self.scheme,
                fast_request_hash,
            )
            for i in range(n)
        ]
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.cut: set[tuple[int, int]] = set()
        #: Every Ready drained, per replica (for assertions on faults, bans, evidence).
        self.readies: list[list[Ready]] = [[] for _ in range(n)]
        #: Every wire sent, in order: (from, wire), and the tick it was sent at.
        self.sent: list[tuple[int, Wire]] = []
        self.sent_at: list[int] = []
        #: Drops a message when it returns True for (from, to, envelope).
        self.blocked: Callable[[int, int, Envelope | None], bool] | None = None
        #: As the transport: a message larger than this is never sent (None: no limit);
        #: each is listed in ``oversized`` as (from, message kind, bytes).
        self.max_frame: int | None = None
        self.oversized: list[tuple[int, str, int]] = []
        self.now = 0

    def replica(self, i: int):
        return self.nodes[i].replica

    def log(self, i: int) -> list[Committed]:
        return self.nodes[i].log

    def drain(self, i: int) -> None:
        node = self.nodes[i]
        rd, wires = node.drain()
        self.readies[i].append(rd)
        for w in wires:
            self.sent.append((i, w))
            self.sent_at.append(self.now)
            if self.max_frame is not None and len(w.data) > self.max_frame:
                env = w.envelope
                kind = type(env.signed.msg if isinstance(env, SignedEnvelope) else env).__name__
                self.oversized.append((i, kind, len(w.data)))
                continue
            targets = range(self.n) if w.to is None else [w.to]
            for j in targets:
                if j != i and not (self.blocked and self.blocked(i, j, w.envelope)):
                    self.queue.append((i, j, w.data))

    def deliver(self, max_messages: int = 100_000) -> int:
        """Deliver queued messages (and what they cause) until quiet."""
        count = 0
        for i in range(self.n):
            if self.nodes[i].up:
                self.drain(i)
        while self.queue and count < max_messages:
            src, dst, data = self.queue.popleft()
            count += 1
            if (src, dst) in self.cut or not self.nodes[dst].up or not self.nodes[src].up:
                continue
            self.nodes[dst].receive(src, data)
            self.drain(dst)
        return count

    def inject(self, src: int, dst: int, data: bytes) -> None:
        self.nodes[dst].receive(src, data)
        self.drain(dst)

    def tick(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.now += 1
            for i, node in enumerate(self.nodes):
                if node.up:
                    node.replica.tick()
                    self.drain(i)
            self.deliver()

    def propose(self, i: int, req: Request) -> object:
        result = self.nodes[i].replica.propose(req)
        self.drain(i)
        return result

    def propose_burst(self, i: int, reqs: list[Request]) -> list[ProposeResult]:
        """Several requests in one driver burst: all proposed, then one drain."""
        results = [self.nodes[i].replica.propose(r) for r in reqs]
        self.drain(i)
        return results

    def isolate(self, i: int) -> None:
        for j in range(self.n):
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, i: int) -> None:
        self.nodes[i].crash()

    def restart(self, i: int) -> None:
        self.nodes[i].restart()
        self.drain(i)

    def executed_hashes(self, i: int) -> list[bytes]:
        return [r.hash for c in self.log(i) for r in c.requests]

    def digests(self, i: int) -> list[bytes]:
        return [c.digest for c in self.log(i)]


M = TypeVar("M", PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)


def sign(cluster: Cluster, signer: int, msg: M) -> Signed[M]:
    """``msg`` signed by replica ``signer`` of ``cluster``."""
    body = encode_body(msg)
    return Signed(
        body=body, signature=cluster.scheme.signer(signer).sign(body), signer=signer, msg=msg
    )


def wire(env: Envelope) -> bytes:
    return encode_envelope(env)


def sent_kinds(cluster: Cluster, src: int | None = None) -> list[str]:
    """Names of the signed messages sent so far (optionally by one replica), in order."""
    out = []
    for who, w in cluster.sent:
        if (src is None or who == src) and isinstance(w.envelope, SignedEnvelope):
            out.append(type(w.envelope.signed.msg).__name__)
    return out


def signed_messages(c: Cluster, src: int, kind: type) -> list[Signed[Message]]:
    """The signed messages of ``kind`` replica ``src`` sent so far, in order."""
    return [
        w.envelope.signed
        for who, w in c.sent
        if who == src
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, kind)
    ]


def leave_3_behind(c: Cluster, requests: int, *, via: int = 0, settle: int = 5) -> None:
    """Replica 3 cut off while ``requests`` requests (one a tick, through ``via``) are
    ordered by the others, then ``settle`` more ticks; it is reconnected after."""
    c.isolate(3)
    for i in range(requests):
        c.propose(via, request(i))
        c.tick()
    c.tick(settle)
    c.heal()
