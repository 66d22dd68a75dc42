"""Participants of a simulation: honest replicas and Byzantine variants of them.

Every Byzantine actor runs the honest core underneath (so it keeps the
protocol going where that suits it) and subverts its input or output: an
equivocating primary, a censoring primary, a forger (bad signatures, replays,
garbage, forged proofs, floods), a silent replica, and twins (two honest
instances sharing one key, which end up signing conflicting messages).
"""

from __future__ import annotations

import random
from collections import deque

from cretoai.v1 import pbft_pb2, vertex_pb2
from services.consensus.core import codec
from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    Certificate,
    Commit,
    EvidenceEnvelope,
    Message,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
    StateResponseEnvelope,
    TransferBatch,
    ViewChange,
)
from services.consensus.core.ready import Ready
from services.consensus.sim.crypto import Scheme, fast_request_hash
from services.consensus.sim.node import Node, Wire


class Actor:
    """An honest replica: a Node driven as the real driver would."""

    kind = "honest"
    honest = True

    def __init__(self, node: Node, scheme: Scheme, rng: random.Random) -> None:
        self.node = node
        self.index = node.index
        self.scheme = scheme
        self.rng = rng

    @property
    def up(self) -> bool:
        return self.node.up

    def receive(self, sender: int, data: bytes) -> None:
        self.node.receive(sender, data)

    def tick(self) -> None:
        self.node.replica.tick()

    def propose(self, request: Request) -> None:
        """A client's submission (verified first, as the consensus service does)."""
        self.node.submit(request)

    def drain(self) -> tuple[Ready, list[Wire]]:
        return self.node.drain()

    def _sign(self, msg: Message, signer: int | None = None) -> Signed[Message]:
        body = codec.encode_body(msg)
        signature = self.scheme.signer(self.index).sign(body)
        return Signed(
            body=body,
            signature=signature,
            signer=self.index if signer is None else signer,
            msg=msg,
        )


class Silent(Actor):
    """Receives and computes, sends nothing (a stalled primary when it leads)."""

    kind = "silent"
    honest = False

    def drain(self) -> tuple[Ready, list[Wire]]:
        rd, _ = self.node.drain()
        return rd, []


def censored(request_hash: bytes) -> bool:
    return request_hash[0] % 2 == 0


class Censor(Actor):
    """Never orders about half of the requests (those whose hash starts even)."""

    kind = "censor"
    honest = False

    def propose(self, request: Request) -> None:
        if not censored(request.hash):
            super().propose(request)

    def receive(self, sender: int, data: bytes) -> None:
        try:
            env = codec.decode_envelope(data, request_hash=fast_request_hash)
        except codec.DecodeError:
            return
        if isinstance(env, RequestsEnvelope):
            kept = tuple(r for r in env.requests if not censored(r.hash))
            if not kept:
                return
            data = codec.encode_envelope(RequestsEnvelope(kept))
        super().receive(sender, data)


class Equivocator(Actor):
    """As primary, sends a conflicting PRE-PREPARE (and COMMIT) to part of the replicas."""

    kind = "equivocate"
    honest = False

    def drain(self) -> tuple[Ready, list[Wire]]:
        rd, wires = self.node.drain()
        out: list[Wire] = []
        n = self.node.config.n
        for wire in wires:
            env = wire.envelope
            if (
                wire.to is not None
                or not isinstance(env, SignedEnvelope)
                or not isinstance(env.signed.msg, PrePrepare)
                or self.rng.random() < 0.2
            ):
                out.append(wire)
                continue
            pp = env.signed.msg
            others = [j for j in range(n) if j != self.index]
            victims = set(self.rng.sample(others, self.rng.randint(1, max(1, len(others) - 1))))
            requests = env.requests[:-1] if len(env.requests) > 1 else (self._fabricated(pp),)
            hashes = tuple(r.hash for r in requests)
            alt = PrePrepare(
                view=pp.view, seq=pp.seq, digest=batch_digest(hashes), request_hashes=hashes
            )
            alt_env = SignedEnvelope(self._sign(alt), requests)
            commit = SignedEnvelope(self._sign(Commit(view=pp.view, seq=pp.seq, digest=alt.digest)))
            for j in others:
                if j in victims:
                    out.append(Wire(j, codec.encode_envelope(alt_env), alt_env))
                    out.append(Wire(j, codec.encode_envelope(commit), commit))
                else:
                    out.append(Wire(j, wire.data, env))
        return rd, out

    def _fabricated(self, pp: PrePrepare) -> Request:
        body = f"fabricated/{self.index}/{pp.view}/{pp.seq}".encode()
        return Request(hash=fast_request_hash(body), body=body)


