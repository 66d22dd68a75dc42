"""Signature verification, with a cache of verdicts.

ML-DSA-87 verification (about 0.3 ms) releases the GIL inside OpenSSL, so the
vertices of a message (a PRE-PREPARE's batch, a forward, a submission) go to a
small thread pool: both cores work on a large batch while the event loop keeps
serving. They go as at most one job per thread: each job costs the process a
future, a GIL hand-off and a wake-up of the loop, and one per vertex cost 1.3 x
the verifications themselves in CPU. A single signature (a consensus message, a
lone vertex) is verified on the event loop: a job for it cost 1.5 x
(``bench/verify_dispatch.py``).

A signed copy of a vertex is checked once per node: verdicts are cached by the
copy's signed digest (``execution.Verdicts``), never by content alone. A copy that
f+1 members vouched for (:mod:`services.consensus.vouches`) is valid without
being verified here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Counter

from cretoai.crypto import Backend
from cretoai.v1 import vertex_pb2
from cretoai.vertex import verify_vertex
from services.consensus.execution import Verdicts
from services.consensus.vouches import VOUCHED_ADOPTED, Vouches

VERIFICATIONS = Counter(
    "cretoai_consensus_signature_verifications_total",
    "ML-DSA-87 verifications by kind and result",
    ["kind", "result"],
)
#: CPU time spent verifying vertex signatures, in whichever thread: with the process's CPU
#: time it gives the share of a node's work that is verification, measured over the same
#: seconds (``bench.cluster_load``'s ``vertex_verify_share_of_cpu``).
VERTEX_VERIFY_CPU = Counter(
    "cretoai_consensus_vertex_verify_cpu_seconds",
    "CPU seconds of this process's threads spent verifying vertex signatures (ML-DSA-87)",
)
CACHE_HITS = Counter(
    "cretoai_consensus_vertex_verify_cache_hits_total", "Vertex signatures served from the cache"
)


VERTEX_OK = VERIFICATIONS.labels("vertex", "ok")
VERTEX_BAD = VERIFICATIONS.labels("vertex", "bad")


def verify_each(vertices: Sequence[vertex_pb2.Vertex], backend: Backend) -> list[bool]:
    """The verdict of each vertex's signature, one after the other (one pool job)."""
    started = time.thread_time()
    verdicts = [verify_vertex(vertex, backend) for vertex in vertices]
    VERTEX_VERIFY_CPU.inc(time.thread_time() - started)
    return verdicts


