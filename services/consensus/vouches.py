"""Vouches: which members said they verified a signed copy of a vertex and found it valid.

A vertex's ML-DSA-87 signature is the node's largest cost per vertex, and verifying
it at every replica is more than safety needs: a verdict is a function of the copy's
exact bytes, so f+1 members that each claim "I verified this copy, it is valid"
include an honest one, whose claim is the truth. A replica holding f+1 such claims
for a copy (by its signed digest, never by content) takes it as valid without
verifying it; with fewer it verifies, as before.

Who claims (``Driver``): the entry node, when it forwards a client's copies to the
primary, vouches for them to the other replicas; the primary vouches for the bodies
it sends beside a PRE-PREPARE, and the f replicas after the primary for its own
clients' copies. A backup that holds f+1 claims takes the batch's copies as valid: at
n = 4 a vertex is verified twice in the cluster instead of four times. For small
groups (``Vouches.min_copies``, ``consensus.vouch_min_copies``) nothing is sent on
its own and every copy is verified as before: the extra messages cost more than the
verifications they save (one-vertex requests at 200/s: p50 +40 %).
An invalid copy is never vouched for by an honest member, so it is always verified
(and rejected) where it matters.

A claim is signed by its claimant (ML-DSA-87, context ``cretoai.v1.vouch``, over the
concatenated digests): it does not rest on the local transport's word about who sent
it, so a compromised transport process cannot make its consensus take a copy as
valid by inventing f+1 claimants. Claims are never relayed. Each member's claims are
bounded (the oldest go first), so a member that floods claims only evicts its own, and
claims are dropped when their copy executes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from prometheus_client import Counter

#: ML-DSA-87 context string of a claim's signature.
VOUCH_CONTEXT = b"cretoai.v1.vouch"
#: At most this many claims in one envelope (a batch holds at most 256 requests at the
#: default settings; a larger claim is malformed).
MAX_VOUCHED = 4096
HASH_SIZE = 32

VOUCHED_ADOPTED = Counter(
    "cretoai_consensus_vertex_verifications_vouched_total",
    "Vertex signatures taken as valid without verifying them: f+1 members vouched "
    "for the exact copy",
)
VOUCHES_RECEIVED = Counter(
    "cretoai_consensus_vouches_received_total",
    "Claims received from peers that they verified a vertex copy and found it valid",
)
FALSE_CLAIMS = Counter(
    "cretoai_consensus_false_vouches_total",
    "Peers' signed claims of validity on a vertex copy this node found invalid, each "
    "charged to its claimant as a fault",
)


class Vouches:
    """Claims of validity by member, each member's bounded (oldest evicted first)."""

    def __init__(
        self, members: int, *, adopt_at: int, per_member: int = 20_000, min_copies: int = 8
    ) -> None:
        if adopt_at < 1:
            raise ValueError("adopt_at must be at least 1")
        #: Claims go in a message of their own (an entry node's, a co-verifier's), and
        #: backups wait for them, only for groups of at least this many copies.
        self.min_copies = min_copies
        self._claims: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(members)]
        self._per_member = per_member
        #: Distinct members whose claims make a copy valid here (f+1).
        self.adopt_at = adopt_at

    def worth_claims(self, copies: int) -> bool:
        """Whether a group of ``copies`` (a forward, a batch) is vouched for in messages of
        its own and waited for: at least :attr:`min_copies`."""
        return copies >= self.min_copies

    def add(self, member: int, hashes: Iterable[bytes]) -> None:
        """``member`` claims each copy of ``hashes`` (signed digests) valid."""
        claims = self._claims[member]
        count = 0
        for h in hashes:
            claims[h] = None
            claims.move_to_end(h)
            count += 1
        while len(claims) > self._per_member:
            claims.popitem(last=False)
        if count:
            VOUCHES_RECEIVED.inc(count)

    def count(self, h: bytes) -> int:
        """How many distinct members claimed the copy ``h`` valid."""
        return sum(1 for claims in self._claims if h in claims)

    def claimants(self, h: bytes) -> list[int]:
        """The members that claimed the copy ``h`` valid."""
        return [member for member, claims in enumerate(self._claims) if h in claims]

    def retract(self, h: bytes) -> None:
        """Drop every claim on the copy ``h`` (found invalid: its claimants were blamed)."""
        for claims in self._claims:
            claims.pop(h, None)

    def vouched(self, h: bytes) -> bool:
        """Whether f+1 distinct members claimed the copy ``h`` valid."""
        return self.count(h) >= self.adopt_at

    def forget(self, hashes: Sequence[bytes]) -> None:
        """Drop the claims on executed copies."""
        for claims in self._claims:
            if claims:
                for h in hashes:
                    claims.pop(h, None)

    def __len__(self) -> int:
        return sum(len(claims) for claims in self._claims)


def claim_message(copies: Sequence[bytes]) -> bytes:
    """What a claim's signature covers: the digests, concatenated (32 bytes each)."""
    return b"".join(copies)


def check_vouched(hashes: Sequence[bytes]) -> str | None:
    """Why a received claim list is malformed, or None."""
    if len(hashes) > MAX_VOUCHED:
        return f"{len(hashes)} vouched copies; at most {MAX_VOUCHED}"
    for h in hashes:
        if len(h) != HASH_SIZE:
            return f"a vouched digest of {len(h)} bytes"
    return None
