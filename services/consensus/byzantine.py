"""Byzantine behaviours for cluster tests: a node that lies on purpose.

Active only when the node's config has ``[fault_injection] enabled = true`` and
``byzantine`` set to one of :data:`MODES`; never in a production config. They
act on what the honest replica would send:

- ``equivocate``: as primary, send half the replicas a conflicting PRE-PREPARE
  (a different batch for the same view and seq) and a COMMIT for it;
- ``forge``: corrupt the signature of every other signed message, and send a forged
  copy of its last signed message beside each STATUS (a forger that fell behind keeps
  forging);
- ``flood``: besides the honest traffic, send each peer garbage and replays;
- ``hoard``: besides the honest traffic, forward every peer fresh, validly signed
  vertices of 200 KB (a client key of its own): requests an honest replica must
  verify and may order, sent faster than a batch executes, to fill its memory;
- ``vouch``: as primary, add to every PRE-PREPARE a copy of a fresh vertex whose
  signature does not verify, and vouch for every copy it sends (a lie about that
  one): one member's claim must never make a copy valid (f+1 are needed).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from services.consensus.core.codec import encode_body, encode_envelope, envelope_to_pb
from services.consensus.core.crypto import Signer, batch_digest
from services.consensus.core.messages import (
    Commit,
    Envelope,
    Message,
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
    StatusEnvelope,
)
from services.consensus.core.ready import Outbound
from services.consensus.vouches import claim_message

MODES = ("equivocate", "forge", "flood", "hoard", "vouch")
FLOOD_COPIES = 20
#: ``hoard``: vertices per burst, their payload, and the bursts in all (one per
#: outbound envelope): 60 x 4 x 200 KB = 48 MB of valid requests at most.
HOARD_VERTICES = 4
HOARD_PAYLOAD_BYTES = 200_000
HOARD_BURSTS = 60


def _forged(signed: Signed[Message]) -> Signed[Message]:
    """``signed`` with its signature corrupted."""
    signature = bytearray(signed.signature)
    signature[len(signature) // 2] ^= 0xFF
    return Signed(
        body=signed.body, signature=bytes(signature), signer=signed.signer, msg=signed.msg
    )


class Byzantine:
    """Rewrites a replica's outbound envelopes into ``(to, payload)`` pairs that lie."""

    def __init__(
        self,
        mode: str,
        *,
        replica_id: int,
        n: int,
        signer: Signer,
        vouch_signer: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown byzantine mode {mode!r} (expected one of {MODES})")
        self.mode = mode
        self._id = replica_id
        self._n = n
        self._signer = signer
        self._vouch_signer = vouch_signer
        self._rng = random.Random(replica_id)
        self._count = 0
        self._hoarded = 0
        self._last_signed: Signed[Message] | None = None
        self._lie: (
            tuple[tuple[int, int, tuple[bytes, ...]], Signed[Message], Request, tuple[bytes, ...]]
            | None
        ) = None
        self._garbage_key: Any = None

    def _sign(self, msg: Message) -> Signed[Message]:
        body = encode_body(msg)
        return Signed(body=body, signature=self._signer.sign(body), signer=self._id, msg=msg)

    def rewrite(self, out: Outbound) -> Iterator[tuple[int | None, bytes]]:
        env = out.envelope
        honest = encode_envelope(env)
        self._count += 1
        if self.mode == "forge" and isinstance(env, SignedEnvelope):
            self._last_signed = env.signed
            if self._count % 2:
                yield out.to, encode_envelope(SignedEnvelope(_forged(env.signed), env.requests))
                return
        if self.mode == "forge" and isinstance(env, StatusEnvelope) and self._last_signed:
            # a forger that fell behind (banned by one peer, it gets no PRE-PREPARE from
            # it) signs little: it keeps forging beside its STATUS, so every peer sees it
            yield out.to, honest
            yield out.to, encode_envelope(SignedEnvelope(_forged(self._last_signed)))
            return
        if self.mode == "hoard":
            yield out.to, honest
            if self._hoarded < HOARD_BURSTS:
                self._hoarded += 1
                yield None, encode_envelope(RequestsEnvelope(self._hoard()))
            return
        if self.mode == "flood":
            yield out.to, honest
            for _ in range(FLOOD_COPIES):
                yield out.to, honest  # replays
                yield out.to, self._rng.randbytes(self._rng.randint(1, 512))  # garbage
            return
        if (
            self.mode == "vouch"
            and isinstance(env, SignedEnvelope)
            and isinstance(env.signed.msg, PrePrepare)
            and env.signed.msg.request_hashes
        ):
            yield out.to, self._vouch_garbage(env, env.signed.msg)
            return
        if (
            self.mode == "equivocate"
            and isinstance(env, SignedEnvelope)
            and isinstance(env.signed.msg, PrePrepare)
            and env.signed.msg.request_hashes
        ):
            yield from self._equivocate(env, env.signed.msg, honest, out.to)
            return
        yield out.to, honest

    def _vouch_garbage(self, env: SignedEnvelope, pp: PrePrepare) -> bytes:
        """``pp`` with one badly signed copy more (the same for every peer), its bodies,
        and this replica's claim that every copy in it is valid."""
        key = (pp.view, pp.seq, pp.request_hashes)
        if self._lie is None or self._lie[0] != key:
            garbage = self._garbage()
            hashes = (*pp.request_hashes, garbage.hash)
            lie = PrePrepare(
                view=pp.view, seq=pp.seq, digest=batch_digest(hashes), request_hashes=hashes
            )
            self._lie = (key, self._sign(lie), garbage, hashes)
        _, signed, garbage, hashes = self._lie
        pb = envelope_to_pb(SignedEnvelope(signed, (*env.requests, garbage)))
        if self._vouch_signer is not None:  # a valid signature on a lie
            pb.vouch.copies.extend(hashes)
            pb.vouch.signer = self._id
            pb.vouch.signature = self._vouch_signer(claim_message(hashes))
        return pb.SerializeToString()

    def _garbage(self) -> Request:
        """A fresh vertex of a key of this replica's own, its signature corrupted."""
        from cretoai.crypto import get_backend
        from cretoai.crypto.keys import NodeKey
        from cretoai.vertex import make_vertex, signed_digest

        if self._garbage_key is None:
            self._garbage_key = NodeKey(
                private=get_backend("auto").private_key_from_seed(os.urandom(32)),
                path=Path("<vouch>"),
            )
        vertex = make_vertex(
            self._garbage_key, self._rng.randbytes(64), [], int(time.time() * 1000)
        )
        signature = bytearray(vertex.signature)
        signature[len(signature) // 2] ^= 0xFF
        vertex.signature = bytes(signature)
        return Request(hash=signed_digest(vertex), body=vertex.SerializeToString())

    def _hoard(self) -> tuple[Request, ...]:
        """Fresh vertices, validly signed by a client key of this replica's own."""
        from cretoai.crypto import get_backend
        from cretoai.crypto.keys import NodeKey
        from cretoai.vertex import make_vertex, signed_digest

        key = NodeKey(
            private=get_backend("auto").private_key_from_seed(os.urandom(32)),
            path=Path("<hoard>"),
        )
        now = int(time.time() * 1000)
        vertices = [
            make_vertex(key, self._rng.randbytes(HOARD_PAYLOAD_BYTES), [], now + i)
            for i in range(HOARD_VERTICES)
        ]
        return tuple(Request(hash=signed_digest(v), body=v.SerializeToString()) for v in vertices)

    def _equivocate(
        self, env: SignedEnvelope, pp: PrePrepare, honest: bytes, to: int | None
    ) -> Iterator[tuple[int | None, bytes]]:
        """The PRE-PREPARE goes out as one multicast (``to`` None) or once per peer
        (each with the bodies that peer lacks): either way the victims get the
        conflicting one, with the bodies at hand that it names."""
        hashes = pp.request_hashes[:-1] if len(pp.request_hashes) > 1 else ()
        kept = set(hashes)
        alt = PrePrepare(
            view=pp.view, seq=pp.seq, digest=batch_digest(hashes), request_hashes=hashes
        )
        alt_env: Envelope = SignedEnvelope(
            self._sign(alt), tuple(r for r in env.requests if r.hash in kept)
        )
        commit: Envelope = SignedEnvelope(
            self._sign(Commit(view=pp.view, seq=pp.seq, digest=alt.digest))
        )
        others = [j for j in range(self._n) if j != self._id]
        victims = set(others[: max(1, len(others) // 2)])
        for j in others if to is None else [to]:
            if j in victims:
                yield j, encode_envelope(alt_env)
                yield j, encode_envelope(commit)
            else:
                yield j, honest