class Verifier:
    def __init__(
        self,
        backend: Backend,
        *,
        threads: int,
        cache_size: int = 100_000,
        vouches: Vouches | None = None,
    ) -> None:
        self._backend = backend
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
        self._verdicts = Verdicts(cache_size)
        #: Peers' claims of validity; None: every copy is verified here.
        self.vouches = vouches
        #: Called with each member that claimed valid a copy this node found invalid, and
        #: the copy: an honest member vouches only for copies it verified (or adopted on
        #: f+1 claims), and a verdict is a function of the copy's bytes, so a signed claim
        #: on an invalid copy is proof of its claimant's fault.
        self.on_false_claim: Callable[[int, bytes], None] | None = None

    async def verify(
        self, public_key: bytes, message: bytes, signature: bytes, *, context: bytes, kind: str
    ) -> bool:
        ok = self._backend.verify(public_key, message, signature, context=context)
        VERIFICATIONS.labels(kind, "ok" if ok else "bad").inc()
        return ok

    async def verify_vertices(
        self,
        vertices: Sequence[vertex_pb2.Vertex],
        copies: Sequence[bytes],
        contents: Sequence[bytes],
    ) -> list[bool]:
        """Whether each signed copy's signature is valid, computed once per copy on this
        node (``copies``: their signed digests, ``contents``: their hashes): verdicts from
        the cache, the rest verified in at most one job per thread (a single one on the
        event loop), a copy that comes twice verified once."""
        verdicts: list[bool | None] = []
        misses: dict[bytes, list[int]] = {}
        for i, (copy, content) in enumerate(zip(copies, contents, strict=True)):
            cached = self._verdicts.get(copy, content)
            if cached is None:
                misses.setdefault(self._verdicts.key(copy, content), []).append(i)
            verdicts.append(cached)
        hits = len(verdicts) - sum(len(indexes) for indexes in misses.values())
        if hits:  # counted once per call: a counter's inc per vertex was 1-2 % of the loop
            CACHE_HITS.inc(hits)
        if misses and self.vouches is not None:
            adopted = self._adopt_vouched(misses, copies, contents, verdicts)
            if adopted:
                VOUCHED_ADOPTED.inc(adopted)
        if misses:
            todo = [indexes[0] for indexes in misses.values()]
            jobs = min(self._threads, len(todo))
            chunks = [todo[j::jobs] for j in range(jobs)]
            if len(todo) == 1:
                results = [verify_each([vertices[todo[0]]], self._backend)]
            else:
                loop = asyncio.get_running_loop()
                results = await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            self._pool, verify_each, [vertices[i] for i in chunk], self._backend
                        )
                        for chunk in chunks
                    )
                )
            good = bad = 0
            for chunk, oks in zip(chunks, results, strict=True):
                for i, ok in zip(chunk, oks, strict=True):
                    if ok:
                        good += 1
                    else:
                        bad += 1
                    self._verdicts.put(copies[i], contents[i], ok)
                    for j in misses[self._verdicts.key(copies[i], contents[i])]:
                        verdicts[j] = ok
            if good:
                VERTEX_OK.inc(good)
            if bad:
                VERTEX_BAD.inc(bad)
                self._blame_claimants([copies[i] for i in todo if verdicts[i] is False])
        return [bool(v) for v in verdicts]

    def _blame_claimants(self, invalid: Sequence[bytes]) -> None:
        """Report the members that vouched for these invalid copies, once per claim."""
        vouches = self.vouches
        if vouches is None or self.on_false_claim is None:
            return
        for copy in invalid:
            for member in vouches.claimants(copy):
                self.on_false_claim(member, copy)
            vouches.retract(copy)

    def known_invalid(self, copies: Sequence[bytes]) -> list[bytes]:
        """The copies (signed digests) this node holds an invalid verdict for."""
        return [copy for copy in copies if self._verdicts.get(copy, b"") is False]

    def _adopt_vouched(
        self,
        misses: dict[bytes, list[int]],
        copies: Sequence[bytes],
        contents: Sequence[bytes],
        verdicts: list[bool | None],
    ) -> int:
        """Take as valid the missed copies f+1 members vouched for (removed from
        ``misses``, cached as verdicts); how many."""
        vouches = self.vouches
        assert vouches is not None
        adopted = 0
        for key, indexes in list(misses.items()):
            first = indexes[0]
            if vouches.vouched(copies[first]):
                self._verdicts.put(copies[first], contents[first], True)
                for j in indexes:
                    verdicts[j] = True
                del misses[key]
                adopted += 1
        return adopted

    def valid_copies(self, copies: Sequence[bytes]) -> list[bytes]:
        """The copies (signed digests) this node holds a valid verdict for: verified here,
        or vouched for by f+1 members (what this node may vouch for in turn)."""
        return [copy for copy in copies if self._verdicts.get(copy, b"")]

    def forget(self, copies: Sequence[bytes], contents: Sequence[bytes]) -> None:
        """Drop the verdicts of executed copies.

        The cache serves a copy verified when it arrived (a client's submission, a peer's
        PRE-PREPARE or forward) at its execution; after that a verdict is not needed (the
        same copy ordered again is a duplicate, and whatever is not cached is verified
        again). Kept until evicted, 100,000 verdicts held about 17 MB in every consensus
        process, filled at the finalization rate (2026-12-05).
        """
        for copy, content in zip(copies, contents, strict=True):
            self._verdicts.forget(copy, content)
        if self.vouches is not None:
            self.vouches.forget(copies)

    @property
    def cached(self) -> int:
        """How many verdicts the cache holds."""
        return len(self._verdicts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
