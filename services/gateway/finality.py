"""One subscription to the consensus service's finalized stream, fanned out in the gateway.

The :class:`FinalityHub` holds the gateway process's only
``WatchFinalizedNotices`` call: each finalized batch without its vertex bodies,
with what execution decided about every vertex and the signed digest of each
copy. A notice resolves the callers waiting for one of its vertices (their
answers are built from the copy they sent, when it is the one finalized), and
while stream subscribers (WebSocket or gRPC) are open, the whole batch is read
from storage once and offered to each. When the call fails or ends, the hub
subscribes again with backoff, from the seq after the last one it saw, so no
batch is skipped.

A subscriber (:class:`Stream`) first catches up from storage, from the seq it
asked for, then follows the live batches in its bounded buffer, filling any
gap from storage. While it catches up, a full buffer drops its oldest batches
(storage has them); once it is live, a full buffer means it cannot keep up:
:attr:`Stream.overflowed` turns true, :attr:`Stream.ended` is set, and the API
disconnects it, to resume by seq.

Slots are shared max-min fairly between client addresses: when every one of
``max_streams`` is taken, a client holding fewer streams than the largest holder
by two or more takes the oldest stream of that holder (:meth:`Stream.evict`; the
evicted client may resume by seq). A few addresses can no longer keep every
other subscriber out by filling the slots.

A stream the gateway ends must close within :data:`END_GRACE_S`, else its call
is aborted (:attr:`Stream.abort`): a subscriber that reads nothing keeps its
handler blocked in a write, and held its slot for good (found 2026-12-04).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc

from cretoai.errors import ResourceExhausted
from cretoai.fairness import holder_to_evict
from cretoai.v1 import consensus_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import signed_digest, vertex_hash
from services.gateway import metrics
from services.gateway.backends import BatchWatchCall, ConsensusClient, StorageClient, WatchCall
from services.gateway.codec import batch_json, dumps
from services.gateway.errors import ApiError

log = logging.getLogger(__name__)

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 5.0
#: Finalized batches read from storage at once while a subscriber catches up: each
#: subscriber holds its page while sending it (2 batches: about 6 MB with 1-MB batches
#: and their encoding, against 13 with 8; a storage read per 2 MB costs little).
CATCH_UP_PAGE = 2
#: How long a stream the gateway ended (overflowed, evicted) may take to close before
#: its call is aborted.
END_GRACE_S = 5.0
ABORT_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """What execution decided about a vertex a caller waits for, and the batch that did."""

    seq: int
    rejected: bool
    #: The finalized batch (shared by every caller waiting for one of its vertices).
    notice: Notice | None = None


class SlowConsumer(ResourceExhausted):
    """A live subscriber's buffer overflowed; it may resume from ``resume_seq``."""

    def __init__(self, resume_seq: int | None) -> None:
        super().__init__(f"slow consumer; resume with from_seq={resume_seq}")
        self.resume_seq = resume_seq


class Entry:
    """A finalized batch with what execution decided about each vertex, as storage
    answers ``GetFinalized``.

    Shared by every subscriber it is offered to; its JSON text is built once.
    """

    __slots__ = ("_text", "entry", "size")

    def __init__(self, entry: storage_pb2.FinalizedEntry) -> None:
        self.entry = entry
        self.size = entry.ByteSize()
        self._text: str | None = None

    @property
    def seq(self) -> int:
        return self.entry.batch.seq

    def text(self) -> str:
        if self._text is None:
            self._text = dumps(batch_json(self.entry))
        return self._text


