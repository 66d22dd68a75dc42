"""The values the core consumes and produces: requests, PBFT messages, envelopes.

Protocol messages (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)
only ever exist inside a :class:`Signed`, which keeps the exact bytes that were
signed. Envelope kinds are what travels between replicas; ``codec`` converts
all of them to and from ``cretoai.v1.pbft_pb2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

HASH_SIZE = 32


@dataclass(frozen=True, slots=True)
class Request:
    """A client request (a serialized vertex), opaque to the core.

    Whoever builds one guarantees ``hash`` is the request's hash of ``body``
    (the codec computes it on decode; the driver on ``propose``).
    """

    hash: bytes
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(frozen=True, slots=True)
class PrePrepare:
    view: int
    seq: int
    digest: bytes
    request_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Prepare:
    view: int
    seq: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    view: int
    seq: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    state_digest: bytes


M_co = TypeVar("M_co", covariant=True)


@dataclass(frozen=True, slots=True)
class Signed(Generic[M_co]):
    """A protocol message with the exact signed bytes, the signature and the signer."""

    body: bytes
    signature: bytes
    signer: int
    msg: M_co


@dataclass(frozen=True, slots=True)
class PreparedCert:
    """A signed PRE-PREPARE and q-1 matching signed PREPAREs from distinct backups."""

    pre_prepare: Signed[PrePrepare]
    prepares: tuple[Signed[Prepare], ...]

    @property
    def view(self) -> int:
        return self.pre_prepare.msg.view

    @property
    def seq(self) -> int:
        return self.pre_prepare.msg.seq

    @property
    def digest(self) -> bytes:
        return self.pre_prepare.msg.digest


@dataclass(frozen=True, slots=True)
class ViewChange:
    new_view: int
    stable_seq: int
    checkpoint_proof: tuple[Signed[Checkpoint], ...]
    prepared: tuple[PreparedCert, ...]


@dataclass(frozen=True, slots=True)
class NewView:
    view: int
    view_changes: tuple[Signed[ViewChange], ...]
    pre_prepares: tuple[Signed[PrePrepare], ...]


Message: TypeAlias = PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView


@dataclass(frozen=True, slots=True)
class Certificate:
    """A finality certificate: q signed COMMITs for one (view, seq, digest)."""

    view: int
    seq: int
    digest: bytes
    commits: tuple[Signed[Commit], ...]


# --- envelope kinds (what step() accepts and Ready.send carries) ------------------


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    """A signed protocol message; beside a PRE-PREPARE, the bodies of its requests."""

    signed: Signed[Message]
    requests: tuple[Request, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestsEnvelope:
    """Client requests forwarded to the primary or relayed to every replica."""

    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class BatchEnvelope:
    """The bodies of one batch, in order."""

    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class EvidenceEnvelope:
    """Two conflicting messages signed by one replica."""

    first: Signed[Message]
    second: Signed[Message]


@dataclass(frozen=True, slots=True)
class StatusEnvelope:
    view: int
    active: bool
    last_executed: int
    stable_seq: int


@dataclass(frozen=True, slots=True)
class CheckpointProofEnvelope:
    checkpoints: tuple[Signed[Checkpoint], ...]


@dataclass(frozen=True, slots=True)
class StateRequestEnvelope:
    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class TransferBatch:
    requests: tuple[Request, ...]
    certificate: Certificate


@dataclass(frozen=True, slots=True)
class StateResponseEnvelope:
    batches: tuple[TransferBatch, ...]


Envelope: TypeAlias = (
    SignedEnvelope
    | RequestsEnvelope
    | BatchEnvelope
    | EvidenceEnvelope
    | StatusEnvelope
    | CheckpointProofEnvelope
    | StateRequestEnvelope
    | StateResponseEnvelope
)
