"""Finality proofs: storage accepts a finalized batch only with a certificate that proves it.

Storage's port is reachable by other processes, so ``CommitBatch`` cannot trust
its caller: a batch is written only if

1. it carries a finality certificate for exactly it — ``certificate.seq`` is
   the batch's seq, ``certificate.batch_digest`` its digest, commits present
   (cheap; on the event loop);
2. its digest is the digest of exactly its vertices: consensus orders signed
   copies, so ``batch_digest = crypto.batch_digest(signed_digest(v) for v in
   vertices)`` — a valid certificate cannot carry other vertices, nor other
   copies (signatures) of the same contents;
3. the certificate verifies against the node's validator set: a quorum of
   valid ML-DSA-87 COMMITs of distinct validators for (view, seq, digest)
   (:func:`services.consensus.core.certificate.check_certificate`, the check
   clients make).

Each failure is a :class:`Refused` (``INVALID_ARGUMENT``) naming the check,
counted in ``cretoai_storage_commit_refusals_total{check}`` and logged once;
nothing is written. Checks 2 and 3 cost milliseconds (for 100 vertices of
~8 KB, SHA3 over every copy ~2-3 ms; ~0.3-0.5 ms per signature) and run at the
same time on two worker threads of their own: off the event loop, and off the
writer thread, whose other writes (the consensus's durable state) must not wait
behind them; OpenSSL releases the GIL while it verifies a signature. Batches
leave the check in the order they arrived, on to the writer. A forged batch
costs at most ``n`` signature checks (a duplicate or out-of-set signer ends
the check).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cretoai.v1 import vertex_pb2
from cretoai.vertex import signed_digest
from services.consensus.core.certificate import InvalidCertificate, check_certificate
from services.consensus.core.crypto import MlDsaVerifier, Verifier, batch_digest
from services.storage import metrics
from services.storage.errors import InvalidArgument

if TYPE_CHECKING:
    from cretoai.crypto.backend import Backend

log = logging.getLogger(__name__)


class Refused(InvalidArgument):
    """A batch without a valid proof of finality; ``check`` names what failed (a metric label)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


def check_certificate_fields(batch: vertex_pb2.FinalizedBatch) -> None:
    """Check 1: a certificate that claims exactly this batch (no cryptography)."""
    if not batch.HasField("certificate"):
        raise Refused("missing", "batch.certificate: missing (a finalized batch needs its proof)")
    cert = batch.certificate
    if cert.seq != batch.seq:
        raise Refused("seq", f"batch.certificate.seq: {cert.seq}, the batch is {batch.seq}")
    if cert.batch_digest != batch.batch_digest:
        raise Refused("digest", "batch.certificate.batch_digest: differs from batch.batch_digest")
    if not cert.commits:
        raise Refused("missing", "batch.certificate.commits: empty")


def vertices_digest(batch: vertex_pb2.FinalizedBatch) -> bytes:
    """The consensus digest of the batch's vertices: over each signed copy, in order."""
    return batch_digest(signed_digest(v) for v in batch.vertices)


def check_digest(batch: vertex_pb2.FinalizedBatch) -> None:
    """Check 2: the batch's digest is the digest of exactly its vertices."""
    if vertices_digest(batch) != batch.batch_digest:
        raise Refused(
            "digest",
            "batch.batch_digest: not the digest of batch.vertices (SHA3-256 over the signed "
            "digest of each vertex, in order); the certificate proves another batch",
        )


def check_quorum(batch: vertex_pb2.FinalizedBatch, *, n: int, verifier: Verifier) -> None:
    """Check 3: a quorum of the validator set signed COMMITs for the certificate's batch."""
    try:
        check_certificate(batch.certificate, n=n, verifier=verifier)
    except InvalidCertificate as exc:
        raise Refused(
            "certificate",
            f"batch.certificate: {exc} (validator set of {n}; a finalized batch needs a "
            "quorum of valid COMMITs)",
        ) from None


def _after(previous: asyncio.Future[None] | None, done: asyncio.Future[None]) -> None:
    """Complete ``done`` now, or once ``previous`` is (if this check was cancelled first)."""
    if previous is None or previous.done():
        done.set_result(None)
    else:
        previous.add_done_callback(lambda _: done.set_result(None))


class Certifier:
    """Checks finality proofs against one validator set, on worker threads of its own.

    The digest (check 2) and the signatures (check 3) of a batch are checked at the
    same time on two threads; batches come out in the order they came in.
    """

    def __init__(self, validator_public_keys: Sequence[bytes], backend: Backend) -> None:
        self.n = len(validator_public_keys)
        self._verifier = MlDsaVerifier(validator_public_keys, backend)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="storage-certify"
        )
        #: Done when the previous batch's check is: each waits for its predecessor.
        self._tail: asyncio.Future[None] | None = None

    async def check(self, batch: vertex_pb2.FinalizedBatch) -> None:
        """Raise :class:`Refused` unless ``batch`` is proven final (counted and logged)."""
        loop = asyncio.get_running_loop()
        previous, done = self._tail, loop.create_future()
        self._tail = done
        started = time.perf_counter()
        try:
            check_certificate_fields(batch)
            digest, quorum = await asyncio.gather(
                loop.run_in_executor(self._pool, check_digest, batch),
                loop.run_in_executor(
                    self._pool,
                    functools.partial(check_quorum, batch, n=self.n, verifier=self._verifier),
                ),
                return_exceptions=True,
            )
            for outcome in (digest, quorum):  # the digest's verdict first
                if isinstance(outcome, BaseException):
                    raise outcome
        except Refused as exc:
            metrics.COMMIT_REFUSALS.labels(exc.check).inc()
            log.warning(
                "finalized batch refused: no valid proof of finality",
                extra={"fields": {"seq": batch.seq, "check": exc.check, "error": str(exc)}},
            )
            raise
        finally:
            # keep the arrival order on to the writer: return after the previous batch did
            try:
                if previous is not None and not previous.done():
                    await asyncio.wait([previous])
            finally:
                _after(previous, done)
            metrics.PROOF_CHECK.observe(time.perf_counter() - started)

    def close(self) -> None:
        """Stop the worker threads (checks still queued are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