class Notice:
    """A finalized batch as consensus announces it: the header, each vertex's result and
    the signed digest of each copy, without the bodies (``FinalizedNotice``)."""

    __slots__ = ("_finalized_at", "notice")

    def __init__(self, notice: consensus_pb2.FinalizedNotice) -> None:
        self.notice = notice
        #: The position of each hash the batch finalized (the first, when a content came
        #: as several copies).
        self._finalized_at: dict[bytes, int] = {}
        for i, result in enumerate(notice.results):
            if result.status == FINALIZED:
                self._finalized_at.setdefault(result.hash, i)

    @property
    def seq(self) -> int:
        return self.notice.batch.seq

    def finalized(self, h: bytes) -> bool:
        return h in self._finalized_at

    def record(
        self, h: bytes, vertex: vertex_pb2.Vertex, copy: bytes
    ) -> vertex_pb2.VertexRecord | None:
        """Vertex ``h``'s record, as storage's GetVertex answers it, if this batch
        finalized it as the very copy ``vertex`` (whose signed digest is ``copy``): that
        copy, the height and the certificate. None if the batch did not finalize ``h``, or
        finalized another copy of it (or the notice names no copies): read it then."""
        at = self._finalized_at.get(h)
        copies = self.notice.copies
        if at is None or not copy or len(copies) != len(self.notice.results):
            return None
        if copies[at] != copy:
            return None
        return vertex_pb2.VertexRecord(
            hash=h,
            # the fields storage keeps (a copy with unknown fields is stored without them)
            vertex=vertex_pb2.Vertex(
                payload=vertex.payload,
                parents=vertex.parents,
                creator=vertex.creator,
                timestamp_ms=vertex.timestamp_ms,
                signature=vertex.signature,
            ),
            status=FINALIZED,
            seq=self.seq,
            height=self.notice.results[at].height,
            certificate=self.notice.batch.certificate,
        )


def notice_of_batch(batch: vertex_pb2.FinalizedBatch) -> consensus_pb2.FinalizedNotice:
    """A whole batch, as a consensus without ``WatchFinalizedNotices`` sends it, as a
    notice: each vertex's hash, and which were rejected (``batch.rejected`` lists their
    hashes in batch order; matched in order, so how many copies of a content were
    finalized is exact). It names no copies and no heights: answers are read from
    storage."""
    rejected = batch.rejected
    at = 0
    results = []
    for vertex in batch.vertices:
        h = vertex_hash(vertex)
        status = FINALIZED
        if at < len(rejected) and rejected[at] == h:
            status, at = REJECTED, at + 1
        results.append(vertex_pb2.VertexRecord(hash=h, status=status, seq=batch.seq))
    header = vertex_pb2.FinalizedBatch()
    header.CopyFrom(batch)
    header.ClearField("vertices")
    return consensus_pb2.FinalizedNotice(batch=header, results=results)


