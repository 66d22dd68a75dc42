"""What the gateway does, shared by its REST, WebSocket and gRPC APIs.

A submission is checked in this order, cheapest first: payload size (413),
shape (422; an unsigned vertex is then signed by the gateway's submitter key,
never a validator key, in a thread pool), and only then handed to consensus,
which verifies the client's signature once for the node (422 ``bad_signature``)
and its parents (each finalized or pending at this node, else 422
``unknown_parent``); its refusals are mapped by
:func:`services.gateway.errors.from_backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Coroutine, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc

from cretoai.crypto import SIGNATURE_SIZE, NodeKey
from cretoai.v1 import consensus_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import MAX_PARENTS, make_vertex, shape_error, vertex_hash
from services.consensus.core.quorum import quorum_size
from services.gateway import metrics
from services.gateway.admission import AdmissionWatch, overloaded
from services.gateway.backends import PROBE_TIMEOUT_S, ConsensusClient, StorageClient, probe
from services.gateway.budget import PER_CLIENT_SHARE, ByteBudget, Reservation
from services.gateway.coalesce import MAX_CALL_VERTICES, SLOW_CALL_S, Coalescer, behind
from services.gateway.codec import Draft
from services.gateway.errors import ApiError
from services.gateway.finality import FinalityHub, Outcome
from services.gateway.ratelimit import ClientRateLimit, RateLimited

T = TypeVar("T")

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
PENDING = vertex_pb2.VERTEX_STATUS_PENDING

#: Most finalized batches in one page of ``GET /v1/finalized``.
MAX_PAGE = 100
#: A vertex record beside its payload, at most: creator key, signature, parents, and a
#: certificate of COMMIT signatures (about 20 KB for 4 validators).
RECORD_OVERHEAD_BYTES = 64 * 1024
#: A page stops early once its batches reach this many bytes (at least one batch).
PAGE_BYTES = 4 * 1024 * 1024
#: Batches read from storage per request while filling a page.
READ_CHUNK = 16


#: How long after consensus answered overloaded a slow call means overload too.
IMPATIENT_S = 1.0
#: While consensus says overloaded, whether this node is cut off from a quorum of its
#: peers is checked again at most this often (a consensus status call).
QUORUM_CHECK_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_payload_bytes: int
    wait_timeout_s: float
    #: Submissions prepared at once (shape, node signature); more get 429 overloaded.
    max_in_progress: int = 256
    #: Bytes the submission requests in progress (HTTP bodies, gRPC messages) may hold
    #: at once, from before an HTTP body is read until the answer; more get 429 at once.
    max_request_bytes: int = 64 * 1024 * 1024
    #: Bytes the read answers in progress (a vertex, a page of batches) may hold at once,
    #: from before they are fetched until they are sent; more get 429 at once.
    max_answer_bytes: int = 64 * 1024 * 1024
    #: Vertices one client address may submit per second, and its burst
    #: (services/gateway/ratelimit.py); None: no per-client rate limit.
    client_vertices_per_s: float | None = None
    client_burst_vertices: int = 512
    #: After consensus refused a vertex as overloaded, new submissions are refused
    #: here for this long without any work (no signing, no call to consensus).
    shed_hold_s: float = 0.1
    #: While a call to consensus has waited this long for its answer, new submissions
    #: are refused at once (429 overloaded) instead of queueing behind it.
    slow_call_s: float = SLOW_CALL_S

    @property
    def in_progress_per_client(self) -> int:
        """Submissions one client prepares at once (a request's chunk, too)."""
        return max(1, self.max_in_progress // PER_CLIENT_SHARE)


@dataclass(frozen=True, kw_only=True)
class Submitted:
    hash: bytes
    status: vertex_pb2.VertexStatus
    duplicate: bool
    #: The stored record when the vertex is executed (waited for, or already final).
    record: vertex_pb2.VertexRecord | None = None


Answer = Submitted | ApiError

#: Most vertices in one batch submission (REST ``POST /v1/vertices:batch``, gRPC
#: ``SubmitVertices``); a batch goes to consensus in one call, whose bound this is.
MAX_BATCH_VERTICES = MAX_CALL_VERTICES
#: Refusals of the node rather than of a vertex: a batch whose every vertex got the
#: same one is answered with it as a whole (429 overloaded, 503 ...).
NODE_REFUSALS = frozenset(
    {"overloaded", "consensus_unavailable", "storage_unavailable", "shutting_down", "not_ready"}
)


@dataclass(frozen=True)
class Refused:
    """A vertex of a batch that was refused: why, and its hash when it had one."""

    error: ApiError
    hash: bytes | None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _count(api: str, answer: Answer) -> None:
    if isinstance(answer, ApiError):
        outcome = answer.code
    else:
        outcome = "duplicate" if answer.duplicate else "accepted"
    metrics.SUBMISSIONS.labels(api, outcome).inc()


def _all(answers: list[Answer | None]) -> list[Answer]:
    assert all(answer is not None for answer in answers)
    return cast(list[Answer], answers)


async def _settled(work: Awaitable[T]) -> T | ApiError:
    """``work``'s result, or the ApiError it raised (anything else propagates)."""
    try:
        return await work
    except ApiError as exc:
        return exc.settled()


async def _each(works: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every one of ``works`` at once (a lone one awaited in place: no task for it)."""
    if len(works) == 1:
        return [await works[0]]
    return list(await asyncio.gather(*works))


def _check_distinct(drafts: Sequence[Draft]) -> None:
    """A batch may not hold the same vertex twice: a client-signed one by its hash, a
    node-signed one by its payload and parents (before anything is signed)."""
    seen: dict[object, int] = {}
    for i, draft in enumerate(drafts):
        key: object
        if draft.signed:
            # The fields the vertex hash covers (no hash here: _vertex_of computes it once).
            key = (draft.payload, tuple(draft.parents), draft.creator, draft.timestamp_ms)
        else:
            key = (draft.payload, tuple(draft.parents))
        first = seen.setdefault(key, i)
        if first != i:
            raise ApiError(
                "bad_request",
                f"vertices[{i}] is the same vertex as vertices[{first}]; send each vertex once",
            )


def usable_peers(status: consensus_pb2.NodeStatus) -> int:
    """The peers this node is connected to and has not banned."""
    return sum(1 for p in status.peers if p.connected and not p.banned)


def quorum_state(status: consensus_pb2.NodeStatus) -> str:
    """``connected`` when this node and the peers it is connected to (and has not
    banned) make a quorum of ``status.n`` replicas, else ``cut_off``; ``alone_in_view``
    when connected but waiting for a view its peers are not in."""
    if 1 + usable_peers(status) < quorum_size(max(status.n, 1)):
        return "cut_off"
    return "alone_in_view" if status.alone_in_view else "connected"


class Gateway:
    def __init__(
        self,
        *,
        key: NodeKey | None,
        consensus: ConsensusClient,
        storage: StorageClient,
        hub: FinalityHub,
        pool: Executor,
        limits: Limits,
        probes: dict[str, grpc.aio.Channel],
        coalescer: Coalescer | None = None,
    ) -> None:
        self._key = key
        self._consensus = consensus
        #: Every submission to consensus goes through it (few calls for many vertices).
        self._coalescer = coalescer or Coalescer(consensus, impatient=self._impatient)
        #: Consensus's admission state, followed live (start it with ``admission.start()``).
        self.admission = AdmissionWatch(consensus, on_overloaded=self._consensus_overloaded)
        self._storage = storage
        self._pool = pool
        self._limits = limits
        #: Channels to the node's other services, by name, for health probes.
        self._probes = probes
        self.hub = hub
        self._rate_limit = (
            ClientRateLimit(limits.client_vertices_per_s, limits.client_burst_vertices)
            if limits.client_vertices_per_s is not None
            else None
        )
        self._in_progress = 0
        #: Submission slots held by each client address.
        self._in_progress_by: dict[str, int] = {}
        #: Bytes held by submission requests in progress (:meth:`hold_request_bytes`).
        self._request_bytes = ByteBudget(
            limits.max_request_bytes,
            setting="gateway.max_request_bytes_in_progress",
            what="requests",
            gauge=metrics.REQUEST_BYTES,
        )
        #: Bytes held by read answers in progress (:meth:`hold_answer_bytes`).
        self._answer_bytes = ByteBudget(
            limits.max_answer_bytes,
            setting="gateway.max_answer_bytes_in_progress",
            what="answers",
            gauge=metrics.ANSWER_BYTES,
        )
        #: Monotonic time until which submissions are shed (consensus said overloaded).
        self._shed_until = 0.0
        #: Consensus said overloaded and has not admitted a probe since: after the hold,
        #: one submission at a time goes to consensus (the probe) and the others are
        #: refused at once, not queued behind it.
        self._shedding = False
        self._probing = False
        #: When consensus last answered overloaded (monotonic).
        self._overloaded_at = -math.inf
        #: The refusal to answer while consensus says overloaded because this node is cut
        #: off from a quorum of its peers (None: it is not, or not known), and when that
        #: was last checked (:meth:`_check_quorum`).
        self._cut_off: ApiError | None = None
        self._quorum_checked_at = -math.inf
        self._quorum_check: asyncio.Task[None] | None = None

    def shedding(self) -> ApiError | None:
        """The 429 to answer at once, without any work, while this gateway sheds load (a
        503 when consensus's requests wait because this node is cut off, see
        :meth:`_check_quorum`)."""
        if self.admission.overloaded:
            self._check_quorum_soon()
            fresh = time.monotonic() - self._quorum_checked_at <= 2 * QUORUM_CHECK_S
            return self._cut_off if self._cut_off is not None and fresh else overloaded()
        if self._probing or time.monotonic() < self._shed_until:
            return behind()
        waited = self._coalescer.oldest_call_age()
        if waited > self._limits.slow_call_s and self._impatient():
            return ApiError(
                "overloaded",
                f"consensus at this node has not answered a submission for {waited * 1000:.0f} "
                "ms; retry with backoff",
            )
        return None

    def _consensus_overloaded(self) -> None:
        """Consensus turned overloaded (its admission stream): what is queued for it and
        was not admitted as it arrived (the stream was down then) would only be refused
        there, after the calls ahead of it."""
        self._overloaded_at = time.monotonic()
        self._coalescer.refuse_queued()
        self._check_quorum_soon()

    async def close(self) -> None:
        """Cancel a quorum check still running (the service stops)."""
        if self._quorum_check is not None:
            self._quorum_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._quorum_check

    def _check_quorum_soon(self) -> None:
        if self._quorum_check is not None and not self._quorum_check.done():
            return
        if time.monotonic() - self._quorum_checked_at < QUORUM_CHECK_S:
            return
        self._quorum_checked_at = time.monotonic()
        self._quorum_check = asyncio.get_running_loop().create_task(self._check_quorum())

    async def _check_quorum(self) -> None:
        """Whether this node is connected to enough peers to make a quorum with them, as
        ``/readyz`` judges it. A node cut off (or refused by its peers) said "429
        overloaded, retry with backoff" to every client, since its requests wait; a
        client should go to another node instead (an audit, 2026-12-04)."""
        try:
            status = await self._consensus.status(timeout=PROBE_TIMEOUT_S)
        except ApiError:
            return
        finally:
            self._quorum_checked_at = time.monotonic()
        state = quorum_state(status)
        if state == "connected":
            self._cut_off = None
            return
        if state == "alone_in_view":
            self._cut_off = ApiError(
                "not_ready",
                f"this node waits for view {status.view}, which its peers have not "
                "entered: it orders nothing until they do; submit through another node",
            )
            return
        refusing = sum(1 for p in status.peers if p.refuses_this_node)
        why = f" ({refusing} of them ban this node)" if refusing else ""
        self._cut_off = ApiError(
            "not_ready",
            "this node is cut off from the cluster: it is connected to "
            f"{usable_peers(status)} of its {max(status.n - 1, 0)} peers{why}, and a quorum "
            f"needs {quorum_size(max(status.n, 1)) - 1}; submit through another node",
        )

    def _impatient(self) -> bool:
        """Whether consensus answered overloaded within the last IMPATIENT_S: a slow
        call, or a long wait for one, then means the same; at other times it is a load
        spike, and refusing would only cost throughput."""
        return time.monotonic() - self._overloaded_at < IMPATIENT_S

    @contextlib.contextmanager
    def hold_request_bytes(
        self, size: int, *, api: str, client: str | None = None
    ) -> Iterator[Reservation]:
        """Count ``size`` bytes of a submission request against
        ``gateway.max_request_bytes_in_progress`` until the block ends: 429 overloaded at
        once when that would exceed it (one request alone always fits). Bounds what many
        slow or large uploads, or many waiting ones, make the gateway hold. The
        reservation grows with :meth:`grow_request_bytes` (a body as it arrives)."""
        budget = self._request_bytes
        try:
            budget.take(size, alone=budget.held == 0, client=client)
        except ApiError:
            metrics.SUBMISSIONS.labels(api, "overloaded").inc()
            raise
        reservation = Reservation(budget, size, client)
        try:
            yield reservation
        finally:
            budget.release(reservation.size, client=client)

    def grow_request_bytes(self, reservation: Reservation, size: int, *, api: str) -> None:
        """Hold ``size`` bytes in all for a request (429 overloaded when they do not fit)."""
        try:
            reservation.resize(size)
        except ApiError:
            metrics.SUBMISSIONS.labels(api, "overloaded").inc()
            raise

    @property
    def vertex_answer_bytes(self) -> int:
        """What answering one vertex may hold at its peak, reserved before it is read:
        the record (a payload up to ``gateway.max_payload_bytes``, its keys, signature
        and certificate), its JSON objects and its encoding."""
        return 4 * (self._limits.max_payload_bytes + RECORD_OVERHEAD_BYTES)

    def hold_answer_bytes(
        self, size: int, *, client: str | None = None
    ) -> contextlib.AbstractContextManager[Reservation]:
        """Reserve ``size`` bytes for a read's answer, from before it is fetched until it
        is sent, against ``gateway.max_answer_bytes_in_progress``: 429 overloaded at once
        beyond (one alone always fits). :meth:`Reservation.resize` to the answer's size
        once it is known. Bounds what many concurrent (or slowly read) reads hold."""
        return self._answer_bytes.hold(size, client=client)

    def refuse_if_shedding(self, api: str) -> None:
        """Raise (and count) the 429 of :meth:`shedding` for one submission, if any: the
        REST handler asks before it reads the body."""
        refusal = self.shedding()
        if refusal is not None:
            _count(api, refusal)
            raise refusal

    # ------------------------------------------------------------------ submit

    async def submit(
        self, draft: Draft, *, wait: bool, api: str, client: str | None = None
    ) -> Submitted:
        """Validate, sign or verify, and hand a vertex to consensus (counted by outcome);
        ``client``: the caller's address (its share of the submission slots)."""
        try:
            [answer], _ = await self._submit_all([draft], wait=wait, client=client)
        except ApiError as exc:
            answer = exc.settled()
        _count(api, answer)
        if isinstance(answer, ApiError):
            raise answer
        return answer

    async def submit_batch(
        self, drafts: Sequence[Draft], *, wait: bool, api: str, client: str | None = None
    ) -> list[Submitted | Refused]:
        """Each draft as :meth:`submit` would take it, in order: its answer, or why it was
        refused. A draft may name an earlier one of the batch as a parent.

        Raises ApiError for the batch as a whole when it is malformed (``bad_request``:
        empty, more than MAX_BATCH_VERTICES, the same vertex twice), refused before any
        work (``overloaded``, ``shutting_down``), or when every vertex was refused alike
        for a reason of the node's (:data:`NODE_REFUSALS`).
        """
        if not drafts:
            raise ApiError(
                "bad_request", f"vertices: empty; send 1 to {MAX_BATCH_VERTICES} per batch"
            )
        if len(drafts) > MAX_BATCH_VERTICES:
            raise ApiError(
                "bad_request",
                f"vertices: {len(drafts)} of them; at most {MAX_BATCH_VERTICES} per batch",
            )
        _check_distinct(drafts)
        try:
            answers, hashes = await self._submit_all(drafts, wait=wait, client=client)
        except ApiError as exc:
            for _ in drafts:
                _count(api, exc)
            raise
        for answer in answers:
            _count(api, answer)
        first = answers[0]
        if (
            isinstance(first, ApiError)
            and first.code in NODE_REFUSALS
            and all(isinstance(a, ApiError) and a.code == first.code for a in answers)
        ):
            raise first
        return [
            Refused(error=answer, hash=h) if isinstance(answer, ApiError) else answer
            for answer, h in zip(answers, hashes, strict=True)
        ]

    def _take_tokens(self, count: int, client: str | None) -> None:
        """Charge ``count`` vertices to ``client``'s rate (gateway.client_vertices_per_s),
        or raise 429 ``rate_limited`` before any work is done for them."""
        if self._rate_limit is None or client is None:
            return
        try:
            self._rate_limit.take(client, count)
        except RateLimited as exc:
            limit = self._rate_limit
            raise ApiError(
                "rate_limited",
                f"this client address may submit {limit.rate:g} vertices a second, "
                f"{limit.burst} at once (gateway.client_vertices_per_s, "
                f"gateway.client_burst_vertices); {count} would pass in "
                f"{exc.retry_after_s:.2f} s",
                retry_after_s=exc.retry_after_s,
            ) from None

    def _slots_refusal(self, count: int, client: str | None) -> ApiError | None:
        """Why ``count`` more submissions of ``client`` may not be validated now, if so:
        the node's slots (``gateway.max_submissions_in_progress``; a lone request always
        fits an empty node) or the client's share of them (a quarter; its first always
        fits)."""
        most = self._limits.max_in_progress
        if self._in_progress >= most or (self._in_progress and self._in_progress + count > most):
            return ApiError(
                "overloaded",
                f"{self._in_progress} submissions are being validated here "
                "(gateway.max_submissions_in_progress); retry with backoff",
            )
        mine = self._in_progress_by.get(client, 0) if client is not None else 0
        if mine and mine + count > self._limits.in_progress_per_client:
            return ApiError(
                "overloaded",
                f"this client has {mine} submissions being validated here (a quarter of "
                "gateway.max_submissions_in_progress); retry with backoff",
            )
        return None

    def _hold_slots(self, count: int, client: str | None) -> None:
        """Take ``count`` submission slots for ``client`` (give them back: negative)."""
        self._in_progress += count
        if client is not None:
            held = self._in_progress_by.get(client, 0) + count
            if held:
                self._in_progress_by[client] = held
            else:
                self._in_progress_by.pop(client, None)

    async def _submit_all(
        self, drafts: Sequence[Draft], *, wait: bool, client: str | None = None
    ) -> tuple[list[Answer], list[bytes | None]]:
        """The checks of docs/gateway.md, cheapest first; then one submission to consensus
        for every vertex that passed them, waiting for finality when asked. Returns each
        draft's answer and its vertex's hash (None when it was refused before it had one)."""
        answers: list[Answer | None] = [None] * len(drafts)
        hashes: list[bytes | None] = [None] * len(drafts)
        limit = self._limits.max_payload_bytes
        for i, draft in enumerate(drafts):
            if len(draft.payload) > limit:
                answers[i] = ApiError(
                    "payload_too_large",
                    f"payload is {len(draft.payload)} bytes; the limit is {limit}",
                )
        live = [i for i, answer in enumerate(answers) if answer is None]
        if not live:
            return _all(answers), hashes
        self._take_tokens(len(live), client)
        refusal = self.shedding()
        if refusal is not None:
            raise refusal
        # Admitted now, following consensus's own state: not refused for overload later
        # (services/gateway/coalesce.py). Without the stream, consensus decides.
        admitted = self.admission.live
        # A request validates its vertices a share of the slots at a time: one batch of
        # 256 node-signed vertices (whose parents consensus then refused) held every slot
        # for a second, back to back, and other clients got 429 (audit, 2026-12-04).
        share = self._limits.in_progress_per_client
        built: list[tuple[vertex_pb2.Vertex, bytes] | ApiError] = []
        for start in range(0, len(live), share):
            chunk = live[start : start + share]
            refusal = self._slots_refusal(len(chunk), client)
            if refusal is not None:
                if start == 0:
                    raise refusal
                built += [refusal] * (len(live) - start)
                break
            self._hold_slots(len(chunk), client)
            try:
                built += await _each([_settled(self._vertex_of(drafts[i])) for i in chunk])
            finally:
                self._hold_slots(-len(chunk), client)
        vertices: dict[int, tuple[vertex_pb2.Vertex, bytes]] = {}
        for i, made in zip(live, built, strict=True):
            if isinstance(made, ApiError):
                answers[i] = made
            else:
                vertices[i] = made
                hashes[i] = made[1]
        if not vertices:
            return _all(answers), hashes
        started = time.perf_counter()
        with contextlib.ExitStack() as waiting:
            finals = {
                i: waiting.enter_context(self.hub.waiter(h, vertex))
                for i, (vertex, h) in vertices.items()
                if wait
            }
            replies = await self._submit_to_consensus(
                [vertex for vertex, _ in vertices.values()], admitted=admitted
            )
            settled = await _each(
                [
                    _settled(self._settle(h, vertex, reply, finals.get(i), started))
                    for (i, (vertex, h)), reply in zip(vertices.items(), replies, strict=True)
                ]
            )
        for i, answer in zip(vertices, settled, strict=True):
            answers[i] = answer
        return _all(answers), hashes

    async def _settle(
        self,
        h: bytes,
        vertex: vertex_pb2.Vertex,
        reply: consensus_pb2.SubmitVertexResponse | ApiError,
        final: asyncio.Future[Outcome] | None,
        started: float,
    ) -> Submitted:
        """One vertex once consensus answered: its refusal raised, else what the caller
        learns (``final`` is its waiter when it waits for finality)."""
        if isinstance(reply, ApiError):
            raise reply
        executed = reply.status in (FINALIZED, REJECTED)
        if final is None:
            record = await self._stored(h) if executed else None
            return Submitted(hash=h, status=reply.status, duplicate=reply.duplicate, record=record)
        if executed:
            record = await self._stored(h)
        else:
            record = await self._await_final(h, vertex, reply.copy, final, started)
        return Submitted(hash=h, status=record.status, duplicate=reply.duplicate, record=record)

    async def _submit_to_consensus(
        self, vertices: list[vertex_pb2.Vertex], *, admitted: bool
    ) -> list[consensus_pb2.SubmitVertexResponse | ApiError]:
        """Consensus's answer for each vertex. ``admitted``: admitted as they arrived,
        following consensus's admission stream (else consensus decides)."""
        if not admitted:
            refusal = self.shedding()  # again: a probe may have started meanwhile
            if refusal is not None:
                raise refusal
        probe = self._shedding
        if probe:
            self._probing = True
        try:
            replies = await self._coalescer.submit(vertices, admitted=admitted)
        except ApiError as exc:
            if exc.code == "overloaded" and not self.admission.live:
                self._shed()
            raise
        finally:
            if probe:
                self._probing = False
        if any(isinstance(r, ApiError) and r.code == "overloaded" for r in replies):
            self._overloaded_at = time.monotonic()
            if not self.admission.live:  # else the stream says when consensus admits again
                self._shed()
        elif probe:
            self._shedding = False
        return replies

    def _shed(self) -> None:
        self._shedding = True
        self._shed_until = time.monotonic() + self._limits.shed_hold_s

    async def _vertex_of(self, draft: Draft) -> tuple[vertex_pb2.Vertex, bytes]:
        loop = asyncio.get_running_loop()
        if draft.excess_parents:
            count = len(draft.parents) + draft.excess_parents
            raise ApiError("invalid_vertex", f"{count} parents; the limit is {MAX_PARENTS}")
        if draft.signed:
            vertex = vertex_pb2.Vertex(
                payload=draft.payload,
                parents=draft.parents,
                creator=draft.creator,
                timestamp_ms=draft.timestamp_ms,
                signature=draft.signature,
            )
            self._check_shape(vertex)
            # Consensus verifies the signature (once per node, with its cache).
            return vertex, vertex_hash(vertex)
        if self._key is None:
            raise ApiError(
                "signature_required",
                "this gateway does not sign submissions (gateway.submitter_key is unset): "
                "sign the vertex yourself and send public_key, signature and timestamp_ms",
            )
        # Check the shape before spending a signature on it.
        self._check_shape(
            vertex_pb2.Vertex(
                payload=draft.payload,
                parents=draft.parents,
                creator=self._key.public_key,
                signature=bytes(SIGNATURE_SIZE),
            )
        )
        return await loop.run_in_executor(self._pool, self._sign, draft, now_ms())

    def _check_shape(self, vertex: vertex_pb2.Vertex) -> None:
        problem = shape_error(vertex, max_payload_bytes=self._limits.max_payload_bytes)
        if problem is not None:
            raise ApiError("invalid_vertex", problem)

    def _sign(self, draft: Draft, timestamp_ms: int) -> tuple[vertex_pb2.Vertex, bytes]:
        assert self._key is not None
        vertex = make_vertex(self._key, draft.payload, draft.parents, timestamp_ms)
        return vertex, vertex_hash(vertex)

    async def _stored(self, h: bytes) -> vertex_pb2.VertexRecord:
        record = await self._storage.vertex(h)
        if record is None:
            raise ApiError(
                "storage_unavailable", f"vertex {h.hex()} is executed but not readable yet"
            )
        return record

    async def _await_final(
        self,
        h: bytes,
        vertex: vertex_pb2.Vertex,
        copy: bytes,
        final: asyncio.Future[Outcome],
        started: float,
    ) -> vertex_pb2.VertexRecord:
        """``h``'s record once final: built from the caller's own copy (``vertex``, whose
        signed digest consensus answered as ``copy``) when the batch finalized that very
        copy, else read from storage."""
        timeout = self._limits.wait_timeout_s
        try:
            outcome = await asyncio.wait_for(final, timeout)
        except TimeoutError:
            # A batch executed while the gateway re-subscribed is in storage all the same.
            record = await self._storage.vertex(h)
            if record is None:
                metrics.FINALITY_WAIT.labels("timeout").observe(time.perf_counter() - started)
                raise ApiError(
                    "wait_timeout",
                    f"vertex {h.hex()} was accepted and is pending, not final after "
                    f"{timeout:g}s; poll GET /v1/vertices/{h.hex()}",
                ) from None
        else:
            # A rejected copy says nothing of the content: another copy may be (or have
            # been) finalized, and the stored record tells. A finalized one is the batch's.
            record = (
                None
                if outcome.rejected or outcome.notice is None
                else outcome.notice.record(h, vertex, copy)
            )
            if record is None:
                record = await self._stored(h)
                if not outcome.rejected and (
                    record.status != FINALIZED or outcome.seq != record.seq
                ):
                    raise ApiError(
                        "backend_error",
                        f"vertex {h.hex()}: finalized at seq {outcome.seq}, stored at {record.seq}",
                    )
        label = "rejected" if record.status == REJECTED else "finalized"
        metrics.FINALITY_WAIT.labels(label).observe(time.perf_counter() - started)
        return record

    # ------------------------------------------------------------------ reads

    async def vertex(self, h: bytes) -> vertex_pb2.VertexRecord:
        """A finalized, rejected or pending vertex; ApiError ``not_found`` otherwise."""
        record = await self._storage.vertex(h)
        if record is not None:
            return record
        pending = await self._consensus.pending(h)
        if pending is not None:
            return vertex_pb2.VertexRecord(hash=h, vertex=pending, status=PENDING)
        record = await self._storage.vertex(h)  # executed between the two reads?
        if record is not None:
            return record
        raise ApiError("not_found", f"vertex {h.hex()} is not known to this node")

    async def finalized(self, from_seq: int, limit: int) -> list[storage_pb2.FinalizedEntry]:
        """Up to ``limit`` finalized batches from ``from_seq``, at most about PAGE_BYTES."""
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError("bad_request", f"limit: expected 1 to {MAX_PAGE}, got {limit}")
        entries: list[storage_pb2.FinalizedEntry] = []
        size = 0
        seq = max(from_seq, 1)
        while len(entries) < limit:
            want = min(READ_CHUNK, limit - len(entries))
            chunk = await self._storage.finalized(seq, limit=want)
            for entry in chunk:
                entry_size = entry.ByteSize()
                if entries and size + entry_size > PAGE_BYTES:
                    return entries
                entries.append(entry)
                size += entry_size
            if len(chunk) < want:
                break
            seq = chunk[-1].batch.seq + 1
        return entries

    async def status(self) -> consensus_pb2.NodeStatus:
        return await self._consensus.status()

    async def services(self) -> dict[str, str]:
        """The gRPC health of each service of this node (this one answers, so it serves)."""
        names = list(self._probes)
        states = await asyncio.gather(*(probe(self._probes[name]) for name in names))
        return {"gateway": "serving", **dict(zip(names, states, strict=True))}

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when consensus reports ready, storage serves, and this node is connected
        to enough peers to make a quorum with them (else nothing it is given can be
        finalized until it reconnects: a load balancer should send clients elsewhere)."""

        async def consensus_state() -> tuple[str, str]:
            try:
                status = await self._consensus.status(timeout=PROBE_TIMEOUT_S)
            except ApiError:
                return "unreachable", "unknown"
            return ("ready" if status.ready else "not_ready"), quorum_state(status)

        (consensus, quorum), storage = await asyncio.gather(
            consensus_state(), probe(self._probes["storage"])
        )
        checks = {"consensus": consensus, "storage": storage, "quorum": quorum}
        return consensus == "ready" and storage == "serving" and quorum == "connected", checks
