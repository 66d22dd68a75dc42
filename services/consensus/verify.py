"""Signature verification off the event loop, with a cache of verdicts.

ML-DSA-87 verification (about 0.5 ms) releases the GIL inside OpenSSL, so a
small thread pool lets both cores work while the event loop keeps serving.
A signed copy of a vertex is checked once per node: verdicts are cached by the
copy's signed digest (``execution.Verdicts``), never by content alone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Counter

from cretoai.crypto import Backend
from cretoai.v1 import vertex_pb2
from cretoai.vertex import signed_digest, verify_vertex, vertex_hash
from services.consensus.execution import Verdicts

VERIFICATIONS = Counter(
    "cretoai_consensus_signature_verifications_total",
    "ML-DSA-87 verifications by kind and result",
    ["kind", "result"],
)
CACHE_HITS = Counter(
    "cretoai_consensus_vertex_verify_cache_hits_total", "Vertex signatures served from the cache"
)


class Verifier:
    def __init__(self, backend: Backend, *, threads: int, cache_size: int = 100_000) -> None:
        self._backend = backend
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
        self._verdicts = Verdicts(cache_size)

    async def verify(
        self, public_key: bytes, message: bytes, signature: bytes, *, context: bytes, kind: str
    ) -> bool:
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(
            self._pool,
            lambda: self._backend.verify(public_key, message, signature, context=context),
        )
        VERIFICATIONS.labels(kind, "ok" if ok else "bad").inc()
        return ok

    async def verify_vertex(
        self, vertex: vertex_pb2.Vertex, copy: bytes | None = None, content: bytes | None = None
    ) -> bool:
        """Whether this signed copy's signature is valid; computed once per copy on this node.

        ``copy`` is the vertex's :func:`signed_digest` and ``content`` its hash, when
        the caller has them already.
        """
        copy = copy if copy is not None else signed_digest(vertex)
        content = content if content is not None else vertex_hash(vertex)
        cached = self._verdicts.get(copy, content)
        if cached is not None:
            CACHE_HITS.inc()
            return cached
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, verify_vertex, vertex, self._backend)
        VERIFICATIONS.labels("vertex", "ok" if ok else "bad").inc()
        self._verdicts.put(copy, content, ok)
        return ok

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
