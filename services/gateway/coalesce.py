"""The gateway's submissions to its consensus service, coalesced into few calls.

Every submission (a REST or gRPC vertex, or a whole batch) is queued as one
*group*; the sender runs at the next turn of the event loop and sends what is
queued then as one ``SubmitVertices`` call (several when it exceeds a call's
bounds), each group whole and in order, so a vertex whose parent is earlier in
its own batch reaches consensus after it. There is no timer: with nothing in
flight, a lone vertex goes out at once in a call of its own. At most
:data:`MAX_CALLS_IN_FLIGHT` calls are in flight; what arrives meanwhile waits
for one of them to end and then goes out together, so that the calls per vertex
fall as the load rises (each call costs CPU in both processes, whatever its
size). At most :data:`MAX_PENDING_VERTICES` vertices wait for an answer; more
are refused at once (429 overloaded), and, while consensus said overloaded
lately, so is every submission while a call has waited :data:`SLOW_CALL_S` for
its answer (the gateway asks :meth:`Coalescer.oldest_call_age`) and every group
still queued after as long. When consensus answers overloaded, the groups still
queued are refused at once (:meth:`Coalescer.refuse_queued`), not sent after it.
Each submitter gets its own vertices' answers.

A group the gateway *admitted* as it arrived (it followed consensus's admission
stream, which said consensus was not overloaded) is exempt from all of that: it
is neither refused for its wait in the queue nor when consensus turns
overloaded, and its call says so (``SubmitVerticesRequest.admitted``), so that
consensus does not refuse it as overloaded either. A client is refused at once,
as it arrives, or not for overload at all: a refusal after a wait costs it the
wait and the node the work so far. Admitted and other groups never share a call.

Trace context: a call carries the first group's context (as a single
submission's call did), and, when it holds several groups of which one is
sampled, each vertex's ``traceparent`` (``SubmitVerticesRequest.traceparents``),
so that consensus keeps every vertex in its own trace.

A consensus service without ``SubmitVertices`` (an older version) is sent
``SubmitVertex`` calls instead, one vertex after the other within a group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace

from cretoai.telemetry import format_traceparent
from cretoai.v1 import consensus_pb2, vertex_pb2
from services.gateway import metrics
from services.gateway.backends import BatchUnsupported, ConsensusClient
from services.gateway.errors import ApiError

log = logging.getLogger(__name__)

Reply = consensus_pb2.SubmitVertexResponse
Answer = Reply | ApiError

#: Most vertices, and bytes of vertices, in one call (the consensus service's bounds:
#: services/consensus/servicer.py MAX_SUBMIT_VERTICES and MAX_SUBMIT_BYTES).
MAX_CALL_VERTICES = 256
MAX_CALL_BYTES = 8 * 1024 * 1024
#: Calls to consensus in flight at once; later submissions wait and go out together.
MAX_CALLS_IN_FLIGHT = 2
#: A call to consensus unanswered for this long means consensus is behind (an answer
#: only says whether the vertices were admitted to its pool, which takes milliseconds
#: when it keeps up): new submissions are refused at once until it answers.
SLOW_CALL_S = 0.25
#: Vertices handed to the coalescer and not yet answered by consensus (queued or in a
#: call); a submission beyond it is refused at once (429 overloaded) rather than
#: queued behind a consensus service that is not keeping up.
MAX_PENDING_VERTICES = 4 * MAX_CALL_VERTICES


def behind() -> ApiError:
    """The refusal of a submission not sent to consensus because it is behind its load."""
    return ApiError(
        "overloaded", "consensus at this node is behind its offered load; retry with backoff"
    )


@dataclass(eq=False)
class _Group:
    """One submitter's vertices, sent together in one call."""

    vertices: Sequence[vertex_pb2.Vertex]
    size: int
    future: asyncio.Future[list[Answer]]
    context: otel_context.Context
    #: The submitter's sampled trace context ("" when not sampled).
    traceparent: str = field(default="")
    #: In a call (no longer refused for waiting too long in the queue).
    sent: bool = False
    #: Admitted by the gateway as it arrived: never refused for overload (module doc).
    admitted: bool = False
    #: The timer that refuses it if it waits too long in the queue.
    expiry: asyncio.TimerHandle | None = None


