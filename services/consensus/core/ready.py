"""The output of the state machine, drained as one :class:`Ready` value.

The fields are in the order of the driver's obligations: write ``persist``
(synced) and ``signed_mark`` (to its file outside storage) before sending
anything in ``send``; execute ``execute`` after that,
in order; then act on the rest (serve state transfer, report metrics, tell
the transport about bans).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.consensus.core.durable import SigningMark
from services.consensus.core.messages import Certificate, Envelope, EvidenceEnvelope, Request
from services.consensus.core.reputation import Fault


@dataclass(frozen=True, slots=True)
class Record:
    """A durable key/value record; ``value`` None deletes the key."""

    key: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Outbound:
    """An envelope for replica ``to``, or for every other replica when ``to`` is None.

    ``repair``: it repeats what ``to`` should already have (batches, resent slots), drawn
    by that peer's own STATUS or request; the driver bounds such bytes per peer, so a
    peer cannot draw them faster than it could use them."""

    to: int | None
    envelope: Envelope
    repair: bool = False


@dataclass(frozen=True, slots=True)
class Committed:
    """A batch to execute at ``seq`` (they come strictly in sequence order).

    The application decides each request's outcome, extends the state digest
    (``crypto.next_state_digest`` over the outcomes), stores it with the batch, and
    reports it with ``Replica.applied(seq, state_digest)``, in sequence order.
    """

    seq: int
    digest: bytes
    requests: tuple[Request, ...]
    certificate: Certificate


@dataclass(frozen=True, slots=True)
class ServeState:
    """A peer asked for the finalized batches ``from_seq..to_seq`` (all executed here).

    The driver reads them (with their certificates) from storage and sends a
    ``StateResponseEnvelope`` to ``peer``.
    """

    peer: int
    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class Ready:
    persist: tuple[Record, ...] = ()
    send: tuple[Outbound, ...] = ()
    execute: tuple[Committed, ...] = ()
    serve: tuple[ServeState, ...] = ()
    #: New equivocation evidence (already in ``persist`` and ``send``).
    evidence: tuple[EvidenceEnvelope, ...] = ()
    faults: tuple[Fault, ...] = ()
    #: Peers banned by this Ready (their later messages are dropped).
    bans: tuple[int, ...] = ()
    #: The new signing mark, when it rose: write it durably before sending.
    signed_mark: SigningMark | None = None

    def __bool__(self) -> bool:
        return bool(
            self.signed_mark is not None
            or self.persist
            or self.send
            or self.execute
            or self.serve
            or self.evidence
            or self.faults
            or self.bans
        )