class Stream:
    """One subscriber of the finalized stream: a bounded buffer and its catch-up logic."""

    def __init__(
        self,
        hub: FinalityHub,
        *,
        from_seq: int | None,
        limit_bytes: int,
        api: str,
    ) -> None:
        self._hub = hub
        self._items: deque[Entry] = deque()
        self._bytes = 0
        self._limit = limit_bytes
        self._wake = asyncio.Event()
        self._closed = False
        self._registered = True
        #: Set once the subscriber follows live batches (overflow is then fatal).
        self.live = False
        self.overflowed = False
        #: Why the gateway ended it, other than overflow (eviction, shutdown).
        self.end_error: ApiError | None = None
        #: Set when the stream cannot go on: overflowed, evicted, or the gateway shuts down.
        self.ended = asyncio.Event()
        #: Ends the subscriber's call at once (its API sets it): used when the stream
        #: was ended and its handler did not close it within :data:`END_GRACE_S`.
        self.abort: Callable[[], object] | None = None
        self.api = api
        #: The next seq this subscriber needs (None: the first live one).
        self.next_seq = max(from_seq, 1) if from_seq is not None else hub.next_seq

    def offer(self, entry: Entry) -> None:
        if self._closed or self.overflowed:
            return
        while self._items and self._bytes + entry.size > self._limit:
            if self.live:
                metrics.STREAM_OVERFLOWS.labels(self.api).inc()
                self.overflowed = True
                self._end()
                return
            dropped = self._items.popleft()  # catching up: storage has it
            self._bytes -= dropped.size
        self._items.append(entry)
        self._bytes += entry.size
        self._wake.set()

    def _end(self) -> None:
        """The gateway ends the stream: its handler must close it within END_GRACE_S."""
        self._items.clear()
        self._bytes = 0
        self._wake.set()
        self.ended.set()
        if self._registered:
            self._hub.abort_later(self)

    def evict(self) -> None:
        """End the stream to give its slot to another client (it may resume by seq)."""
        if self.overflowed or self.end_error is not None:
            return
        metrics.STREAMS_EVICTED.labels(self.api).inc()
        self.end_error = ApiError(
            "overloaded",
            "stream slots all taken and this client holds the most; "
            f"resume with from_seq={self.next_seq}",
        )
        self._end()

    @property
    def closed(self) -> bool:
        """Closed by its handler (it no longer holds anything)."""
        return not self._registered

    def shut(self) -> None:
        """The gateway is shutting down: end the stream."""
        self._closed = True
        self._items.clear()
        self._wake.set()
        self.ended.set()

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        self.shut()
        if self._registered:
            self._registered = False
            self._hub.unsubscribe(self)
            metrics.SUBSCRIBERS.labels(self.api).dec()

    def _check_open(self) -> None:
        if self._closed:
            raise ApiError("shutting_down", "the gateway is shutting down")
        if self.end_error is not None:
            raise self.end_error

    async def _next_live(self) -> Entry:
        while True:
            if self.overflowed:
                raise SlowConsumer(self.next_seq)
            self._check_open()
            if self._items:
                entry = self._items.popleft()
                self._bytes -= entry.size
                return entry
            self._wake.clear()
            await self._wake.wait()

    async def _catch_up(self, end: int) -> AsyncGenerator[Entry, None]:
        """Batches from storage, from :attr:`next_seq` up to ``end`` (exclusive; 0: the head)."""
        assert self.next_seq is not None
        while end == 0 or self.next_seq < end:
            limit = CATCH_UP_PAGE if end == 0 else min(CATCH_UP_PAGE, end - self.next_seq)
            page = await self._hub.storage.finalized(self.next_seq, limit=limit, to_seq=end)
            if not page:
                return
            for raw in page:
                self._check_open()
                yield Entry(raw)
                self.next_seq = raw.batch.seq + 1

    async def entries(self) -> AsyncGenerator[Entry, None]:
        """Every finalized batch from :attr:`next_seq` on, in order, without end.

        Raises :class:`SlowConsumer` once a live subscriber's buffer overflowed,
        and :class:`ApiError` when storage is needed but unavailable, or at shutdown.
        """
        if self.next_seq is not None:
            async with contextlib.aclosing(self._catch_up(0)) as stored:
                async for entry in stored:
                    yield entry
        self.live = True
        while True:
            entry = await self._next_live()
            if self.next_seq is None:
                self.next_seq = entry.seq
            if entry.seq < self.next_seq:
                continue
            if entry.seq > self.next_seq:
                async with contextlib.aclosing(self._catch_up(entry.seq)) as missed:
                    async for earlier in missed:
                        yield earlier
                if self.next_seq != entry.seq:
                    raise ApiError(
                        "storage_unavailable",
                        f"finalized batches from seq {self.next_seq} are not in storage yet",
                    )
            self._check_open()
            yield entry
            self.next_seq = entry.seq + 1


