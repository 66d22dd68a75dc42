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
~8 KB, SHA3 over every copy ~2-3 ms; ~0.3-0.5 ms per signature) and run on two
worker threads of their own: off the event loop, and off the writer thread, whose
other writes (the consensus's durable state) must not wait behind them. The
signatures are one job; the vertices are hashed in slices of :data:`HASH_SLICE`,
jobs the two threads share, each vertex's canonical encoding built once for its
signed digest and for its vertex hash, which a ``CommitBatch``'s results must
name (:func:`~services.storage.validate.check_result_hashes`: that failure is an
``INVALID_ARGUMENT`` of its own, not a refusal, and comes first). OpenSSL
releases the GIL while it verifies a signature, and hashlib while it hashes more
than 2 KiB. Batches leave the check in the order they arrived, on to the writer.
A forged batch costs at most ``n`` signature checks (a duplicate or out-of-set
signer ends the check).

A request may name its vertices by reference (``voted_batch_key``: a
``VotedBatch`` the consensus wrote with ``WriteState`` before it voted):
:func:`resolve_reference` puts the record's vertices into the request first,
and then the same checks run on them. A reference to no record is refused with
``FAILED_PRECONDITION`` (the caller sends the vertices instead), one to a record
that is no VotedBatch of vertices with ``INVALID_ARGUMENT``; both are counted
under ``check="reference"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError

from cretoai.v1 import pbft_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import hash_and_signed_digest, signed_digest
from services.consensus.core.certificate import InvalidCertificate, check_certificate
from services.consensus.core.crypto import MlDsaVerifier, Verifier, batch_digest
from services.storage import metrics
from services.storage.errors import InvalidArgument
from services.storage.validate import MAX_STATE_KEY_BYTES, hash_mismatch

if TYPE_CHECKING:
    from cretoai.crypto.backend import Backend
    from services.storage.store import VotedRecord

log = logging.getLogger(__name__)

#: Vertices hashed per job on the two threads: a 100-vertex batch in 4 slices (~0.8 ms
#: each) that the threads share with the quorum's signatures; one job for a small batch.
HASH_SLICE = 32


class Refused(InvalidArgument):
    """A batch without a valid proof of finality; ``check`` names what failed (a metric label).

    ``INVALID_ARGUMENT`` unless ``status`` says otherwise (a reference to a record that
    is not there is ``FAILED_PRECONDITION``: the caller can send the vertices instead).
    """

    def __init__(self, check: str, message: str, *, status: grpc.StatusCode | None = None) -> None:
        super().__init__(message, status=status)
        self.check = check


def _count(exc: Refused, seq: int, level: int = logging.WARNING) -> None:
    metrics.COMMIT_REFUSALS.labels(exc.check).inc()
    log.log(
        level,
        "finalized batch refused: no valid proof of finality",
        extra={"fields": {"seq": seq, "check": exc.check, "error": str(exc)}},
    )


def _printable(key: bytes) -> str:
    text = key.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def resolve_reference(
    request: storage_pb2.CommitBatchRequest,
    read_voted: Callable[[bytes], VotedRecord | None],
) -> tuple[str, list[bytes] | None]:
    """Put the vertices of the VotedBatch at ``request.voted_batch_key`` into ``request.batch``.

    ``read_voted`` reads the consensus durable-state space (``Store.read_voted``). Nothing
    in the record is trusted: the request then goes through :func:`check_commit` and
    :meth:`Certifier.check` as a request that carried the vertices. Returns where the
    vertices came from (for the messages of those checks) and, when the record is stored
    split, the bodies as read (``Store.commit_batch`` points at those still the same).
    Raises :class:`InvalidArgument` for a malformed reference, :class:`Refused` (counted,
    ``check="reference"``) for a missing record (``FAILED_PRECONDITION``) or one that
    holds no vertices (``INVALID_ARGUMENT``).
    """
    key = request.voted_batch_key
    if not request.HasField("batch"):
        raise InvalidArgument("batch: missing")
    if len(key) > MAX_STATE_KEY_BYTES:
        raise InvalidArgument(
            f"voted_batch_key: {len(key)} bytes; the limit is {MAX_STATE_KEY_BYTES}"
        )
    batch = request.batch
    if batch.vertices:
        raise InvalidArgument(
            f"batch.vertices: {len(batch.vertices)} vertices beside voted_batch_key; "
            "send the vertices or name them by reference, not both"
        )
    origin = f"the voted batch at voted_batch_key {_printable(key)}"
    record = read_voted(key)
    if record is None:
        refusal = Refused(
            "reference",
            f"voted_batch_key: no voted batch at {_printable(key)} in the consensus state "
            "(never written, or deleted since); send the batch with its vertices",
            status=grpc.StatusCode.FAILED_PRECONDITION,
        )
        # expected after state transfer or a checkpoint's garbage collection: the
        # caller falls back to the full form, so not a warning each time
        _count(refusal, batch.seq, logging.DEBUG)
        raise refusal
    if record.bodies is not None:
        unreadable = _parse_bodies_into(batch.vertices, record.bodies, origin)
    else:
        unreadable = _parse_voted_into(batch.vertices, record.value, origin)
    if unreadable is None:
        return origin, record.bodies
    del batch.vertices[:]
    _count(unreadable, batch.seq)
    raise unreadable


def _parse_voted_into(
    vertices: RepeatedCompositeFieldContainer[vertex_pb2.Vertex], raw: bytes, origin: str
) -> Refused | None:
    """Parse the VotedBatch ``raw`` into ``vertices`` (a repeated field, in place: no copy
    of the bodies); why it is not a batch of vertices, if it is not."""
    try:
        bodies = pbft_pb2.VotedBatch.FromString(raw).request_bodies
    except DecodeError as exc:
        return Refused("reference", f"{origin}: not a VotedBatch ({exc})")
    return _parse_bodies_into(vertices, bodies, origin)


def _parse_bodies_into(
    vertices: RepeatedCompositeFieldContainer[vertex_pb2.Vertex],
    bodies: Sequence[bytes],
    origin: str,
) -> Refused | None:
    for i, body in enumerate(bodies):
        try:
            vertices.add().ParseFromString(body)
        except DecodeError as exc:
            return Refused("reference", f"{origin}: request_bodies[{i}] is not a vertex ({exc})")
    return None


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


def check_digest(batch: vertex_pb2.FinalizedBatch, origin: str = "batch.vertices") -> None:
    """Check 2: the batch's digest is the digest of exactly its vertices (from ``origin``)."""
    if vertices_digest(batch) != batch.batch_digest:
        raise Refused("digest", digest_mismatch(origin))


def digest_mismatch(origin: str) -> str:
    return (
        f"batch.batch_digest: not the digest of {origin} (SHA3-256 over the signed "
        "digest of each vertex, in order); the certificate proves another batch"
    )


def _hash_slice(
    vertices: Sequence[vertex_pb2.Vertex],
    results: Sequence[storage_pb2.ExecutionResult] | None,
    start: int,
    stop: int,
) -> list[bytes]:
    """The signed digests of ``vertices[start:stop]``; with ``results``, each vertex's
    hash checked against its result's on the way (one canonical encoding for both)."""
    digests = []
    for i in range(start, min(stop, len(vertices))):
        content, copy = hash_and_signed_digest(vertices[i])
        if results is not None and results[i].hash != content:
            raise InvalidArgument(hash_mismatch(i))
        digests.append(copy)
    return digests


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

    async def check(
        self,
        batch: vertex_pb2.FinalizedBatch,
        origin: str = "batch.vertices",
        *,
        results: Sequence[storage_pb2.ExecutionResult] | None = None,
    ) -> None:
        """Raise :class:`Refused` unless ``batch`` is proven final (counted and logged).

        ``origin`` says where the vertices came from (:func:`resolve_reference`). With
        ``results`` (a CommitBatch's, one per vertex), each result's hash is checked too,
        as :func:`~services.storage.validate.check_result_hashes` does, and its failure
        (an :class:`InvalidArgument`, not a refusal) comes before the proof's: the
        vertices are hashed once for both, in slices shared by the two threads."""
        loop = asyncio.get_running_loop()
        previous, done = self._tail, loop.create_future()
        self._tail = done
        started = time.perf_counter()
        try:
            fields: Refused | None = None
            try:
                check_certificate_fields(batch)
            except Refused as exc:
                fields = exc
            quorum = (
                None
                if fields is not None
                else loop.run_in_executor(
                    self._pool,
                    functools.partial(check_quorum, batch, n=self.n, verifier=self._verifier),
                )
            )
            vertices = batch.vertices
            slices = [
                loop.run_in_executor(
                    self._pool, _hash_slice, vertices, results, start, start + HASH_SLICE
                )
                for start in range(0, len(vertices), HASH_SLICE)
            ]
            # one gather: a cancelled caller leaves no job's outcome unretrieved
            outcomes = await asyncio.gather(
                *slices, *([quorum] if quorum is not None else []), return_exceptions=True
            )
            signatures = outcomes[len(slices)] if quorum is not None else None
            digests: list[bytes] = []
            for outcome in outcomes[: len(slices)]:
                if isinstance(outcome, BaseException):
                    raise outcome  # a result's hash: the first slice's failure first
                assert outcome is not None
                digests.extend(outcome)
            if fields is not None:
                raise fields
            if batch_digest(digests) != batch.batch_digest:
                raise Refused("digest", digest_mismatch(origin))
            if isinstance(signatures, BaseException):
                raise signatures
        except Refused as exc:
            _count(exc, batch.seq)
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
