"""What execution decides about the vertices of a committed batch: pure and deterministic.

Every honest replica executes the same batches — the same signed copies, byte
for byte, since a batch digest covers each copy's :func:`cretoai.vertex.signed_digest`
— in the same order against the same finalized DAG, so the decisions below are
the same everywhere. A vertex copy is **rejected** (stored as such, never a
parent) when:

- its shape is wrong (``cretoai.vertex.shape_error`` with the protocol limits);
- its content is already finalized (an earlier batch, or earlier in this batch);
- its signature does not verify;
- a parent is not finalized (by an earlier batch, or accepted earlier in this batch).

Signature verdicts are cached (:class:`Verdicts`) by the digest of the exact
signed copy: another copy of the same content, with another signature, never
shares a verdict. The real executor and the simulator use this module alike.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence, Set
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """One request of a batch as execution sees it."""

    #: The content hash (the DAG's identity of the vertex).
    content: bytes
    parents: tuple[bytes, ...]
    #: Why the vertex is malformed, or None.
    malformed: str | None
    #: Whether this exact copy's signature verifies.
    signature_ok: bool


def decide(batch: Sequence[Candidate], finalized: Set[bytes]) -> list[str | None]:
    """Each candidate's reject reason (None: finalized), in batch order.

    ``finalized`` holds the contents finalized before this batch (at least every
    candidate's content and parents that are).
    """
    accepted: set[bytes] = set()
    reasons: list[str | None] = []
    for c in batch:
        reason = _reject_reason(c, finalized, accepted)
        if reason is None:
            accepted.add(c.content)
        reasons.append(reason)
    return reasons


def _reject_reason(c: Candidate, finalized: Set[bytes], accepted: set[bytes]) -> str | None:
    if c.malformed is not None:
        return f"malformed: {c.malformed}"
    if c.content in finalized or c.content in accepted:
        return "duplicate: already finalized"
    if not c.signature_ok:
        return "invalid signature"
    for parent in c.parents:
        if parent not in finalized and parent not in accepted:
            return f"unknown parent {parent.hex()}"
    return None


class Verdicts:
    """Signature verdicts of signed copies, a bounded LRU keyed by :meth:`key`."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._capacity = capacity

    @staticmethod
    def key(request_hash: bytes, content: bytes) -> bytes:
        """The cache key of a copy: its signed digest (``content`` is deliberately unused).

        Keying by content would let a badly signed copy's verdict decide a validly
        signed one's, on one replica and not another (the simulator's mutation
        test swaps this to prove the invariants catch it).
        """
        return request_hash

    def get(self, request_hash: bytes, content: bytes) -> bool | None:
        key = self.key(request_hash, content)
        verdict = self._cache.get(key)
        if verdict is not None:
            self._cache.move_to_end(key)
        return verdict

    def put(self, request_hash: bytes, content: bytes, ok: bool) -> None:
        self._cache[self.key(request_hash, content)] = ok
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def forget(self, request_hash: bytes, content: bytes) -> None:
        """Drop a copy's verdict (its batch is executed: the cache is for what is in flight)."""
        self._cache.pop(self.key(request_hash, content), None)

    def __len__(self) -> int:
        return len(self._cache)
