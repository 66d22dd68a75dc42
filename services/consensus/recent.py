"""The contents this process finalized lately: what admission may know without storage.

Admitting a vertex needs two facts: whether its content is already finalized (then it is
answered as a duplicate, not ordered again) and whether each parent is finalized (or
pending). Storage knows both; asking costs a gRPC round trip to another process on every
``SubmitVertices`` call: with one vertex per request, one per vertex. :class:`RecentFinalized`
answers most of those calls here (at 200 vertices/s, one per request, the p99 fell from
1.05-1.66 s to 0.68-0.92 s and storage's CPU per vertex by 0.4-0.5 ms: docs/benchmarks.md,
"Admission from what the process finalized lately").

**What it holds.** Every content that this process's executor finalized, with its seq,
newest last, as far back as ``watermark``: the executor adds each batch in seq order, and
the oldest entries go first when it is full, each eviction raising the watermark to the
seq it drops. At start the watermark is the last seq storage had executed (the executor
starts after it), so the invariant holds from the first batch:

    *every content finalized at a seq above the watermark is here.*

**Why a miss can mean "not finalized".** A vertex is finalized only after each of its
parents (execution accepts it only with every parent finalized, earlier in the log or
earlier in the same batch, and storage refuses a batch that says otherwise). So if every
parent of a vertex is here at a seq above the watermark, the vertex, were it finalized,
would be at a seq at least as high, hence here too. A vertex without parents, or with a
parent not here (older, or not finalized), is not decided here: storage is asked, as
before. A positive answer ("finalized") never goes stale: nothing un-finalizes.

**Execution** asks it too (:meth:`RecentFinalized.statuses`): a batch whose vertices'
statuses are all decided here needs no storage read before its CommitBatch (the execute
stage at 10/s: 1.1 ms instead of 6.8; the cluster's CPU and latency within the noise:
docs/benchmarks.md, "Execution's statuses from what the process finalized lately"). The answers
are facts, the same on every replica whatever its watermark (a content here *is*
finalized; one decided absent *is not*), so execution stays deterministic; a batch with
anything undecided reads storage, as before. Storage still checks what execution decided
(it refuses a duplicate accepted or a parent not finalized), and
``consensus.cross_check_recent`` reads storage as well and counts any difference (the
cluster scenarios run with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Contents kept: about 160 bytes each (a 32-byte key in a dict, and its seq), 2.6 MB
#: when full (tracemalloc); 80 s of history at 200 vertices/s: clients name recent vertices.
DEFAULT_CAPACITY = 16_384


class RecentFinalized:
    def __init__(self, watermark: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        #: Every content finalized at a seq above it is in ``_seq_of``.
        self.watermark = watermark
        self._capacity = capacity
        self._seq_of: dict[bytes, int] = {}  # insertion order is seq order

    def __len__(self) -> int:
        return len(self._seq_of)

    def add(self, seq: int, contents: Iterable[bytes]) -> None:
        """The contents finalized by batch ``seq`` (batches in seq order, each once)."""
        seq_of = self._seq_of
        for content in contents:
            seq_of.setdefault(content, seq)
        while len(seq_of) > self._capacity:
            oldest = next(iter(seq_of))
            self.watermark = max(self.watermark, seq_of.pop(oldest))

    def finalized(self, content: bytes) -> bool:
        """True: finalized (for good). False: not known here, which says nothing alone."""
        return content in self._seq_of

    def decides(self, content: bytes, parents: Sequence[bytes]) -> bool:
        """Whether ``content`` (with ``parents``) is answered here: not finalized, and
        every parent finalized. False when storage must be asked (a parent not here above
        the watermark, no parents, or the content itself here: a duplicate, which storage
        compares copy by copy)."""
        if not parents or content in self._seq_of:
            return False
        return all(self._above_watermark(parent) for parent in parents)

    def _above_watermark(self, content: bytes) -> bool:
        """Here, at a seq above the watermark: whatever names it as a parent and is
        finalized is here too."""
        seq = self._seq_of.get(content)
        return seq is not None and seq > self.watermark

    def statuses(self, vertices: Iterable[tuple[bytes, Sequence[bytes]]]) -> set[bytes] | None:
        """For execution: which of these vertices' contents and parents are finalized, or
        None when that is not all decided here (storage must be asked).

        ``vertices`` are (content, parents) pairs of one batch, in batch order. A content
        here is finalized. A content not here is not finalized when one of its parents
        is here above the watermark (it would be here too), or is a content of an earlier
        vertex of the batch already found not finalized (a vertex is never finalized
        before its parents). A parent is decided when it is here (finalized) or is such a
        content (not finalized).
        """
        seq_of = self._seq_of
        finalized: set[bytes] = set()
        absent: set[bytes] = set()
        batch = list(vertices)
        for content, parents in batch:
            if content in seq_of:
                finalized.add(content)
            elif any(p in absent or self._above_watermark(p) for p in parents):
                absent.add(content)
            else:
                return None
        for _, parents in batch:
            for parent in parents:
                if parent in seq_of:
                    finalized.add(parent)
                elif parent not in absent:
                    return None
        return finalized