class Forger(Actor):
    """Participates, and now and then sends something bad to a random peer."""

    kind = "forge"
    honest = False
    RATE = 0.08

    def __init__(self, node: Node, scheme: Scheme, rng: random.Random) -> None:
        super().__init__(node, scheme, rng)
        self._inbox: deque[bytes] = deque(maxlen=64)
        self._outbox: deque[Wire] = deque(maxlen=16)
        self._pending: list[Wire] = []
        self.attacks: dict[str, int] = {}

    def receive(self, sender: int, data: bytes) -> None:
        self._inbox.append(data)
        super().receive(sender, data)

    def tick(self) -> None:
        super().tick()
        if self.rng.random() < self.RATE:
            name, wires = self._attack()
            self.attacks[name] = self.attacks.get(name, 0) + 1
            self._pending.extend(wires)

    def drain(self) -> tuple[Ready, list[Wire]]:
        rd, wires = self.node.drain()
        self._outbox.extend(w for w in wires if isinstance(w.envelope, SignedEnvelope))
        wires.extend(self._pending)
        self._pending = []
        return rd, wires

    def _peer(self) -> int:
        return self.rng.choice([j for j in range(self.node.config.n) if j != self.index])

    def _attack(self) -> tuple[str, list[Wire]]:
        rng = self.rng
        cfg = self.node.config
        replica = self.node.replica
        to = self._peer()
        name = rng.choice(ATTACKS)
        if name == "garbage":
            data = rng.randbytes(rng.randint(0, 64))
        elif name == "truncated" and self._outbox:
            whole = rng.choice(self._outbox).data
            data = whole[: rng.randint(0, max(0, len(whole) - 1))]
        elif name == "bad_signature" and self._outbox:
            pb = pbft_pb2.ConsensusEnvelope.FromString(rng.choice(self._outbox).data)
            sig = bytearray(pb.signed.signature)
            sig[rng.randrange(len(sig))] ^= 0xFF
            pb.signed.signature = bytes(sig)
            data = pb.SerializeToString()
        elif name in ("impersonate", "non_member"):
            other = to if name == "impersonate" else cfg.n + 3
            msg = Prepare(view=replica.view, seq=replica.stable_seq + 1, digest=bytes(32))
            data = codec.encode_envelope(SignedEnvelope(self._sign(msg, signer=other)))
        elif name == "replay" and self._inbox:
            return name, [Wire(None, rng.choice(self._inbox), None)]
        elif name == "flood" and self._inbox:
            batch = list(self._inbox)
            return name, [Wire(to, rng.choice(batch), None) for _ in range(200)]
        elif name == "out_of_window":
            seq = replica.stable_seq + 100 * cfg.watermark_window
            msg = Prepare(view=replica.view, seq=seq, digest=bytes(32))
            data = codec.encode_envelope(SignedEnvelope(self._sign(msg)))
        elif name == "forged_view_change":
            data = codec.encode_envelope(SignedEnvelope(self._sign(self._forged_view_change())))
        elif name == "bogus_evidence" and self._outbox:
            env = rng.choice(self._outbox).envelope
            assert isinstance(env, SignedEnvelope)
            data = codec.encode_envelope(EvidenceEnvelope(env.signed, env.signed))
        elif name == "bogus_certificate":
            data = codec.encode_envelope(self._bogus_state_response())
        elif name == "malformed_nested":
            bad = vertex_pb2.SignedMessage(body=b"\xff\xff", signature=b"", signer=self.index)
            data = pbft_pb2.ConsensusEnvelope(
                evidence=pbft_pb2.Evidence(first=bad, second=bad)
            ).SerializeToString()
        else:
            data = codec.encode_envelope(RequestsEnvelope((self._junk_request(),)))
            name = "junk_request"
        return name, [Wire(to, data, None)]

    def _forged_view_change(self) -> ViewChange:
        replica = self.node.replica
        seq = replica.stable_seq + 1
        pp = PrePrepare(view=replica.view, seq=seq, digest=batch_digest(()), request_hashes=())
        fake = Signed(
            body=codec.encode_body(pp),
            signature=self.rng.randbytes(32),
            signer=self.node.config.primary(replica.view),
            msg=pp,
        )
        prepares = tuple(
            Signed(
                body=codec.encode_body(
                    Prepare(view=replica.view, seq=seq, digest=batch_digest(()))
                ),
                signature=self.rng.randbytes(32),
                signer=j,
                msg=Prepare(view=replica.view, seq=seq, digest=batch_digest(())),
            )
            for j in range(self.node.config.n)
            if j != fake.signer
        )
        return ViewChange(
            new_view=replica.view + 1,
            stable_seq=0,
            checkpoint_proof=(),
            prepared=(PreparedCert(pre_prepare=fake, prepares=prepares),),
        )

    def _bogus_state_response(self) -> StateResponseEnvelope:
        replica = self.node.replica
        seq = replica.last_executed + 1
        req = self._junk_request()
        digest = batch_digest((req.hash,))
        commits = tuple(
            Signed(
                body=codec.encode_body(Commit(view=replica.view, seq=seq, digest=digest)),
                signature=self.rng.randbytes(32),
                signer=j,
                msg=Commit(view=replica.view, seq=seq, digest=digest),
            )
            for j in range(self.node.config.n)
        )
        cert = Certificate(view=replica.view, seq=seq, digest=digest, commits=commits)
        return StateResponseEnvelope((TransferBatch(requests=(req,), certificate=cert),))

    def _junk_request(self) -> Request:
        body = b"junk/" + self.rng.randbytes(8)
        return Request(hash=fast_request_hash(body), body=body)


ATTACKS = (
    "garbage",
    "truncated",
    "bad_signature",
    "impersonate",
    "non_member",
    "replay",
    "flood",
    "out_of_window",
    "forged_view_change",
    "bogus_evidence",
    "bogus_certificate",
    "malformed_nested",
    "junk_request",
)


class Withholder(Actor):
    """Takes part in consensus as an honest replica, but never serves state: a lagging
    replica that asks it gets no answer (an audit, 2026-12-04: asked first at every new
    checkpoint, such a replica kept a lagging one from catching up)."""

    kind = "withhold"
    honest = False

    def drain(self) -> tuple[Ready, list[Wire]]:
        rd, wires = self.node.drain()
        return rd, [w for w in wires if not isinstance(w.envelope, StateResponseEnvelope)]


class Twin(Actor):
    """One of two honest instances sharing a key and an index (together: one faulty replica)."""

    kind = "twin"
    honest = False


BYZANTINE: dict[str, type[Actor]] = {
    "equivocate": Equivocator,
    "censor": Censor,
    "forge": Forger,
    "silent": Silent,
    "twin": Twin,
    "withhold": Withholder,
}
