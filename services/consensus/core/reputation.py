"""Fault accounting per peer: counters by kind, a reputation score, bans.

Scores start at 0 and only fall. Provable misbehaviour costs points; a peer
below the configured threshold is banned (its messages are dropped) until the
replica restarts, except for equivocation, whose evidence is persisted and
re-bans on restart. Rejections an honest but lagging peer also causes (stale
views, sequence numbers outside the watermarks) are counted but free, unless
a peer sends more of them per status interval than any honest peer would
(flooding).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultKind(enum.Enum):
    #: The outer signature did not verify (reported by the driver).
    INVALID_SIGNATURE = "invalid_signature"
    #: Undecodable or structurally wrong bytes.
    MALFORMED = "malformed"
    #: A message claiming a signer outside the validator set.
    NON_MEMBER = "non_member"
    #: Well-formed and signed, but against the protocol (e.g. a PRE-PREPARE
    #: from a replica that is not the primary, a digest that does not match).
    PROTOCOL = "protocol"
    #: A nested certificate, proof, evidence or transferred batch that does not verify.
    INVALID_PROOF = "invalid_proof"
    #: Two conflicting signed messages (self-proving evidence).
    EQUIVOCATION = "equivocation"
    #: For a view or sequence number we have left behind.
    STALE = "stale"
    #: Above the high watermark.
    OUT_OF_WINDOW = "out_of_window"
    #: A CHECKPOINT whose state digest contradicts the one a quorum proved for that seq
    #: (a lying or diverged replica).
    DIVERGENT_CHECKPOINT = "divergent_checkpoint"
    #: Too many free rejections within one status interval.
    FLOODING = "flooding"


PENALTY: dict[FaultKind, int] = {
    FaultKind.INVALID_SIGNATURE: 25,
    FaultKind.MALFORMED: 25,
    FaultKind.NON_MEMBER: 25,
    FaultKind.PROTOCOL: 25,
    FaultKind.INVALID_PROOF: 25,
    FaultKind.EQUIVOCATION: 1_000_000,
    FaultKind.STALE: 0,
    FaultKind.OUT_OF_WINDOW: 0,
    FaultKind.DIVERGENT_CHECKPOINT: 25,
    FaultKind.FLOODING: 10,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault charged to ``peer``; ``score`` is its reputation afterwards."""

    peer: int
    kind: FaultKind
    score: int


class Reputation:
    def __init__(self, *, n: int, threshold: int, flood_allowance: int) -> None:
        self._threshold = threshold
        self._flood_allowance = flood_allowance
        self.scores = [0] * n
        self.counts: dict[tuple[int, FaultKind], int] = {}
        self.banned: set[int] = set()
        self._free: list[int] = [0] * n

    def charge(self, peer: int, kind: FaultKind) -> tuple[list[Fault], bool]:
        """Record one fault; return the faults charged and whether ``peer`` is newly banned."""
        faults = [self._charge(peer, kind)]
        if PENALTY[kind] == 0:
            self._free[peer] += 1
            if self._free[peer] == self._flood_allowance + 1:
                faults.append(self._charge(peer, FaultKind.FLOODING))
        if peer not in self.banned and self.scores[peer] < self._threshold:
            self.banned.add(peer)
            return faults, True
        return faults, False

    def _charge(self, peer: int, kind: FaultKind) -> Fault:
        self.counts[peer, kind] = self.counts.get((peer, kind), 0) + 1
        self.scores[peer] -= PENALTY[kind]
        return Fault(peer=peer, kind=kind, score=self.scores[peer])

    def new_window(self) -> None:
        """Start a new flood-accounting window (one status interval)."""
        self._free = [0] * len(self._free)