class FinalityHub:
    """The gateway's one ``WatchFinalized`` subscription, for waiters and subscribers."""

    def __init__(
        self,
        consensus: ConsensusClient,
        storage: StorageClient,
        *,
        buffer_bytes: int,
        max_streams: int = 16,
        max_streams_per_client: int = 4,
    ) -> None:
        self.consensus = consensus
        self.storage = storage
        self._buffer_bytes = buffer_bytes
        #: Subscribers at once (WebSocket and gRPC): each may hold a page of batches
        #: read from storage and its buffer, so their number bounds the memory.
        self._max_streams = max_streams
        #: Of those, at once from one client address: one client cannot take them all.
        self._max_streams_per_client = max_streams_per_client
        #: Content hash -> the futures waiting for it, each with the copy it submitted.
        self._waiters: dict[bytes, dict[asyncio.Future[Outcome], vertex_pb2.Vertex]] = {}
        #: Open subscribers, each with its client's address (oldest first).
        self._streams: dict[Stream, str] = {}
        #: Evicted subscribers not yet closed by their handlers: out of the slots, but
        #: each may still hold an answer being sent; at most ``max_streams`` of them.
        self._ending: set[Stream] = set()
        self._unlogged_aborts = 0
        self._aborts_logged_at = -ABORT_LOG_INTERVAL_S
        self._next_seq: int | None = None
        #: Consensus answered WatchFinalizedNotices UNIMPLEMENTED (an older one): follow
        #: WatchFinalized's whole batches instead.
        self._whole_batches = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def next_seq(self) -> int | None:
        """The seq of the next batch expected from consensus (None before the first status)."""
        return self._next_seq

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-watch-finalized")

    async def close(self) -> None:
        """Stop watching; waiting callers and subscribers get ``shutting_down``."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ApiError("shutting_down", "the gateway is shutting down"))
        for stream in [*self._streams, *self._ending]:
            stream.shut()

    @contextlib.contextmanager
    def waiter(self, h: bytes, vertex: vertex_pb2.Vertex) -> Iterator[asyncio.Future[Outcome]]:
        """A future resolved when ``vertex`` (whose hash is ``h``) is finalized, as this
        copy or another, or when this copy is rejected. Register before submitting.

        Another copy of the content being rejected (a bad signature) does not resolve it:
        copies of one content differ only in their signature, and the signed digests of
        the batch's copies tell this copy from the others.
        """
        if self._closed:
            raise ApiError("shutting_down", "the gateway is shutting down")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(h, {})[future] = vertex
        metrics.WAITERS.inc()
        try:
            yield future
        finally:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the caller may not have awaited it
            metrics.WAITERS.dec()
            futures = self._waiters.get(h)
            if futures is not None:
                futures.pop(future, None)
                if not futures:
                    del self._waiters[h]

    def open_stream(self, from_seq: int | None, *, api: str, client: str) -> Stream:
        """Subscribe for ``client`` (its address); call :meth:`Stream.close` when done.
        ``from_seq`` None: live batches only."""
        if self._closed:
            raise ApiError("shutting_down", "the gateway is shutting down")
        held = Counter(self._streams.values())
        if held[client] >= self._max_streams_per_client:
            metrics.STREAMS_REFUSED.labels(api, "per_client").inc()
            raise ApiError(
                "overloaded",
                f"this client has {held[client]} finalized-batch streams open here "
                "(gateway.max_streams_per_client); close one or retry later",
            )
        if len(self._streams) >= self._max_streams and not self._make_room(client, held):
            metrics.STREAMS_REFUSED.labels(api, "max_streams").inc()
            raise ApiError(
                "overloaded",
                f"{len(self._streams)} finalized-batch streams are open here "
                "(gateway.max_streams); retry later",
            )
        stream = Stream(self, from_seq=from_seq, limit_bytes=self._buffer_bytes, api=api)
        self._streams[stream] = client
        metrics.SUBSCRIBERS.labels(api).inc()
        return stream

    def _make_room(self, client: str, held: Counter[str]) -> bool:
        """Evict the oldest stream of the client holding the most, if it holds at least
        two more than ``client`` (max-min fairness) and few evicted ones are still
        closing."""
        top = holder_to_evict(held, client)
        if top is None or len(self._ending) >= self._max_streams:
            return False
        victim = next(stream for stream, owner in self._streams.items() if owner == top)
        del self._streams[victim]
        self._ending.add(victim)
        victim.evict()
        return True

    def abort_later(self, stream: Stream) -> None:
        """Abort ``stream``'s call unless its handler closed it within END_GRACE_S."""
        asyncio.get_running_loop().call_later(END_GRACE_S, self._abort_if_open, stream)

    def _abort_if_open(self, stream: Stream) -> None:
        if stream.closed or stream.abort is None:
            return
        metrics.STREAMS_ABORTED.labels(stream.api).inc()
        self._unlogged_aborts += 1
        now = time.monotonic()
        if now - self._aborts_logged_at >= ABORT_LOG_INTERVAL_S:  # any client can cause it
            log.warning(
                "finalized-stream subscribers aborted: they took nothing for "
                f"{END_GRACE_S:g} s after their stream ended",
                extra={"fields": {"aborted": self._unlogged_aborts, "last_api": stream.api}},
            )
            self._unlogged_aborts, self._aborts_logged_at = 0, now
        stream.abort()

    def unsubscribe(self, stream: Stream) -> None:
        self._streams.pop(stream, None)
        self._ending.discard(stream)

    async def _stored_entry(self, seq: int) -> Entry:
        """Finalized batch ``seq`` as storage has it: vertices and results."""
        page = await self.storage.finalized(seq, limit=1, to_seq=seq + 1)
        if not page:
            raise ApiError("storage_unavailable", f"finalized batch {seq} is not in storage yet")
        return Entry(page[0])

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        failing = False
        while True:
            call: WatchCall | BatchWatchCall | None = None
            try:
                if self._next_seq is None:
                    status = await self.consensus.status()
                    self._next_seq = status.last_executed_seq + 1
                if failing:
                    metrics.WATCH_RECONNECTS.inc()
                notices: AsyncIterator[consensus_pb2.FinalizedNotice]
                if self._whole_batches:
                    call = self.consensus.watch(self._next_seq)
                    notices = (notice_of_batch(batch) async for batch in call)
                else:
                    call = self.consensus.watch_notices(self._next_seq)
                    notices = (notice async for notice in call)
                async for notice in notices:
                    if failing:
                        fields = {"seq": notice.batch.seq}
                        log.info("finalized stream resumed", extra={"fields": fields})
                    failing = False
                    backoff = RECONNECT_MIN_S
                    await self._on_batch(notice)
                log.info("consensus ended the finalized stream; subscribing again")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not self._whole_batches:
                    log.info("consensus has no WatchFinalizedNotices; following whole batches")
                    self._whole_batches = True
                    continue
                self._whole_batches = False  # consensus may come back upgraded
                self._log_unavailable(exc, failing)
            except ApiError as exc:
                self._log_unavailable(exc, failing)
            except Exception:  # a bug must not end finality for the whole gateway
                log.exception("finalized stream failed; retrying")
            finally:
                if call is not None:
                    call.cancel()
            failing = True
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    def _log_unavailable(self, exc: Exception, failing: bool) -> None:
        log.log(
            logging.DEBUG if failing else logging.WARNING,
            "finalized stream unavailable; retrying",
            extra={"fields": {"error": str(exc), "resume_seq": self._next_seq}},
        )

    async def _on_batch(self, pb: consensus_pb2.FinalizedNotice) -> None:
        seq = pb.batch.seq
        expected = self._next_seq
        if expected is not None and seq < expected:
            return  # already seen before a reconnect
        if expected is not None and seq > expected:
            fields = {"expected": expected, "got": seq}
            log.warning("gap in the finalized stream", extra={"fields": fields})
        self._next_seq = seq + 1
        metrics.WATCH_SEQ.set(seq)
        if self._waiters:
            await self._resolve(Notice(pb))
        if not self._streams:
            return
        try:
            entry = await self._stored_entry(seq)
        except ApiError as exc:  # each subscriber fills the gap from storage, or closes
            log.warning(
                "cannot read a finalized batch for the streams",
                extra={"fields": {"seq": seq, "error": exc.message}},
            )
            return
        for stream in list(self._streams):
            stream.offer(entry)

    async def _resolve(self, notice: Notice) -> None:
        """Answer the callers waiting for a vertex of ``notice``'s batch."""
        pb = notice.notice
        waited = {r.hash for r in pb.results if r.hash in self._waiters}
        if not waited:
            return
        # A content the batch finalized (as any copy) is final for all its waiters.
        for h in [h for h in waited if notice.finalized(h)]:
            for future in list(self._waiters.get(h, ())):
                if not future.done():
                    future.set_result(Outcome(seq=notice.seq, rejected=False, notice=notice))
        # A content the batch only rejected: final for the waiters of the copies rejected,
        # not for those of another copy (it may still be ordered and finalized).
        rejected = [h for h in waited if not notice.finalized(h)]
        if not rejected:
            return
        copies = await self._rejected_copies(pb, set(rejected))
        for h in rejected:
            for future, vertex in list(self._waiters.get(h, {}).items()):
                if not future.done() and signed_digest(vertex) in copies:
                    future.set_result(Outcome(seq=notice.seq, rejected=True, notice=notice))

    async def _rejected_copies(
        self, pb: consensus_pb2.FinalizedNotice, hashes: set[bytes]
    ) -> set[bytes]:
        """The signed digests of the copies of ``hashes`` the batch rejected: from the
        notice, or, for one read back from storage (no copies), from the stored batch."""
        if len(pb.copies) == len(pb.results):
            return {copy for r, copy in zip(pb.results, pb.copies, strict=True) if r.hash in hashes}
        try:
            stored = (await self._stored_entry(pb.batch.seq)).entry
        except ApiError as exc:  # the waiters' own timeout reads their records
            log.warning(
                "cannot read a finalized batch's rejected copies",
                extra={"fields": {"seq": pb.batch.seq, "error": exc.message}},
            )
            return set()
        return {
            signed_digest(v)
            for r, v in zip(stored.results, stored.batch.vertices, strict=True)
            if r.hash in hashes
        }
