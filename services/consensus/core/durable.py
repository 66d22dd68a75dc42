"""The replica's durable records: keys, values, and parsing them back on restart.

Keys (ASCII, fixed-width numbers so that they sort)::

    view                                  ViewState
    stable                                CheckpointProof (the stable checkpoint)
    new_view                              SignedMessage: the NEW-VIEW accepted for `view`
    own/<kind>/<view:020>/<seq:020>       SignedMessage that this replica signed
    prepared/<seq:020>                    PreparedCertificate (highest view prepared)
    batch/<digest hex>                    VotedBatch: the requests of a batch voted for
    evidence/<signer:010>                 Evidence against a replica
    signed_mark                           SigningMark: the highest view and seq signed
    signing_floor                         SigningMark: never sign at or below (a rollback)
    view_floor_pending                    present while a fresh replica has not yet learned
                                          its view floor from its peers (``Replica._fresh``)

``kind`` is pre_prepare, prepare, commit, checkpoint, view_change or new_view
(seq 0 for the last two).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError as _ProtobufDecodeError

from cretoai.protowire import tag, varint
from cretoai.v1 import pbft_pb2, vertex_pb2
from services.consensus.core.codec import (
    DecodeError,
    decode_signed,
    prepared_from_bytes,
    prepared_to_bytes,
    signed_from_pb,
    signed_to_pb,
)
from services.consensus.core.crypto import GENESIS_STATE
from services.consensus.core.messages import (
    Checkpoint,
    Commit,
    EvidenceEnvelope,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    Signed,
    ViewChange,
)

VIEW_KEY = "view"
STABLE_KEY = "stable"
NEW_VIEW_KEY = "new_view"
SIGNED_MARK_KEY = "signed_mark"
SIGNING_FLOOR_KEY = "signing_floor"
VIEW_FLOOR_PENDING_KEY = "view_floor_pending"

_KINDS: dict[type, str] = {
    PrePrepare: "pre_prepare",
    Prepare: "prepare",
    Commit: "commit",
    Checkpoint: "checkpoint",
    ViewChange: "view_change",
    NewView: "new_view",
}


class CorruptState(Exception):
    """Durable records that cannot be parsed or contradict each other."""


def message_kind(msg: Message) -> str:
    return _KINDS[type(msg)]


def own_key(kind: str, view: int, seq: int) -> str:
    return f"own/{kind}/{view:020d}/{seq:020d}"


def prepared_key(seq: int) -> str:
    return f"prepared/{seq:020d}"


def batch_key(digest: bytes) -> str:
    return f"batch/{digest.hex()}"


def encode_batch(requests: tuple[Request, ...]) -> bytes:
    """``VotedBatch(request_hashes=…, request_bodies=…)`` serialized, byte for byte, by
    concatenation: each body copied once (a message copies them in, then out again)."""
    parts: list[bytes] = []
    for r in requests:
        parts += (_HASHES_TAG, varint(len(r.hash)), r.hash)
    for r in requests:
        parts += (_BODIES_TAG, varint(len(r.body)), r.body)
    return b"".join(parts)


#: VotedBatch's ``request_hashes`` and ``request_bodies`` (cretoai/v1/pbft.proto).
_HASHES_TAG, _BODIES_TAG = tag(1), tag(2)


def evidence_key(signer: int) -> str:
    return f"evidence/{signer:010d}"


def encode_view(view: int, active: bool) -> bytes:
    return pbft_pb2.ViewState(view=view, active=active).SerializeToString()


def encode_signed(signed: Signed[Message]) -> bytes:
    return signed_to_pb(signed).SerializeToString()


def encode_stable(proof: tuple[Signed[Checkpoint], ...]) -> bytes:
    return pbft_pb2.CheckpointProof(
        checkpoints=[signed_to_pb(c) for c in proof]
    ).SerializeToString()


def encode_prepared(cert: PreparedCert) -> bytes:
    return prepared_to_bytes(cert)


def encode_evidence(evidence: EvidenceEnvelope) -> bytes:
    return pbft_pb2.Evidence(
        first=signed_to_pb(evidence.first), second=signed_to_pb(evidence.second)
    ).SerializeToString()


@dataclass(frozen=True, slots=True, order=False)
class SigningMark:
    """The highest view and the highest seq of anything a replica signed (separately).

    Every message it ever signed lies at or below both (a VIEW-CHANGE or NEW-VIEW at
    its view; a CHECKPOINT at its seq; a NEW-VIEW's re-issued PRE-PREPAREs too).
    The driver keeps a copy outside storage: when storage comes back older than
    that copy (a restored backup, a reset database), the copy becomes a *floor*
    below which the replica signs nothing (``Replica``).
    """

    view: int = 0
    seq: int = 0

    def join(self, other: SigningMark) -> SigningMark:
        return SigningMark(max(self.view, other.view), max(self.seq, other.seq))

    def exceeds(self, other: SigningMark) -> bool:
        """Whether this mark is above ``other`` in view or in seq."""
        return self.view > other.view or self.seq > other.seq

    def encode(self) -> bytes:
        return self.view.to_bytes(8, "big") + self.seq.to_bytes(8, "big")

    @classmethod
    def decode(cls, value: bytes) -> SigningMark:
        if len(value) != 16:
            raise ValueError(f"a signing mark is 16 bytes, not {len(value)}")
        return cls(int.from_bytes(value[:8], "big"), int.from_bytes(value[8:], "big"))


@dataclass(frozen=True, slots=True)
class ExecutedState:
    """What the application has executed: the last seq and the state digest after it."""

    seq: int = 0
    state_digest: bytes = GENESIS_STATE


@dataclass(slots=True)
class DurableState:
    """The parsed records of one replica."""

    view: int = 0
    active: bool = True
    stable_proof: tuple[Signed[Checkpoint], ...] = ()
    own: dict[tuple[str, int, int], Signed[Message]] = field(default_factory=dict)
    prepared: dict[int, PreparedCert] = field(default_factory=dict)
    evidence: dict[int, EvidenceEnvelope] = field(default_factory=dict)
    new_view: Signed[NewView] | None = None
    batches: dict[bytes, tuple[Request, ...]] = field(default_factory=dict)
    signed_mark: SigningMark | None = None
    signing_floor: SigningMark | None = None
    view_floor_pending: bool = False


def parse_records(records: Mapping[str, bytes]) -> DurableState:
    """Parse the records a replica persisted; raise CorruptState when they are not valid."""
    state = DurableState()
    try:
        for key, value in records.items():
            _parse_one(state, key, value)
    except (DecodeError, _ProtobufDecodeError, ValueError) as exc:
        raise CorruptState(f"unreadable consensus record: {exc}") from exc
    return state


def _parse_one(state: DurableState, key: str, value: bytes) -> None:
    if key == VIEW_KEY:
        vs = pbft_pb2.ViewState.FromString(value)
        state.view, state.active = vs.view, vs.active
    elif key == STABLE_KEY:
        proof = pbft_pb2.CheckpointProof.FromString(value)
        state.stable_proof = tuple(signed_from_pb(c, Checkpoint) for c in proof.checkpoints)
    elif key == NEW_VIEW_KEY:
        state.new_view = signed_from_pb(vertex_pb2.SignedMessage.FromString(value), NewView)
    elif key.startswith("own/"):
        _, kind, view, seq = key.split("/")
        signed = decode_signed(vertex_pb2.SignedMessage.FromString(value))
        if message_kind(signed.msg) != kind:
            raise CorruptState(f"record {key} holds a {type(signed.msg).__name__}")
        state.own[kind, int(view), int(seq)] = signed
    elif key.startswith("prepared/"):
        state.prepared[int(key.split("/")[1])] = prepared_from_bytes(value)
    elif key.startswith("batch/"):
        vb = pbft_pb2.VotedBatch.FromString(value)
        if len(vb.request_hashes) != len(vb.request_bodies):
            raise CorruptState(f"record {key} pairs {len(vb.request_hashes)} hashes with bodies")
        state.batches[bytes.fromhex(key.split("/")[1])] = tuple(
            Request(hash=h, body=b)
            for h, b in zip(vb.request_hashes, vb.request_bodies, strict=True)
        )
    elif key == SIGNED_MARK_KEY:
        state.signed_mark = SigningMark.decode(value)
    elif key == SIGNING_FLOOR_KEY:
        state.signing_floor = SigningMark.decode(value)
    elif key == VIEW_FLOOR_PENDING_KEY:
        state.view_floor_pending = True
    elif key.startswith("evidence/"):
        ev = pbft_pb2.Evidence.FromString(value)
        state.evidence[int(key.split("/")[1])] = EvidenceEnvelope(
            first=decode_signed(ev.first), second=decode_signed(ev.second)
        )
    else:
        raise CorruptState(f"unknown consensus record {key!r}")