class Coalescer:
    def __init__(
        self,
        consensus: ConsensusClient,
        *,
        max_vertices: int = MAX_CALL_VERTICES,
        max_bytes: int = MAX_CALL_BYTES,
        max_in_flight: int = MAX_CALLS_IN_FLIGHT,
        max_pending: int = MAX_PENDING_VERTICES,
        max_queue_wait_s: float = SLOW_CALL_S,
        impatient: Callable[[], bool] = lambda: True,
    ) -> None:
        self._consensus = consensus
        #: A group still queued (both calls in flight) after this long is refused (429),
        #: while ``impatient()`` (consensus said overloaded lately): otherwise a long
        #: wait is a load spike, and the group waits on.
        self._max_queue_wait_s = max_queue_wait_s
        self._impatient = impatient
        self._max_pending = max_pending
        #: Vertices submitted here and not answered yet.
        self._pending = 0
        self._max_vertices = max_vertices
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._queue: deque[_Group] = deque()
        self._in_flight = 0
        #: When each call in flight started (monotonic), oldest first.
        self._calls_started: list[float] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_supported = True

    async def submit(
        self, vertices: Sequence[vertex_pb2.Vertex], *, admitted: bool = False
    ) -> list[Answer]:
        """Each vertex's answer from consensus (or why it was refused), in order;
        ``admitted``: the gateway admitted them as they arrived (module doc)."""
        if not vertices:
            return []
        size = sum(v.ByteSize() for v in vertices)
        if len(vertices) > self._max_vertices or size > self._max_bytes:
            # The APIs bound a batch below this; a group always fits in one call.
            raise ApiError(
                "bad_request",
                f"{len(vertices)} vertices of {size} bytes exceed one call to consensus "
                f"({self._max_vertices} vertices, {self._max_bytes} bytes)",
            )
        if self._pending and self._pending + len(vertices) > self._max_pending:
            metrics.CONSENSUS_SUBMIT_SHED.inc(len(vertices))
            raise ApiError(
                "overloaded",
                f"{self._pending} vertices are waiting for consensus at this node; "
                "retry with backoff",
            )
        span_context = trace.get_current_span().get_span_context()
        loop = asyncio.get_running_loop()
        group = _Group(
            vertices=vertices,
            size=size,
            future=loop.create_future(),
            context=otel_context.get_current(),
            traceparent=format_traceparent(span_context)
            if span_context.trace_flags.sampled
            else "",
            admitted=admitted,
        )
        self._queue.append(group)
        self._pending += len(vertices)
        self._schedule()
        if not admitted:
            group.expiry = loop.call_later(self._max_queue_wait_s, self._expire, group)
        try:
            return await group.future
        finally:
            if group.expiry is not None:
                group.expiry.cancel()
            self._pending -= len(vertices)

    def _expire(self, group: _Group) -> None:
        """A group that waited its time in the queue without a call: refused (the
        sender skips it)."""
        if group.sent or group.future.done():
            return
        if not self._impatient():
            group.expiry = asyncio.get_running_loop().call_later(
                self._max_queue_wait_s, self._expire, group
            )
            return
        metrics.CONSENSUS_SUBMIT_SHED.inc(len(group.vertices))
        group.future.set_exception(
            ApiError(
                "overloaded",
                f"waited {self._max_queue_wait_s * 1000:.0f} ms at this node for a call to "
                "consensus; retry with backoff",
            )
        )

    def refuse_queued(self) -> int:
        """Refuse every group still queued (not in a call yet) with :func:`behind`, but
        those admitted as they arrived; how many vertices. Done when consensus turns
        overloaded: those groups would reach consensus behind the calls in flight, only
        to be refused there, later."""
        refused = 0
        kept: deque[_Group] = deque()
        for group in self._queue:
            if group.admitted:
                kept.append(group)
            elif not group.future.done():
                refused += len(group.vertices)
                group.future.set_exception(behind())
        self._queue = kept
        if refused:
            metrics.CONSENSUS_SUBMIT_SHED.inc(refused)
        return refused

    def oldest_call_age(self) -> float:
        """Seconds the oldest call in flight has waited for consensus (0 when none)."""
        if not self._calls_started:
            return 0.0
        return time.monotonic() - self._calls_started[0]

    def _schedule(self) -> None:
        if not self._scheduled and self._queue and self._in_flight < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is queued, in as few calls as its bounds allow (up to the in-flight
        limit; the rest goes when a call ends)."""
        self._scheduled = False
        while self._queue and self._in_flight < self._max_in_flight:
            groups: list[_Group] = []
            count = size = 0
            while self._queue:
                group = self._queue[0]
                if group.future.done():  # its submitter has gone
                    self._queue.popleft()
                    continue
                if groups and (
                    count + len(group.vertices) > self._max_vertices
                    or size + group.size > self._max_bytes
                    or group.admitted != groups[0].admitted
                ):
                    break
                group.sent = True
                groups.append(self._queue.popleft())
                count += len(group.vertices)
                size += group.size
            if not groups:
                return
            self._in_flight += 1
            task = asyncio.create_task(self._send(groups), name="gateway-submit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, groups: list[_Group]) -> None:
        token = otel_context.attach(groups[0].context)
        started = time.monotonic()
        self._calls_started.append(started)
        try:
            answers = await self._call(groups)
        except ApiError as exc:  # the call failed: every vertex of it alike
            answers = [ApiError(exc.code, exc.message) for g in groups for _ in g.vertices]
        except Exception as exc:  # a bug: tell the submitters rather than leave them waiting
            log.exception("submitting to consensus failed")
            for group in groups:
                if not group.future.done():
                    group.future.set_exception(exc)
            return
        finally:
            otel_context.detach(token)
            self._calls_started.remove(started)
            self._in_flight -= 1
            self._schedule()  # the next call goes on a later turn: after what follows
        if any(isinstance(a, ApiError) and a.code == "overloaded" for a in answers):
            self.refuse_queued()
        at = 0
        for group in groups:
            mine = answers[at : at + len(group.vertices)]
            at += len(group.vertices)
            if not group.future.done():
                group.future.set_result(mine)

    async def _call(self, groups: list[_Group]) -> list[Answer]:
        vertices = [v for group in groups for v in group.vertices]
        if self._batch_supported:
            traceparents: list[str] = []
            if len(groups) > 1 and any(group.traceparent for group in groups):
                traceparents = [group.traceparent for group in groups for _ in group.vertices]
            metrics.CONSENSUS_SUBMIT_CALLS.labels("SubmitVertices").inc()
            metrics.CONSENSUS_SUBMIT_CALL_VERTICES.observe(len(vertices))
            try:
                return await self._consensus.submit_many(
                    vertices, traceparents, admitted=groups[0].admitted
                )
            except BatchUnsupported as exc:
                self._batch_supported = False
                log.warning(
                    "consensus has no SubmitVertices; submitting one vertex per call",
                    extra={"fields": {"detail": str(exc)}},
                )
        answers = await asyncio.gather(*(self._one_by_one(group) for group in groups))
        return [answer for group_answers in answers for answer in group_answers]

    async def _one_by_one(self, group: _Group) -> list[Answer]:
        """A group as SubmitVertex calls, in order (under its own trace context)."""
        token = otel_context.attach(group.context)
        try:
            answers: list[Answer] = []
            for vertex in group.vertices:
                metrics.CONSENSUS_SUBMIT_CALLS.labels("SubmitVertex").inc()
                metrics.CONSENSUS_SUBMIT_CALL_VERTICES.observe(1)
                try:
                    answers.append(await self._consensus.submit(vertex))
                except ApiError as exc:
                    answers.append(exc)
            return answers
        finally:
            otel_context.detach(token)
