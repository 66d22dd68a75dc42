"""The async driver around the pure replica: one task owns it and carries out its Ready.

Inputs (peer envelopes, client requests, ticks, driver-detected faults) go
through one queue, in order. After each burst of inputs the task drains
``replica.ready()`` and carries it out in the order of obligation:

1. **persist** the records (one synced storage write), then the signing mark (its
   own file, outside storage) — both before anything is sent, the mark after the
   records so that a failed persist never leaves the mark above them;
2. **send** the envelopes through the transport;
3. **execute** committed batches in sequence order (one atomic storage write
   each) and publish them to watchers;
4. serve state transfer, record evidence, count faults, ban peers.

Signatures are verified *before* the replica sees a message, in a thread pool,
concurrently but delivered in arrival order.

A failure of the replica task is never silent: a halt (``ConsensusHalted``) or any
unexpected exception is logged with its cause, counted, turns health NOT_SERVING
and calls ``on_fatal`` so that the process exits non-zero and its supervisor
restarts it (from durable state).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from cretoai.crypto.keys import node_id
from cretoai.protowire import as_is, length_delimited, tag, varint
from cretoai.tls import InternalTls
from cretoai.v1 import pbft_pb2, storage_pb2, storage_pb2_grpc, transport_pb2, vertex_pb2
from cretoai.vertex import (
    canonical_bytes,
    hash_of_canonical,
    signed_digest,
    signed_digest_of_canonical,
)
from services.consensus.byzantine import Byzantine
from services.consensus.core.codec import (
    DecodeError,
    certificate_from_pb,
    encode_envelope,
    envelope_from_pb,
    signed_to_pb,
)
from services.consensus.core.crypto import CONTEXT, batch_digest
from services.consensus.core.durable import ExecutedState
from services.consensus.core.messages import (
    BatchEnvelope,
    Envelope,
    EvidenceEnvelope,
    PrePrepare,
    Request,
    RequestsEnvelope,
    SignedEnvelope,
    StateRequestEnvelope,
    StateResponseEnvelope,
    TransferBatch,
)
from services.consensus.core.quorum import weak_quorum_size
from services.consensus.core.ready import Committed, Ready, Record, ServeState
from services.consensus.core.replica import ConsensusHalted, ProposeResult, Replica
from services.consensus.core.reputation import PENALTY, FaultKind
from services.consensus.executor import Executed, Executor
from services.consensus.feed import FinalizedFeed
from services.consensus.link import SESSION_METADATA, TransportLink
from services.consensus.mark import MarkFile
from services.consensus.repair import RepairBudget
from services.consensus.retry import call_until_done
from services.consensus.tracing import BatchTraces, now_ns, tracer
from services.consensus.verify import Verifier
from services.consensus.vouches import (
    FALSE_CLAIMS,
    MAX_VOUCHED,
    VOUCH_CONTEXT,
    check_vouched,
    claim_message,
)

log = logging.getLogger(__name__)

VIEW = Gauge("cretoai_consensus_view", "Current view")
LAST_EXECUTED = Gauge("cretoai_consensus_last_executed_seq", "Last executed sequence number")
STABLE = Gauge("cretoai_consensus_stable_checkpoint_seq", "Stable checkpoint sequence number")
POOL = Gauge("cretoai_consensus_pool_requests", "Requests waiting in the pool")
POOL_BYTES = Gauge("cretoai_consensus_pool_bytes", "Bytes of the requests waiting in the pool")
HELD_BATCHES = Gauge(
    "cretoai_consensus_held_batches",
    "Batches whose bodies the log holds in memory (proposed or voted, not yet applied)",
)
INBOX = Gauge("cretoai_consensus_inbox_depth", "Inputs waiting for the replica task")
VIEW_CHANGES = Counter("cretoai_consensus_view_changes_total", "Views this replica moved to")
BYZANTINE = Counter(
    "cretoai_consensus_byzantine_events_total",
    "Faults that cost a peer reputation (peer: the member's name, as in the transport's metrics)",
    ["peer", "kind"],
)
LATE_MESSAGES = Counter(
    "cretoai_consensus_late_messages_total",
    "Peers' messages for a view or seq left behind or above the window: honest peers send "
    "them when retransmissions cross, so they cost no reputation (peer, kind as above)",
    ["peer", "kind"],
)
BANS = Counter("cretoai_consensus_bans_total", "Peers banned")
EVIDENCE = Counter("cretoai_consensus_evidence_total", "Equivocation evidence recorded")
SIGNING_FLOOR = Gauge(
    "cretoai_consensus_signing_floor_seq",
    "The seq at or below which this replica signs nothing after a storage rollback (0: none)",
)
FLOOR_REFUSALS = Counter(
    "cretoai_consensus_signing_floor_refusals_total",
    "Messages not signed because of the signing floor",
)
PEER_REQUESTS_DROPPED = Counter(
    "cretoai_consensus_peer_requests_dropped_total",
    "Requests forwarded or relayed by peers and dropped: the pool, or that peer's share, was full",
)
STATE_REQUESTS_DROPPED = Counter(
    "cretoai_consensus_state_requests_dropped_total",
    "State requests dropped because the same peer's previous one was still being served "
    "or the peer drew its repair budget",
)
REPAIR_THROTTLED = Counter(
    "cretoai_consensus_repair_throttled_total",
    "State-transfer answers and resent batches not sent because the peer drew more "
    "repair bytes than its budget (services/consensus/repair.py)",
    ["peer"],
)
FAILURES = Counter(
    "cretoai_consensus_replica_failures_total",
    "Times the replica task stopped (halted, or an unexpected error)",
    ["kind"],
)
FINALITY = Histogram(
    "cretoai_consensus_finality_seconds",
    "From a local client's submission to execution of its vertex",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)
PERSIST = Histogram(
    "cretoai_consensus_persist_seconds",
    "Synced durable-state write before sending",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

#: Inputs taken per burst before the Ready is drained (bounds latency under load).
BURST = 256
#: A request a gateway admitted as it arrived (``SubmitVerticesRequest.admitted``) is
#: refused as overloaded only once the oldest pending one waited this many times
#: ``admission_max_wait`` (2 x 1 s by default: half of ``request_timeout``).
ADMITTED_WAIT_FACTOR = 2
#: How often :meth:`Driver._follow_admission` re-checks :meth:`Driver.overloaded` while
#: requests are pending (the state changes with the wall clock then).
ADMISSION_POLL_S = 0.02
#: Messages from peers being decoded and verified at once, at most (back-pressure on the
#: transport stream beyond) ...
VERIFYING_MAX = 512
#: ... and their bytes at most (one larger message goes alone): 512 frames of 4 MiB would
#: be 2 GiB, which a Byzantine peer sending large valid vertices faster than they verify
#: could otherwise make this process hold.
VERIFYING_MAX_BYTES = 64 * 1024 * 1024


#: gRPC codes of a side task's call that mean a service restarting, not a bug.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def request_hash(body: bytes) -> bytes:
    """The hash the core uses for a request: the signed digest of the serialized vertex.

    It covers the signature, so a batch digest commits to the exact signed copies. The
    body must be the vertex's canonical encoding (its fields in order, once, no unknown
    ones): the digest covers the fields, not the bytes, so a copy padded with an unknown
    field would keep its request hash while being other bytes, which replicas would then
    store differently (and a relayer could make a PRE-PREPARE's bodies oversized in its
    signer's name).
    """
    return signed_digest(_canonical_vertex(body))


def _canonical_vertex(body: bytes) -> vertex_pb2.Vertex:
    """The vertex ``body`` encodes; ValueError unless ``body`` is its canonical encoding
    (see :func:`request_hash`)."""
    try:
        vertex = vertex_pb2.Vertex.FromString(body)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"not a vertex: {exc}") from None
    vertex.DiscardUnknownFields()
    if vertex.SerializeToString() != body:
        raise ValueError(
            "not the canonical encoding of its vertex (unknown, repeated or reordered fields)"
        )
    return vertex


class _Bodies:
    """One envelope's request bodies as decoding them parsed them.

    :meth:`request_hash` is :func:`request_hash` that keeps each copy's vertex and
    canonical encoding (by signed digest), so that the checks after the decoding take
    them from here instead of parsing and encoding each body again; a body's content
    hash is computed only if a check asks for it (a BATCH nobody waits for needs none).
    Per body on a backup: 0.93-0.95 of the CPU of parsing and encoding twice
    (docs/benchmarks.md, ``message_costs``).
    """

    __slots__ = ("_decoded",)

    def __init__(self) -> None:
        self._decoded: dict[bytes, tuple[vertex_pb2.Vertex, bytes]] = {}

    def request_hash(self, body: bytes) -> bytes:
        vertex = _canonical_vertex(body)
        canonical = canonical_bytes(vertex)
        copy = signed_digest_of_canonical(canonical, vertex.signature)
        self._decoded[copy] = (vertex, canonical)
        return copy

    def vertices_and_contents(
        self, requests: Sequence[Request]
    ) -> tuple[list[vertex_pb2.Vertex], list[bytes]]:
        """The vertex and the content hash of each request (all decoded here)."""
        decoded = [self._decoded[r.hash] for r in requests]
        return [v for v, _ in decoded], [hash_of_canonical(c) for _, c in decoded]


#: The most a persist sends in one WriteState: well under the storage channel's 16-MiB
#: message limit (cretoai.channels), whatever a burst of PRE-PREPAREs makes a Ready hold.
PERSIST_MAX_BYTES = 8 * 1024 * 1024
#: Storage's WriteState (cretoai/v1/storage.proto), called with a request already encoded.
WRITE_STATE = "/cretoai.v1.Storage/WriteState"
#: WriteStateRequest's ``puts`` and ``deletes``, StateEntry's ``key`` and ``value``.
_PUTS_TAG, _DELETES_TAG = tag(1), tag(2)
_KEY_TAG, _VALUE_TAG = tag(1), tag(2)
#: ConsensusEnvelope's ``vouch`` (cretoai/v1/pbft.proto).
_VOUCH = 10


class StorageClient(storage_pb2_grpc.StorageStub):
    """Storage's stub, and :attr:`write_encoded`: WriteState sending a request already
    encoded (:func:`persist_writes`) as it is."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)  # type: ignore[no-untyped-call]
        self.write_encoded: grpc.aio.UnaryUnaryMultiCallable[
            bytes, storage_pb2.WriteStateResponse
        ] = channel.unary_unary(
            WRITE_STATE,
            request_serializer=as_is,
            response_deserializer=storage_pb2.WriteStateResponse.FromString,
        )


def persist_writes(records: Sequence[Record], max_bytes: int = PERSIST_MAX_BYTES) -> list[bytes]:
    """A Ready's records as encoded WriteState requests: one atomic write when they fit
    in ``max_bytes`` (the usual case: storage applies its deletes, then its puts).

    Otherwise the puts go in consecutive runs in their order, each of at most
    ``max_bytes`` (a larger record alone), and the deletes with the last run (minus keys
    this Ready also puts, which one write would have kept): the same end state. A crash
    between two writes leaves some of the new records and none of the deletes, a
    superset of a state the replica had: the replica emits a batch's bodies before its
    vote for it, and its records below a new stable checkpoint go only once that is
    written. Nothing of the Ready is sent before the last write is done.
    """
    if sum(_record_bytes(r) for r in records) <= max_bytes:
        return [_write_request(records)] if records else []
    puts = [r for r in records if r.value is not None]
    kept = {r.key for r in puts}
    deletes = [r for r in records if r.value is None and r.key not in kept]
    writes: list[bytes] = []
    run: list[Record] = []
    held = 0
    for record in puts:
        record_size = _record_bytes(record)
        if run and held + record_size > max_bytes:
            writes.append(_write_request(run))
            run, held = [], 0
        run.append(record)
        held += record_size
    writes.append(_write_request(run + deletes))
    return writes


def _encode(envelope: Envelope, vouch: pbft_pb2.Vouch | None = None) -> bytes:
    """The bytes of ``envelope`` for the transport, with this node's signed claim."""
    if vouch is None:
        return encode_envelope(envelope)
    # the claim after the envelope's fields, where serializing the message puts it
    return encode_envelope(envelope, tail=length_delimited(_VOUCH, vouch.SerializeToString()))


def _record_bytes(record: Record) -> int:
    """About what ``record`` adds to a WriteState request."""
    return len(record.key) + len(record.value or b"") + 16


def _write_request(records: Sequence[Record]) -> bytes:
    """A WriteStateRequest of ``records``, encoded by concatenation: a batch's 2-MiB
    record is copied once, into it (a request message would copy it in, and its
    serialization out again into growing buffers; docs/benchmarks.md, "A slow hour")."""
    parts: list[bytes] = []
    for record in records:
        if record.value is not None:
            key, value = record.key.encode(), record.value
            key_len, value_len = varint(len(key)), varint(len(value))
            size = len(_KEY_TAG) + len(key_len) + len(key)
            size += len(_VALUE_TAG) + len(value_len) + len(value)
            parts += (_PUTS_TAG, varint(size), _KEY_TAG, key_len, key, _VALUE_TAG, value_len, value)
    for record in records:
        if record.value is None:
            key = record.key.encode()
            parts += (_DELETES_TAG, varint(len(key)), key)
    return b"".join(parts)


_NO_CARRIER: Mapping[str, str] = {}

#: How long stopping waits for tasks to end after cancelling them (again each second).
STOP_WAIT_S = 10


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any still running after a
    second (Python 3.11's ``asyncio.wait_for`` can lose a cancellation that races its
    timeout, and a task that lost it would hold the process's stop until it is killed);
    at most :data:`STOP_WAIT_S` seconds. Their outcomes are retrieved, not raised."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(STOP_WAIT_S):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    if pending:
        log.warning("tasks still running after stop", extra={"fields": {"tasks": len(pending)}})
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


@dataclass(frozen=True)
class _Step:
    sender: int
    envelope: Envelope
    #: When the envelope reached this process (monotonic ns), and its trace context.
    arrived: int
    carrier: Mapping[str, str]
    #: Its bytes on the wire, counted in ``Driver.verifying_bytes`` until it is applied.
    size: int = 0


@dataclass(frozen=True)
class _Propose:
    request: Request
    result: asyncio.Future[ProposeResult]


@dataclass(frozen=True)
class _Fault:
    sender: int
    kind: FaultKind


class _Tick:
    pass


_TICK = _Tick()
_Input = _Step | _Propose | _Fault | _Tick


class Driver:
    def __init__(
        self,
        *,
        replica: Replica,
        public_keys: Sequence[bytes],
        storage: StorageClient,
        transport_target: str,
        tls: InternalTls | None = None,
        verifier: Verifier,
        feed: FinalizedFeed,
        tick_ms: int,
        pending_max: int,
        pending_max_bytes: int | None = None,
        executed: ExecutedState | None = None,
        mark_file: MarkFile | None = None,
        byzantine: Byzantine | None = None,
        vouch_signer: Callable[[bytes], bytes] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        peer_names: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        cross_check_recent: bool = False,
    ) -> None:
        self.replica = replica
        self._clock = clock
        self.byzantine = byzantine
        #: Signs this replica's claims of validity (context ``cretoai.v1.vouch``); None:
        #: it vouches for nothing.
        self._vouch_signer = vouch_signer
        self._last_vouch: tuple[bytes, pbft_pb2.Vouch | None] | None = None
        self._keys = tuple(public_keys)
        self.node_ids = tuple(node_id(k) for k in self._keys)
        self._index = {nid: i for i, nid in enumerate(self.node_ids)}
        #: Members' names by replica index (metric labels and logs); the index without them.
        self.names = tuple(peer_names) or tuple(str(i) for i in range(len(self._keys)))
        self._storage = storage
        self._verifier = verifier
        self._executor = Executor(
            storage,
            verifier,
            executed=executed or ExecutedState(),
            contents_max=pending_max,
            cross_check_recent=cross_check_recent,
        )
        #: What this process finalized lately, for admission and execution (recent.py).
        self.recent = self._executor.recent
        self.on_fatal = on_fatal
        self._mark_file = mark_file
        self.feed = feed
        self.link = TransportLink(transport_target, self._on_inbound, tls=tls)
        self._tick_s = tick_ms / 1000
        transfer = replica.config.transfer_max_bytes
        self._repair = RepairBudget(
            rate=transfer / (replica.config.status_interval * self._tick_s),
            burst=2 * transfer,
            clock=clock,
        )
        limit = replica.config.admission_max_wait
        #: Admission on the wall clock: the replica counts a request's wait in ticks,
        #: which run slow when this process is starved (a tick is never queued behind
        #: another), so under overload "admission_max_wait ticks" lasts seconds.
        self._admission_wait_s = None if limit is None else limit * self._tick_s
        #: When each of the latest ticks began (monotonic); the last is ``replica.now``.
        self._tick_began: deque[float] = deque(
            [clock()], maxlen=ADMITTED_WAIT_FACTOR * (limit or 0) + 2
        )
        self._inbox: asyncio.Queue[_Input] = asyncio.Queue()
        if verifier.vouches is not None:
            verifier.on_false_claim = self._false_claim
        #: Set when an input is applied (wakes :meth:`_follow_admission`).
        self._applied = asyncio.Event()
        #: :meth:`overloaded` as last checked by :meth:`_follow_admission`.
        self.admission_overloaded = False
        self._admission_changed = asyncio.Condition()
        self._tick_pending = False
        #: While the replica is idle the ticker sleeps through the ticks that only count
        #: time (``Replica.quiet_ticks``): at most ``_idle_ticks`` of them from
        #: ``_idle_from`` (clock). An input counts those already due first, and wakes it.
        self._idle_from: float | None = None
        self._idle_ticks = 0
        self._idle_wake = asyncio.Event()
        self._verifying: asyncio.Queue[tuple[asyncio.Task[_Input | None], int]] = asyncio.Queue(
            VERIFYING_MAX
        )
        self.verifying_bytes = 0
        self._verifying_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        #: Vertices known here but not executed (for GetPending and parent checks), by
        #: content hash; bounded in count and in bytes (the oldest go first): they come
        #: from peers too, and a vertex may be as large as a batch.
        self.pending: OrderedDict[bytes, vertex_pb2.Vertex] = OrderedDict()
        self._pending_max = pending_max
        self._pending_max_bytes = (
            2 * replica.config.pool_max_bytes if pending_max_bytes is None else pending_max_bytes
        )
        self._pending_sizes: dict[bytes, int] = {}
        self.pending_bytes = 0
        self._submitted_at: dict[bytes, float] = {}
        #: Span contexts and stage timestamps of vertices and batches (tracing.py).
        self.traces = BatchTraces(
            replica.id, replica.config.n, window=replica.config.watermark_window
        )
        self.halted: str | None = None
        self.view_changes = 0
        self._last_view = replica.view
        self._floor_refusals = 0
        self._peer_requests_dropped = 0
        self._last_active = replica.active
        self._last_stable = replica.stable_seq
        #: Faults per (peer, kind): logged at the 1st, 2nd, 4th, 8th, ... (bounded lines).
        self._faults_seen: Tally[tuple[int, str]] = Tally()
        #: Peers whose state transfer is being read and sent (one each at a time).
        self._serving: set[int] = set()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.link.start()
        self._tasks = [
            asyncio.create_task(self._run(), name="replica"),
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._deliver_verified(), name="verified"),
            asyncio.create_task(self._follow_admission(), name="admission"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._core_task_done)
        self._publish_gauges()

    def _core_task_done(self, task: asyncio.Task[None]) -> None:
        """A core task runs until stop: one that ended otherwise (a peer's message that
        broke delivery, say) leaves the replica deaf or frozen, so it is fatal, loudly."""
        if task.cancelled() or self.halted is not None:
            return
        exc = task.exception()
        reason = f"task {task.get_name()} ended"
        if exc is not None:
            log.critical(f"consensus {reason}", exc_info=exc, extra={"fields": self._where()})
            reason += f": {type(exc).__name__}: {exc}"
        self._fail("error", reason)

    async def stop(self) -> None:
        await _cancel_all(self._tasks)
        await self.link.close()
        # Envelopes still being checked, and side effects, end here: after this the
        # service closes the verifier's pool, which they would otherwise still use.
        pending: list[asyncio.Task[Any]] = list(self._side_tasks)
        while not self._verifying.empty():
            pending.append(self._verifying.get_nowait()[0])
        await _cancel_all(pending)

    @property
    def ready(self) -> bool:
        return self.halted is None and self.link.connected.is_set()

    def overloaded(self) -> bool:
        """Whether new local requests are refused (admission control): the replica's own
        check, or its oldest pending request waited longer than ``admission_max_wait``
        on the wall clock.

        The wait counts from when the tick the request is stamped with began. A tick
        that lasts long is itself the replica task falling behind (ticks are applied
        in order with everything else it has to do), so it counts as waiting. One
        stamped before the ticks remembered here arrived more than
        ``admission_max_wait`` ticks ago, each at least a tick period long.
        """
        return self.replica.overloaded() or self._waited_longer(1)

    def too_far_behind_for_admitted(self) -> bool:
        """Whether even requests a gateway admitted as they arrived are refused: the
        oldest pending request waited ADMITTED_WAIT_FACTOR x ``admission_max_wait`` on
        the wall clock. What a gateway admitted before it learnt of an overload is
        bounded by its own limits, but several gateways' worth could still keep the
        pool's requests waiting towards ``request_timeout`` (then relays and view
        changes); past this line they are refused after all."""
        return self._waited_longer(ADMITTED_WAIT_FACTOR)

    def _waited_longer(self, factor: int) -> bool:
        """The oldest pending request waited longer than ``factor`` x
        ``admission_max_wait`` on the wall clock (see :meth:`overloaded`; ``factor`` at
        most ADMITTED_WAIT_FACTOR: that many limits' worth of ticks are remembered)."""
        arrived = self.replica.oldest_pending_since()
        if arrived is None or self._admission_wait_s is None:
            return False
        began = self._tick_began
        index = arrived - (self.replica.now - len(began) + 1)
        if index < 0:  # more ticks ago than remembered, each at least a tick period long
            return True
        return self._clock() - began[index] > factor * self._admission_wait_s

    async def _follow_admission(self) -> None:
        """Keep :attr:`admission_overloaded` equal to :meth:`overloaded`, and tell
        :meth:`watch_admission`'s watchers when it changes. Re-checked every
        ADMISSION_POLL_S while a request is pending (its wait grows with the clock), and
        otherwise only after the replica task has applied inputs (with nothing pending
        it cannot become overloaded), so an idle node does not wake for it. One task
        whatever the number of watchers: a watcher costs nothing until a change."""
        while True:
            state = self.overloaded()
            if state != self.admission_overloaded:
                self.admission_overloaded = state
                async with self._admission_changed:
                    self._admission_changed.notify_all()
            if self.replica.oldest_pending_since() is None:
                self._applied.clear()
                await self._applied.wait()
            else:
                await asyncio.sleep(ADMISSION_POLL_S)

    def _admission_differs(self, state: bool) -> Callable[[], bool]:
        return lambda: self.admission_overloaded != state

    async def watch_admission(self) -> AsyncGenerator[bool, None]:
        """:attr:`admission_overloaded` now, then each time it changes."""
        while True:
            state = self.admission_overloaded
            yield state
            async with self._admission_changed:
                await self._admission_changed.wait_for(self._admission_differs(state))

    async def verify_vertices(
        self,
        vertices: Sequence[vertex_pb2.Vertex],
        copies: Sequence[bytes],
        contents: Sequence[bytes],
    ) -> list[bool]:
        """Whether each signed copy verifies (``copies``: their signed digests,
        ``contents``: their hashes), all at once; a copy that comes twice verified once."""
        return await self._verifier.verify_vertices(vertices, copies, contents)

    # --- inputs ----------------------------------------------------------------------

    async def propose(
        self,
        vertex: vertex_pb2.Vertex,
        content: bytes,
        copy: bytes | None = None,
        *,
        admitted: bool = False,
    ) -> ProposeResult:
        """A local client's vertex (already validated and verified); ``content`` its hash,
        ``copy`` its signed digest when the caller has it.

        Admission is decided here, at once (:meth:`_admit`), unless the caller decided it
        already (``admitted``: :meth:`overloaded` said no when its call arrived, before the
        work of checking the vertex); the replica task then decides the rest (duplicate,
        pool full, accepted).
        """
        copy = copy if copy is not None else signed_digest(vertex)
        request = Request(hash=copy, body=vertex.SerializeToString())
        future = self._admit(request, admitted=admitted)
        if not future.done():
            self._remember(content, vertex, request.size)
            self._executor.note_content(request.hash, content)
            self.traces.submitted(request.hash)
        result = await future
        if result == ProposeResult.ACCEPTED:
            self._submitted_at.setdefault(content, time.monotonic())
        return result

    def _admit(self, request: Request, *, admitted: bool = False) -> asyncio.Future[ProposeResult]:
        """The answer to a local request: OVERLOADED at once when :meth:`overloaded` says
        so (unless ``admitted`` already), else the replica task's (the request is queued
        for it).

        Admission is decided at the door and binds: the replica task does not refuse an
        admitted request for overload. It may be busy for a while (a synced write, a
        batch's execution) with requests queued for it, during which the wait it would
        judge them by grows; judged there, they would be refused late, after the caller
        had waited for nothing, which an overloaded client needs least. What may queue
        meanwhile is what arrives in that while, and the pool's own bound still holds.
        """
        future: asyncio.Future[ProposeResult] = asyncio.get_running_loop().create_future()
        if not admitted and self.overloaded():
            future.set_result(ProposeResult.OVERLOADED)
        else:
            self._inbox.put_nowait(_Propose(request, future))
        return future

    def _remember(self, digest: bytes, vertex: vertex_pb2.Vertex, size: int) -> None:
        """Keep a vertex that arrived (by content ``digest``; ``size``: its serialized
        bytes) until it is executed."""
        self._forget(digest)
        self.pending[digest] = vertex
        self._pending_sizes[digest] = size
        self.pending_bytes += size
        while len(self.pending) > self._pending_max or (
            self.pending_bytes > self._pending_max_bytes and len(self.pending) > 1
        ):
            oldest, _ = self.pending.popitem(last=False)
            self.pending_bytes -= self._pending_sizes.pop(oldest)

    def _forget(self, digest: bytes) -> None:
        if self.pending.pop(digest, None) is not None:
            self.pending_bytes -= self._pending_sizes.pop(digest)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            if self._tick_pending:  # never let ticks pile up behind a slow Ready
                continue
            idle = self.replica.quiet_ticks() if self._inbox.empty() else 0
            if not idle:
                self._tick_pending = True
                self._inbox.put_nowait(_TICK)
                continue
            # Idle: this tick and the ``idle - 1`` after it only count time. Count them
            # here and sleep through them (an idle node wakes a few times a second, not a
            # hundred), unless an input comes first: ``_apply`` then counts those due
            # and wakes us to decide again.
            self._tick(self._clock())
            if idle > 1:
                self._idle_from, self._idle_ticks = self._clock(), idle - 1
                self._idle_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle_wake.wait(), (idle - 1) * self._tick_s)
                if self._idle_from is not None:  # slept them all through
                    self._count_idle_ticks(every=True)

    def _count_idle_ticks(self, *, every: bool = False) -> None:
        """Apply the idle ticks due so far (``every``: all of them), each of which only
        counts time (see ``_ticker``); the ticker's idle sleep ends."""
        start = self._idle_from
        assert start is not None
        due = self._idle_ticks
        if not every:
            due = min(due, int((self._clock() - start) / self._tick_s))
        for i in range(1, due + 1):
            self._tick(start + i * self._tick_s)
        self._idle_from = None

    def _tick(self, began: float) -> None:
        """One tick of the replica, which began at ``began`` (clock), remembered for
        :meth:`overloaded`."""
        self.replica.tick()
        self._tick_began.append(began)

    async def _on_inbound(self, envelope: transport_pb2.Envelope) -> None:
        sender = self._index.get(envelope.__getattribute__("from"))
        if sender is None:
            return  # the transport delivers only authenticated members
        carrier = dict(envelope.trace_context) if envelope.trace_context else _NO_CARRIER
        payload = envelope.payload  # each read of a bytes field is a copy of it
        size = len(payload)
        # bounded in count and bytes: back-pressure on the transport stream
        while self.verifying_bytes and self.verifying_bytes + size > VERIFYING_MAX_BYTES:
            self._verifying_freed.clear()
            await self._verifying_freed.wait()
        self.verifying_bytes += size
        task = asyncio.create_task(self._check(sender, payload, now_ns(), carrier))
        await self._verifying.put((task, size))

    async def _check(
        self,
        sender: int,
        payload: bytes,
        arrived: int = 0,
        carrier: Mapping[str, str] = _NO_CARRIER,
    ) -> _Input | None:
        """Decode and verify one envelope from ``sender``; a fault instead when it is bad."""
        try:
            pb = pbft_pb2.ConsensusEnvelope.FromString(payload)
            bodies = _Bodies()
            env = envelope_from_pb(pb, request_hash=bodies.request_hash)
            vouch = pb.vouch if pb.HasField("vouch") else None
            vouched: list[bytes] = list(vouch.copies) if vouch is not None else []
            problem = check_vouched(vouched) if vouch is not None else None
            if problem is None and vouch is not None and vouch.signer >= len(self._keys):
                problem = f"a claim by validator {vouch.signer} of {len(self._keys)}"
            if problem is not None:
                raise DecodeError(problem)
        except Exception as exc:  # a peer's bytes: whatever fails, it is malformed input
            log.info(
                "undecodable envelope",
                extra={
                    "fields": {
                        "peer": self.names[sender],
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    }
                },
            )
            return _Fault(sender, FaultKind.MALFORMED)
        if isinstance(env, SignedEnvelope):
            signed = env.signed
            if not 0 <= signed.signer < len(self._keys):
                return _Fault(sender, FaultKind.NON_MEMBER)
            ok = await self._verifier.verify(
                self._keys[signed.signer], signed.body, signed.signature, context=CONTEXT,
                kind="consensus",
            )  # fmt: skip
            if not ok:
                return _Fault(sender, FaultKind.INVALID_SIGNATURE)
        if vouch is not None and vouched and self._verifier.vouches is not None:
            # the claims, before this envelope's own bodies are checked: a primary
            # vouches for the bodies beside its PRE-PREPARE
            ok = await self._verifier.verify(
                self._keys[vouch.signer], claim_message(vouched), vouch.signature,
                context=VOUCH_CONTEXT, kind="vouch",
            )  # fmt: skip
            if not ok:
                return _Fault(sender, FaultKind.INVALID_SIGNATURE)
            false = set(self._verifier.known_invalid(vouched))
            if false:  # copies this node already found invalid: a lie, signed
                for copy in false:
                    self._false_claim(vouch.signer, copy)
                vouched = [copy for copy in vouched if copy not in false]
            self._verifier.vouches.add(vouch.signer, vouched)
        if isinstance(env, RequestsEnvelope):
            if not env.requests:  # a peer's claims alone (recorded above)
                return None
            # Forwarded or relayed requests: an honest replica sends only copies it
            # verified itself, and a verdict is a function of the copy's exact bytes,
            # so a copy that fails here is the sender's own fault.
            if carrier:
                try:
                    self.traces.forwarded(env.requests, carrier)
                except Exception:  # a peer's trace context is no reason to drop requests
                    log.debug("unusable trace context", exc_info=True)
            vertices, contents = bodies.vertices_and_contents(env.requests)
            verdicts = await self._verify_all(env.requests, vertices, contents)
            valid = []
            for request, vertex, content, ok in zip(
                env.requests, vertices, contents, verdicts, strict=True
            ):
                if ok:
                    valid.append(request)
                    self._remember(content, vertex, request.size)
                    self._executor.note_content(request.hash, content)
            if len(valid) < len(env.requests):
                self._inbox.put_nowait(_Fault(sender, FaultKind.INVALID_SIGNATURE))
            if not valid:
                return None
            env = RequestsEnvelope(tuple(valid))
        elif isinstance(env, SignedEnvelope | BatchEnvelope):
            # Pre-verify batch bodies so execution hits the cache (validity is decided
            # there; a primary may order an invalid copy, which is then rejected). Only
            # bodies the replica may use: a PRE-PREPARE's own, a BATCH some slot waits
            # for (an honest relayer may carry invalid copies a primary ordered, so a bad
            # signature is nobody's fault here; unwanted bodies cost no verification).
            # Execution verifies whatever was not verified ahead.
            if isinstance(env, BatchEnvelope):
                wanted = self.replica.awaits_batch(
                    batch_digest(tuple(r.hash for r in env.requests))
                )
                useful = env.requests if wanted else ()
            else:
                msg = env.signed.msg
                listed = set(msg.request_hashes) if isinstance(msg, PrePrepare) else set()
                useful = tuple(r for r in env.requests if r.hash in listed)
            if not useful:
                return _Step(sender, env, arrived, carrier, len(payload))
            vertices, contents = bodies.vertices_and_contents(useful)
            for request, vertex, content in zip(useful, vertices, contents, strict=True):
                self._remember(content, vertex, request.size)
                self._executor.note_content(request.hash, content)
            vouches = self._verifier.vouches
            if (
                vouches is None
                or not isinstance(env, SignedEnvelope)
                or not isinstance(env.signed.msg, PrePrepare)
                or not vouches.worth_claims(len(env.signed.msg.request_hashes))
            ):
                # a small batch: claims are not worth their messages, verify it now
                await self._verify_all(useful, vertices, contents)
            elif self._co_verifies(env.signed.signer):
                # a copy the primary's own clients sent has its claim only: verify and
                # vouch for it to the other backups, who wait for that claim
                lacking = [not vouches.vouched(r.hash) for r in useful]
                verdicts = await self._verify_all(useful, vertices, contents)
                mine = [
                    r.hash
                    for r, lacked, ok in zip(useful, lacking, verdicts, strict=True)
                    if lacked and ok
                ]
                if mine:
                    self._vouch_to_others(mine, env.signed.signer)
            else:
                # Copies some member vouched for wait for their f+1-th claim (a forward's
                # entry node, a co-verifier): execution takes them as valid then, or
                # verifies them. Copies nobody vouched for are verified now.
                now = [
                    i
                    for i, r in enumerate(useful)
                    if vouches.vouched(r.hash) or vouches.count(r.hash) == 0
                ]
                if now:
                    await self._verify_all(
                        [useful[i] for i in now],
                        [vertices[i] for i in now],
                        [contents[i] for i in now],
                    )
        return _Step(sender, env, arrived, carrier, len(payload))

    def _false_claim(self, member: int, copy: bytes) -> None:
        """``member`` signed a claim that ``copy`` is valid, and it is not: its fault."""
        if member == self.replica.id:
            return
        FALSE_CLAIMS.inc()
        log.info(
            "a peer vouched for an invalid copy",
            extra={"fields": {"peer": self.names[member], "copy": copy.hex()[:16]}},
        )
        self._inbox.put_nowait(_Fault(member, FaultKind.INVALID_SIGNATURE))

    def _co_verifies(self, primary: int) -> bool:
        """Whether this replica verifies and vouches for the bodies beside ``primary``'s
        PRE-PREPAREs: the f replicas after the primary do, so that a copy that entered at
        the primary has f+1 claims too."""
        n = self.replica.config.n
        followers = {(primary + k) % n for k in range(1, weak_quorum_size(n))}
        return self.replica.id in followers

    async def _verify_all(
        self,
        requests: Sequence[Request],
        vertices: Sequence[vertex_pb2.Vertex],
        contents: Sequence[bytes],
    ) -> list[bool]:
        """The verdicts of a message's requests, verified at once on the verifier's
        threads (one after the other, a 256-vertex PRE-PREPARE took one core's time)."""
        return await self._verifier.verify_vertices(vertices, [r.hash for r in requests], contents)

    async def _deliver_verified(self) -> None:
        while True:
            await self._deliver_one_verified()

    async def _deliver_one_verified(self) -> None:
        """The oldest message being checked, to the replica task in arrival order."""
        task, size = await self._verifying.get()
        item: _Input | None = None
        try:
            item = await task
        except asyncio.CancelledError:
            self._release(size)
            raise
        except Exception:
            # A bug met by one peer's message: that message is lost, delivery goes on
            # (a Byzantine peer must not be able to silence or restart the replica).
            FAILURES.labels("check").inc()
            log.error("checking a peer's message failed", exc_info=True)
        if isinstance(item, _Step):
            # its bytes stay counted until the replica task applies it: while that task
            # waits (a full disk, a storage that is down) peers' messages once piled up
            # here without bound (99 -> 329 MB in 4.5 min, still growing)
            self._inbox.put_nowait(item)
            INBOX.set(self._inbox.qsize())
            return
        self._release(size)
        if item is not None:
            self._inbox.put_nowait(item)

    def _release(self, size: int) -> None:
        """``size`` bytes of peers' messages are no longer held (checked and applied)."""
        self.verifying_bytes -= size
        self._verifying_freed.set()

    # --- the replica task ------------------------------------------------------------

    def _apply(self, item: _Input) -> None:
        if self._idle_from is not None:  # the ticker sleeps: bring the clock up to date
            self._count_idle_ticks()
            self._idle_wake.set()
        if isinstance(item, _Tick):
            self._tick_pending = False
            self._tick(self._clock())
        elif isinstance(item, _Step):
            self._release(item.size)
            self.traces.received(item.envelope, item.arrived, item.carrier)
            self.replica.step(item.sender, item.envelope)
        elif isinstance(item, _Propose):
            result = self.replica.propose(item.request, admitted=True)  # see _admit
            self.traces.pooled(item.request.hash, result == ProposeResult.ACCEPTED)
            if not item.result.done():  # the caller may have given up (its deadline passed)
                item.result.set_result(result)
        else:
            self.replica.report_fault(item.sender, item.kind)
        self._applied.set()

    async def _run(self) -> None:
        try:
            while True:
                self._apply(await self._inbox.get())
                for _ in range(BURST):
                    try:
                        item = self._inbox.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    self._apply(item)
                INBOX.set(self._inbox.qsize())
                # Carrying out a Ready can make more (a checkpoint over applied state).
                while ready := self.replica.ready():
                    await self._carry_out(ready)
                self._publish_gauges()
        except asyncio.CancelledError:
            raise
        except ConsensusHalted as exc:
            self._fail("halted", str(exc))
        except Exception as exc:
            log.critical("replica task failed", exc_info=True, extra={"fields": self._where()})
            self._fail("error", f"{type(exc).__name__}: {exc}")

    async def _write_state(self, write: bytes) -> None:
        await self._storage.write_encoded(write, timeout=30)

    def _fail(self, kind: str, reason: str) -> None:
        """Stop for good: NOT ready (health NOT_SERVING), counted, and the process told."""
        reason = "; ".join(line.strip() for line in reason.splitlines() if line.strip())
        self.halted = reason
        FAILURES.labels(kind).inc()
        log.critical(
            "consensus halted", extra={"fields": {**self._where(), "reason": reason, "kind": kind}}
        )
        if self.on_fatal is not None:
            self.on_fatal(reason)

    async def _carry_out(self, rd: Ready) -> None:
        started = time.perf_counter()
        sends = tuple(out.envelope for out in rd.send)
        self.traces.ready(sends, tuple(c.seq for c in rd.execute))
        persist_span = None
        if rd.persist or rd.signed_mark is not None:
            persist_span = self.traces.persist_span(sends)
        token = None
        if persist_span is not None:
            token = otel_context.attach(trace.set_span_in_context(persist_span))
        for write in persist_writes(rd.persist):
            await call_until_done(functools.partial(self._write_state, write), what="persist")
        if rd.signed_mark is not None and self._mark_file is not None:
            await asyncio.to_thread(self._mark_file.store, rd.signed_mark)
        if rd.persist or rd.signed_mark is not None:
            elapsed = time.perf_counter() - started
            PERSIST.observe(elapsed)
            BatchTraces.persisted(elapsed)
        if persist_span is not None and token is not None:
            otel_context.detach(token)
            persist_span.end()
        for out in rd.send:
            payload = None
            if out.repair and out.to is not None:
                if not self._repair.allows(out.to):
                    REPAIR_THROTTLED.labels(self.names[out.to]).inc()
                    continue
                payload = encode_envelope(out.envelope)
                self._repair.charge(out.to, len(payload))
            carrier = self.traces.sending(out.envelope, out.to)
            if isinstance(out.envelope, StateRequestEnvelope):
                self._log_state_request(out.to, out.envelope)
            if self.byzantine is not None:  # test clusters only (fault injection)
                for to_index, payload in self.byzantine.rewrite(out):
                    to = "" if to_index is None else self.node_ids[to_index]
                    self.link.send(payload, to=to, trace_context=carrier)
                continue
            to = "" if out.to is None else self.node_ids[out.to]
            if payload is None:
                payload = _encode(out.envelope, self._pre_prepare_vouch(out.envelope))
            self.link.send(payload, to=to, trace_context=carrier)
            vouches = self._verifier.vouches
            if (
                vouches is not None
                and isinstance(out.envelope, RequestsEnvelope)
                and out.to is not None
                and vouches.worth_claims(len(out.envelope.requests))
            ):
                self._vouch_to_others(
                    self._verifier.valid_copies([r.hash for r in out.envelope.requests]), out.to
                )
        for committed in rd.execute:
            executed = await self._execute(committed)
            self.replica.applied(committed.seq, executed.state_digest)
            now = time.monotonic()
            for content in executed.contents:
                self._forget(content)
                submitted = self._submitted_at.pop(content, None)
                if submitted is not None:
                    FINALITY.observe(now - submitted)
            self.feed.publish(executed)
            self.traces.executed(committed.seq, executed.storage_started, executed.storage_done)
            log.debug(
                "batch executed",
                extra={
                    "fields": {
                        "view": committed.certificate.view,
                        "seq": committed.seq,
                        "vertices": len(committed.requests),
                        "rejected": len(executed.header.rejected),
                    }
                },
            )
        for serve in rd.serve:
            # One transfer per peer at a time: an honest peer waits for its answer
            # before it asks again; a flood of requests must not start a read each.
            if serve.peer in self._serving:
                STATE_REQUESTS_DROPPED.inc()
                continue
            if not self._repair.allows(serve.peer):  # before any storage read
                STATE_REQUESTS_DROPPED.inc()
                REPAIR_THROTTLED.labels(self.names[serve.peer]).inc()
                continue
            self._serving.add(serve.peer)
            self._background(self._serve_state(serve))
        for evidence in rd.evidence:
            self._background(self._record_evidence(evidence))
        for fault in rd.faults:
            counter = BYZANTINE if PENALTY[fault.kind] else LATE_MESSAGES
            counter.labels(self.names[fault.peer], fault.kind.value).inc()
            self._log_fault(fault.peer, fault.kind)
        for peer in rd.bans:
            BANS.inc()
            log.warning(
                "banning peer", extra={"fields": {**self._where(), "peer": self.names[peer]}}
            )
            self._background(self._ban(peer))

    def _sign_vouch(self, copies: Sequence[bytes]) -> pbft_pb2.Vouch:
        """This replica's signed claim that ``copies`` are valid."""
        assert self._vouch_signer is not None
        return pbft_pb2.Vouch(
            copies=copies,
            signer=self.replica.id,
            signature=self._vouch_signer(claim_message(copies)),
        )

    def _pre_prepare_vouch(self, envelope: Envelope) -> pbft_pb2.Vouch | None:
        """The primary's claim beside a PRE-PREPARE of at least ``min_copies`` requests:
        every copy of the batch it holds a valid verdict for, signed once per batch (the
        envelopes to different peers carry different bodies, the same claim)."""
        vouches = self._verifier.vouches
        if (
            vouches is None
            or self._vouch_signer is None
            or not isinstance(envelope, SignedEnvelope)
            or not envelope.requests
            or not isinstance(envelope.signed.msg, PrePrepare)
        ):
            return None
        hashes = envelope.signed.msg.request_hashes
        if not vouches.worth_claims(len(hashes)):
            return None
        if self._last_vouch is not None and self._last_vouch[0] == envelope.signed.msg.digest:
            return self._last_vouch[1]
        copies = self._verifier.valid_copies(hashes)
        vouch = self._sign_vouch(copies[:MAX_VOUCHED]) if copies else None
        self._last_vouch = (envelope.signed.msg.digest, vouch)
        return vouch

    def _vouch_to_others(self, vouched: list[bytes], sent_to: int) -> None:
        """Vouch for copies to every replica but ``sent_to``: the entry node for the copies
        it forwarded to the primary (``sent_to``), a co-verifier for the bodies beside the
        PRE-PREPARE of the primary (``sent_to``). With the primary's vouch the backups
        then hold f+1 claims at n = 4."""
        if not vouched or self._verifier.vouches is None or self._vouch_signer is None:
            return
        for start in range(0, len(vouched), MAX_VOUCHED):
            vouch = self._sign_vouch(vouched[start : start + MAX_VOUCHED])
            payload = _encode(RequestsEnvelope(()), vouch)
            for peer, nid in enumerate(self.node_ids):
                if peer not in (self.replica.id, sent_to):
                    self.link.send(payload, to=nid)

    async def _execute(self, committed: Committed) -> Executed:
        """Execute ``committed``; when its batch is traced, in a ``consensus.execute`` span
        that starts when it was committed-local."""
        parent, committed_at = self.traces.execute_parent(committed.seq)
        span = (
            contextlib.nullcontext()
            if parent is None
            else tracer.start_as_current_span(
                "consensus.execute",
                context=parent,
                start_time=self.traces.epoch(committed_at),
                attributes={"pbft.seq": committed.seq},
            )
        )
        with span:
            return await self._executor.execute(committed)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        """Side effects (serving state, recording evidence, bans) never fail silently."""
        self._side_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        FAILURES.labels("side_task").inc()
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _TRANSIENT:
            # a storage or transport restarting (a state transfer served meanwhile is
            # asked for again): not a bug, no traceback
            fields = {"code": exc.code().name, "detail": (exc.details() or "")[:200]}
            log.warning(
                "background task failed: a service is unavailable", extra={"fields": fields}
            )
        else:
            log.error("background task failed", exc_info=exc)

    def _where(self) -> dict[str, int]:
        """The log fields of where the replica is: its view and last executed seq."""
        return {"view": self.replica.view, "seq": self.replica.last_executed}

    def _log_fault(self, peer: int, kind: FaultKind) -> None:
        """A fault charged to ``peer``: logged at its 1st, 2nd, 4th, 8th... occurrence; as a
        warning when it costs reputation, else (a stale or out-of-window message, which
        honest peers send when retransmissions cross) at info."""
        seen = self._faults_seen[peer, kind.value] = self._faults_seen[peer, kind.value] + 1
        if seen & (seen - 1) == 0:
            fields = {**self._where(), "peer": self.names[peer], "kind": kind.value, "count": seen}
            level = logging.WARNING if PENALTY[kind] else logging.INFO
            log.log(level, "fault charged to peer", extra={"fields": fields})

    def _log_state_request(self, peer: int | None, request: StateRequestEnvelope) -> None:
        fields = {
            **self._where(),
            "peer": "*" if peer is None else self.names[peer],
            "from_seq": request.from_seq,
            "to_seq": request.to_seq,
        }
        log.info("state transfer requested", extra={"fields": fields})

    def _publish_gauges(self) -> None:
        status = self.replica.status()
        if status.view != self._last_view or status.active != self._last_active:
            fields = {
                "view": status.view,
                "seq": status.last_executed,
                "primary": self.names[status.primary],
                "stable_seq": status.stable_seq,
            }
            if status.view != self._last_view:
                fields["from_view"] = self._last_view
            msg = "new view active" if status.active else "view change"
            log.info(msg, extra={"fields": fields})
            self._last_active = status.active
        if status.view != self._last_view:
            self.view_changes += 1
            VIEW_CHANGES.inc()
            self._last_view = status.view
        if status.stable_seq != self._last_stable:
            self._last_stable = status.stable_seq
            log.info(
                "stable checkpoint",
                extra={"fields": {"view": status.view, "seq": status.stable_seq}},
            )
        VIEW.set(status.view)
        LAST_EXECUTED.set(status.last_executed)
        STABLE.set(status.stable_seq)
        POOL.set(status.pool_size)
        POOL_BYTES.set(status.pool_bytes)
        HELD_BATCHES.set(status.held_batches)
        floor = self.replica.signing_floor
        SIGNING_FLOOR.set(0 if floor is None else floor.seq)
        refused = self.replica.refused_by_floor
        if refused > self._floor_refusals:
            FLOOR_REFUSALS.inc(refused - self._floor_refusals)
            self._floor_refusals = refused
        dropped = self.replica.peer_requests_dropped
        if dropped > self._peer_requests_dropped:
            PEER_REQUESTS_DROPPED.inc(dropped - self._peer_requests_dropped)
            self._peer_requests_dropped = dropped

    # --- side effects that need not hold up the replica ------------------------------

    async def _serve_state(self, serve: ServeState) -> None:
        """Send finalized batches ``from_seq..to_seq`` (with certificates) to a lagging peer."""
        try:
            await self._read_and_send_state(serve)
        finally:
            self._serving.discard(serve.peer)

    async def _read_and_send_state(self, serve: ServeState) -> None:
        batches = []
        budget = self.replica.config.transfer_max_bytes
        async with contextlib.aclosing(self.feed.read(serve.from_seq, serve.to_seq)) as read:
            async for batch in read:
                requests = tuple(
                    Request(hash=signed_digest(v), body=v.SerializeToString())
                    for v in batch.vertices
                )
                certificate = certificate_from_pb(batch.certificate)
                batches.append(TransferBatch(requests=requests, certificate=certificate))
                budget -= sum(r.size for r in requests)
                if budget <= 0:  # the peer asks again from where this ends
                    break
        if batches:
            fields = {
                **self._where(),
                "peer": self.names[serve.peer],
                "from_seq": serve.from_seq,
                "to_seq": serve.from_seq + len(batches) - 1,
            }
            log.info("state transfer served", extra={"fields": fields})
            payload = encode_envelope(StateResponseEnvelope(tuple(batches)))
            self._repair.charge(serve.peer, len(payload))
            self.link.send(payload, to=self.node_ids[serve.peer])

    async def _record_evidence(self, evidence: EvidenceEnvelope) -> None:
        EVIDENCE.inc()
        signer = evidence.first.signer
        fields = {
            **self._where(),
            "peer": self.names[signer] if 0 <= signer < len(self.names) else signer,
        }
        log.warning("equivocation evidence recorded", extra={"fields": fields})
        pb = pbft_pb2.Evidence(
            first=signed_to_pb(evidence.first), second=signed_to_pb(evidence.second)
        )
        await call_until_done(
            lambda: self._storage.AppendEvidence(
                storage_pb2.AppendEvidenceRequest(evidence=pb, kind="equivocation"), timeout=30
            ),
            what="append evidence",
        )

    async def _ban(self, peer: int) -> None:
        with contextlib.suppress(Exception):
            await self.link.stub.BanPeer(
                transport_pb2.BanPeerRequest(node_id=self.node_ids[peer], reason="reputation"),
                timeout=10,
                metadata=SESSION_METADATA,
            )
