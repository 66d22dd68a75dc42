"""Execution of committed batches: deterministic validity, then one atomic storage write.

The decisions are :mod:`services.consensus.execution`'s (pure, shared with the
simulator). This module gathers their inputs (finalized statuses, signature verdicts),
extends the state digest over the outcomes, and commits. The statuses come from what
this process finalized lately (:class:`~services.consensus.recent.RecentFinalized`) when
it decides them all, else from storage (one GetVertexStatuses).

A batch this replica voted for is already in storage: the replica wrote its
bodies (a ``VotedBatch`` under ``batch/<digest hex>``, ``core.durable``) before
its first vote. So ``CommitBatch`` names the vertices by that key
(``voted_batch_key``) instead of sending them (~850 KB for 100 vertices) a second
time; storage reads the record and checks it as it checks a full batch. When it
refuses the reference (no record: the batch came by state transfer, the replica
committed it without voting, a stable checkpoint deleted the record first; or a
record that does not match), the batch is sent again with its vertices, and that
answer is final.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from cretoai.vertex import PROTOCOL_MAX_PAYLOAD_BYTES, shape_error, vertex_hash
from services.consensus.core.codec import certificate_to_pb
from services.consensus.core.crypto import next_state_digest, outcome_bytes
from services.consensus.core.durable import ExecutedState, batch_key
from services.consensus.core.ready import Committed
from services.consensus.execution import Candidate, decide
from services.consensus.recent import RecentFinalized
from services.consensus.retry import StorageCallFailed, call_until_done
from services.consensus.tracing import now_ns, tracer
from services.consensus.verify import Verifier

log = logging.getLogger(__name__)

EXECUTED_BATCHES = Counter("cretoai_consensus_batches_executed_total", "Batches executed")
EXECUTED_VERTICES = Counter(
    "cretoai_consensus_vertices_executed_total", "Vertices executed, by outcome", ["outcome"]
)
EXECUTE_SECONDS = Histogram(
    "cretoai_consensus_execute_seconds",
    "Time to execute one batch (validity checks and the storage write)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORAGE_COMMITS = Counter(
    "cretoai_consensus_storage_commits_total",
    "Batches committed to storage, by form: reference (named by the voted record), "
    "full (an empty batch), fallback (the vertices sent after storage refused the "
    "reference)",
    ["form"],
)

STATUS_LOOKUPS = Counter(
    "cretoai_consensus_execution_lookups_total",
    "Batches executed whose vertices' statuses were decided by what this process "
    "finalized lately (source=recent) or read from storage (source=storage)",
    ["source"],
)
RECENT_MISMATCHES = Counter(
    "cretoai_consensus_recent_mismatches_total",
    "Batches whose statuses from what this process finalized lately differed from "
    "storage's (consensus.cross_check_recent; always 0 unless there is a bug)",
)

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
#: Storage's answers to a reference that sending the vertices may get past.
REFERENCE_REFUSED = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT}


@dataclass(frozen=True)
class Executed:
    """A batch as executed: what the feed publishes and waiting clients learn."""

    #: The finalized batch without its vertices: seq, digest, rejected, certificate,
    #: state digest.
    header: vertex_pb2.FinalizedBatch
    vertices: tuple[vertex_pb2.Vertex, ...]
    heights: tuple[int, ...]
    #: The content hash of each vertex, in batch order.
    contents: tuple[bytes, ...]
    #: The signed digest of each vertex's copy, in batch order.
    copies: tuple[bytes, ...] = ()
    #: What execution decided about each vertex, in batch order.
    results: tuple[storage_pb2.ExecutionResult, ...] = ()
    #: When storage's CommitBatch was called and answered (monotonic ns).
    storage_started: int = 0
    storage_done: int = 0

    @property
    def state_digest(self) -> bytes:
        return self.header.state_digest

    @functools.cached_property
    def batch(self) -> vertex_pb2.FinalizedBatch:
        """The whole batch, vertices included: built only when asked for (a whole-batch
        watcher; the gateway follows notices), not for every execution."""
        return _whole(self.header, self.vertices)


def _whole(
    header: vertex_pb2.FinalizedBatch, vertices: Sequence[vertex_pb2.Vertex]
) -> vertex_pb2.FinalizedBatch:
    batch = vertex_pb2.FinalizedBatch()
    batch.CopyFrom(header)
    batch.vertices.extend(vertices)
    return batch


class Executor:
    """Executes committed batches in order and keeps the state digest chain after them."""

    def __init__(
        self,
        storage: storage_pb2_grpc.StorageStub,
        verifier: Verifier,
        *,
        executed: ExecutedState,
        contents_max: int = 100_000,
        cross_check_recent: bool = False,
    ) -> None:
        self._storage = storage
        self._verifier = verifier
        self.seq = executed.seq
        self.state_digest = executed.state_digest
        #: What this process finalized, from the seq storage had executed at start.
        self.recent = RecentFinalized(watermark=executed.seq)
        #: Read storage even when ``recent`` decides, and count any difference.
        self._cross_check = cross_check_recent
        self._contents: OrderedDict[bytes, bytes] = OrderedDict()
        self._contents_max = contents_max

    def note_content(self, request_hash: bytes, content: bytes) -> None:
        """The vertex hash of the copy whose signed digest is ``request_hash``, as the
        driver computed it from the copy's bytes when it arrived: execution then does not
        hash the copy again (a signed digest names one copy, so one content)."""
        self._contents[request_hash] = content
        if len(self._contents) > self._contents_max:
            self._contents.popitem(last=False)

    def _content_of(self, request_hash: bytes, vertex: vertex_pb2.Vertex) -> bytes:
        content = self._contents.pop(request_hash, None)
        return content if content is not None else vertex_hash(vertex)

    async def execute(self, committed: Committed) -> Executed:
        if committed.seq != self.seq + 1:
            raise RuntimeError(f"execute({committed.seq}) after {self.seq}: out of order")
        started = time.perf_counter()
        vertices = [vertex_pb2.Vertex.FromString(r.body) for r in committed.requests]
        contents = [
            self._content_of(r.hash, v) for r, v in zip(committed.requests, vertices, strict=True)
        ]
        problems = [shape_error(v, max_payload_bytes=PROTOCOL_MAX_PAYLOAD_BYTES) for v in vertices]
        shaped = [i for i, problem in enumerate(problems) if problem is None]
        finalized = await self._finalized(committed.seq, vertices, contents, shaped)
        copies = [committed.requests[i].hash for i in shaped]
        shaped_contents = [contents[i] for i in shaped]
        verdicts = dict(
            zip(
                shaped,
                await self._verifier.verify_vertices(
                    [vertices[i] for i in shaped], copies, shaped_contents
                ),
                strict=True,
            )
        )
        self._verifier.forget(copies, shaped_contents)
        candidates = [
            Candidate(
                content=content,
                parents=tuple(vertex.parents),
                malformed=malformed,
                signature_ok=verdicts.get(i, False),
            )
            for i, (vertex, content, malformed) in enumerate(
                zip(vertices, contents, problems, strict=True)
            )
        ]
        reasons = decide(candidates, finalized)
        results = []
        rejected = []
        for content, reason in zip(contents, reasons, strict=True):
            if reason is not None:
                rejected.append(content)
            results.append(
                storage_pb2.ExecutionResult(
                    hash=content, rejected=reason is not None, reject_reason=reason or ""
                )
            )
        # counted once per batch (a labelled counter's inc per vertex cost 1-2 % of the loop)
        if len(rejected) < len(contents):
            EXECUTED_VERTICES.labels("finalized").inc(len(contents) - len(rejected))
        if rejected:
            EXECUTED_VERTICES.labels("rejected").inc(len(rejected))
        state = next_state_digest(
            self.state_digest,
            committed.seq,
            committed.digest,
            outcome_bytes(r is not None for r in reasons),
        )
        header = vertex_pb2.FinalizedBatch(
            seq=committed.seq,
            batch_digest=committed.digest,
            rejected=rejected,
            certificate=certificate_to_pb(committed.certificate),
            state_digest=state,
        )
        storage_started = now_ns()
        span = (
            tracer.start_as_current_span(
                "consensus.storage_commit", attributes={"pbft.seq": committed.seq}
            )
            if trace.get_current_span().is_recording()  # a traced batch (driver.py)
            else contextlib.nullcontext()
        )
        with span:
            response = await self._commit(committed, header, vertices, results)
        storage_done = now_ns()
        self.seq, self.state_digest = committed.seq, state
        self.recent.add(committed.seq, (r.hash for r in results if not r.rejected))
        EXECUTED_BATCHES.inc()
        EXECUTE_SECONDS.observe(time.perf_counter() - started)
        return Executed(
            header=header,
            vertices=tuple(vertices),
            heights=tuple(response.heights),
            contents=tuple(contents),
            copies=tuple(r.hash for r in committed.requests),
            results=tuple(results),
            storage_started=storage_started,
            storage_done=storage_done,
        )

    async def _finalized(
        self,
        seq: int,
        vertices: Sequence[vertex_pb2.Vertex],
        contents: Sequence[bytes],
        shaped: Sequence[int],
    ) -> set[bytes]:
        """The finalized ones among the contents and parents that :func:`decide` reads:
        every well-shaped vertex's (a malformed one is rejected for its shape alone)."""
        known = self.recent.statuses((contents[i], vertices[i].parents) for i in shaped)
        if known is not None and not self._cross_check:
            STATUS_LOOKUPS.labels("recent").inc()
            return known
        lookup = sorted(set(contents) | {p for v in vertices for p in v.parents})
        if not lookup:
            return set()
        reply = await call_until_done(
            lambda: self._storage.GetVertexStatuses(
                storage_pb2.GetVertexStatusesRequest(hashes=lookup), timeout=30
            ),
            what="read vertex statuses",
        )
        stored = {r.hash for r in reply.records if r.status == FINALIZED}
        if known is None:
            STATUS_LOOKUPS.labels("storage").inc()
            return stored
        STATUS_LOOKUPS.labels("recent").inc()
        asked = {h for i in shaped for h in (contents[i], *vertices[i].parents)}
        if known != stored & asked:
            RECENT_MISMATCHES.inc()
            log.error(
                "what this process finalized lately disagrees with storage; using storage's",
                extra={
                    "fields": {
                        "seq": seq,
                        "recent_only": ",".join(sorted(h.hex() for h in known - stored)),
                        "storage_only": ",".join(sorted(h.hex() for h in (stored & asked) - known)),
                    }
                },
            )
        return stored

    async def _commit(
        self,
        committed: Committed,
        header: vertex_pb2.FinalizedBatch,
        vertices: Sequence[vertex_pb2.Vertex],
        results: list[storage_pb2.ExecutionResult],
    ) -> storage_pb2.CommitBatchResponse:
        """CommitBatch by reference to the replica's VotedBatch record; if storage refuses
        the reference, with the vertices."""
        if committed.requests:  # an empty (null) batch has no record, and nothing to send
            key = batch_key(committed.digest).encode()
            by_reference = storage_pb2.CommitBatchRequest(
                batch=header, results=results, voted_batch_key=key
            )
            try:
                response: storage_pb2.CommitBatchResponse = await call_until_done(
                    lambda: self._storage.CommitBatch(by_reference, timeout=30),
                    what="commit batch",
                )
            except StorageCallFailed as exc:
                if exc.code not in REFERENCE_REFUSED:
                    raise
                # no record is expected now and then (state transfer, garbage collection);
                # a record that does not match the batch is not
                log.log(
                    logging.DEBUG
                    if exc.code == grpc.StatusCode.FAILED_PRECONDITION
                    else logging.WARNING,
                    "commit by reference refused; sending the vertices",
                    extra={
                        "fields": {
                            "seq": committed.seq,
                            "code": exc.code.name,
                            "error": exc.details,
                        }
                    },
                )
            else:
                STORAGE_COMMITS.labels("reference").inc()
                return response
        request = storage_pb2.CommitBatchRequest(batch=_whole(header, vertices), results=results)
        full: storage_pb2.CommitBatchResponse = await call_until_done(
            lambda: self._storage.CommitBatch(request, timeout=30), what="commit batch"
        )
        STORAGE_COMMITS.labels("fallback" if committed.requests else "full").inc()
        return full
