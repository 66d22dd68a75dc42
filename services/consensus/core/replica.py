"""The PBFT replica: a pure state machine (Castro & Liskov, OSDI '99 / TOCS '02).

Inputs go in through a few verbs — :meth:`Replica.step` (a message whose outer
signature the driver verified), :meth:`Replica.propose` (a client request),
:meth:`Replica.tick` (logical time) and :meth:`Replica.report_fault` (a fault
the driver saw, e.g. a bad signature). Output accumulates and is drained with
:meth:`Replica.ready`: persist, then send, then execute. Nothing here does I/O,
reads a clock or draws random numbers.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

from services.consensus.core import durable, quorum
from services.consensus.core.codec import encode_body
from services.consensus.core.config import Config
from services.consensus.core.crypto import (
    NULL_DIGEST,
    Signer,
    Verifier,
    batch_digest,
)
from services.consensus.core.durable import (
    CorruptState,
    ExecutedState,
    SigningMark,
    parse_records,
)
from services.consensus.core.messages import (
    BatchEnvelope,
    Certificate,
    Checkpoint,
    CheckpointProofEnvelope,
    Commit,
    Envelope,
    EvidenceEnvelope,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
    StateRequestEnvelope,
    StateResponseEnvelope,
    StatusEnvelope,
    TransferBatch,
    ViewChange,
)
from services.consensus.core.pool import Pool
from services.consensus.core.proofs import NewViewPlan, ProofError, Proofs
from services.consensus.core.ready import Committed, Outbound, Ready, Record, ServeState
from services.consensus.core.reputation import Fault, FaultKind, Reputation

M = TypeVar("M", PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)


class ConsensusHalted(Exception):
    """The replica's state contradicts a quorum-certified fact.

    Only possible with more than f faulty replicas or lost storage: the driver
    must stop rather than risk signing anything wrong.
    """


class ProposeResult(enum.Enum):
    ACCEPTED = "accepted"
    #: Already in the pool, or executed recently.
    DUPLICATE = "duplicate"
    POOL_FULL = "pool_full"
    #: Refused to shed load: the oldest pending request waited longer than
    #: ``admission_max_wait`` (the replica is behind its offered load).
    OVERLOADED = "overloaded"
    #: Larger than a whole batch may be.
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica: int
    view: int
    active: bool
    primary: int
    last_executed: int
    stable_seq: int
    pool_size: int
    #: Bytes of the requests in the pool (bounded by ``Config.pool_max_bytes``).
    pool_bytes: int
    banned: frozenset[int]
    #: Waiting for a NEW-VIEW the peers are not waiting for (:meth:`Replica.alone_in_view`).
    alone_in_view: bool = False
    #: Batches whose bodies the log holds in memory (proposed or voted, not yet applied).
    held_batches: int = 0


@dataclass(slots=True)
class _Slot:
    """The log entry of one sequence number."""

    created: int
    #: The accepted PRE-PREPARE of the current view.
    pre_prepare: Signed[PrePrepare] | None = None
    #: PREPAREs of the current view, by signer.
    prepares: dict[int, Signed[Prepare]] = field(default_factory=dict)
    #: COMMITs by view, then by signer (a quorum in any one view commits).
    commits: dict[int, dict[int, Signed[Commit]]] = field(default_factory=dict)
    #: The certificate of the highest view in which this replica prepared.
    prepared: PreparedCert | None = None
    committed: Certificate | None = None
    executed_at: int | None = None


@dataclass(slots=True)
class _Transfer:
    """State transfer towards a stable checkpoint that others proved."""

    seq: int
    digest: bytes
    proof: tuple[Signed[Checkpoint], ...]
    candidates: tuple[int, ...]
    attempt: int = 0
    next_at: int = 0
    #: The peer whose answer the transfer waits for (charged a miss when the retry fires).
    asked: int | None = None


@dataclass(slots=True)
class _Resend:
    """Resends to one peer stuck at its last STATUS: allowed again at ``next_at``."""

    next_at: int
    backoff: int


#: Views in which one signer's COMMITs for one seq are kept (its highest).
COMMIT_VIEWS_PER_SIGNER = 4

#: A fresh replica that heard q-1 peers waits this many status intervals more for the
#: others' STATUS before it learns its view floor (:meth:`Replica._learn_view_floor`).
VIEW_FLOOR_GRACE_INTERVALS = 2
#: Resends to a peer stuck at one place back off up to this many status intervals.
RESEND_MAX_BACKOFF = 8
#: At most this many unexecuted slots are resent to a stalled peer at once (it
#: needs them in order; the next ones follow once it moves).
RESEND_MAX_SLOTS = 16

_NOTHING = Ready()


def _body_bytes(env: SignedEnvelope) -> int:
    return sum(r.size for r in env.requests)


def _typed(signed: Signed[Message], kind: type[M]) -> Signed[M]:
    """``signed`` as a signed ``kind`` (checked)."""
    if not isinstance(signed.msg, kind):
        raise TypeError(f"expected a signed {kind.__name__}, got {type(signed.msg).__name__}")
    return cast(Signed[M], signed)


def _own_key(msg: Message) -> tuple[str, int, int]:
    kind = durable.message_kind(msg)
    if isinstance(msg, Checkpoint):
        return kind, 0, msg.seq
    if isinstance(msg, ViewChange):
        return kind, msg.new_view, 0
    if isinstance(msg, NewView):
        return kind, msg.view, 0
    return kind, msg.view, msg.seq


class Replica:
    """One PBFT replica.

    ``records`` and ``executed`` restore a replica after a restart: the
    records it persisted (every ``Ready.persist`` applied in order) and what
    the application executed (the last ``Committed.seq`` and ``state_digest``).

    ``signing_mark`` is the driver's copy of the highest view and seq this replica
    ever signed, kept outside storage (every ``Ready.signed_mark``). When it is
    above what the records hold, the records were rolled back (an old backup, a
    reset database) and may miss messages already sent: the mark becomes a floor,
    and the replica never signs a message that could conflict with one below it
    (see :meth:`_forbidden`); it rejoins by state transfer.
    """

    def __init__(
        self,
        config: Config,
        *,
        signer: Signer,
        verifier: Verifier,
        records: Mapping[str, bytes] | None = None,
        executed: ExecutedState | None = None,
        signing_mark: SigningMark | None = None,
    ) -> None:
        self.config = config
        self.id = config.replica_id
        self._n = config.n
        self._q = config.q
        self._k = config.checkpoint_interval
        self._window = config.watermark_window
        self._signer = signer
        self._proofs = Proofs(
            n=config.n,
            q=self._q,
            verifier=verifier,
            checkpoint_interval=config.checkpoint_interval,
            window=config.watermark_window,
        )
        self._rep = Reputation(
            n=config.n,
            threshold=config.reputation_threshold,
            flood_allowance=64 + 4 * config.watermark_window,
        )
        self._pool = Pool(
            capacity=config.pool_max,
            per_peer=max(1, config.pool_max // config.n),
            capacity_bytes=config.pool_max_bytes,
            per_peer_bytes=config.pool_per_peer_bytes,
        )
        self._now = 0
        self._view = 0
        self._active = True
        #: The last view in which this replica executed a batch ordered in that view;
        #: the NEW-VIEW wait doubles with every view since (exponential backoff).
        self._progress_view = 0
        #: The tick this replica last executed a batch, and the tick its current view
        #: became active: the progress timer runs from the later of them and the
        #: oldest waiting request's arrival (see :meth:`_check_progress`).
        self._executed_at = 0
        self._view_since = 0
        #: The tick this backup last voted for a new PRE-PREPARE of its view's primary:
        #: a primary that keeps ordering is alive even while its rounds are slower than
        #: the timeout (overload), so this restarts the progress timer too.
        self._ordered_at = 0
        #: The tick the progress timer last expired without a suspicion (restarted).
        self._progress_restarted = 0
        #: The start of the stall whose oldest requests were already relayed.
        self._stall_relayed: int | None = None
        self._nv_deadline: int | None = None
        self._new_view_msg: Signed[NewView] | None = None
        #: VIEW-CHANGEs by new view, then signer (a few views per signer at most).
        self._vcs: dict[int, dict[int, Signed[ViewChange]]] = {}
        #: The last view this replica was active in.
        self._active_view = 0
        self._slots: dict[int, _Slot] = {}
        self._checkpoints: dict[int, dict[int, Signed[Checkpoint]]] = {}
        self._low = 0
        self._stable_proof: tuple[Signed[Checkpoint], ...] = ()
        self._next_seq = 1
        #: The bodies of the batches in the log, by digest, until their seq is applied
        #: (then storage holds them finalized: see _release_bodies).
        self._batches: dict[bytes, tuple[Request, ...]] = {NULL_DIGEST: ()}
        #: Digests of the batches whose bodies are in the durable records.
        self._stored: set[bytes] = set()
        self._recent: dict[bytes, int] = {}
        self._recent_order: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self._own: dict[tuple[str, int, int], Signed[Message]] = {}
        self._evidence: dict[int, EvidenceEnvelope] = {}
        self._future: dict[int, deque[SignedEnvelope]] = {}
        #: What was last sent to each peer in answer to its STATUS (a checkpoint proof,
        #: our NEW-VIEW, the VIEW-CHANGEs we hold), for which checkpoint or view, and when
        #: (_answer_due).
        self._answered: dict[tuple[str, int], tuple[int, int]] = {}
        #: Request-body bytes of each sender's deferred messages (bounded: _defer).
        self._future_bytes: dict[int, int] = {}
        self._transfer: _Transfer | None = None
        #: Per peer: STATE-REQUESTs in a row it let time out. A transfer asks the peers
        #: with the fewest first, so one that never serves state is asked once, not at
        #: every new checkpoint (an audit, 2026-12-04: a silent replica of the lowest id,
        #: asked first each time, kept a lagging replica from catching up while
        #: checkpoints came faster than the retry).
        self._state_misses: dict[int, int] = {}
        #: Each peer's last STATUS (to resend only to peers that stopped progressing),
        #: and the tick it came.
        self._peer_status: dict[int, StatusEnvelope] = {}
        self._peer_status_at: dict[int, int] = {}
        #: Backoff of resends to each peer stuck at its last STATUS (reset when it moves).
        self._resend: dict[int, _Resend] = {}
        #: The last STATUS this replica sent, and the tick it went (quiet heartbeats).
        self._status_sent: StatusEnvelope | None = None
        self._status_sent_at = 0
        executed = executed or ExecutedState()
        #: The last seq handed to the application (``Committed``) and the last it applied.
        self._last_exec = executed.seq
        self._applied = executed.seq
        self._state_digest = executed.state_digest
        # Output of the current Ready.
        self._persist: list[Record] = []
        self._send: list[Outbound] = []
        self._execute_out: list[Committed] = []
        self._serve: list[ServeState] = []
        self._evidence_out: list[EvidenceEnvelope] = []
        self._faults: list[Fault] = []
        self._bans: list[int] = []
        self._forward: list[Request] = []
        #: The highest view and seq signed (persisted), and whether the driver's copy lags.
        self._mark = SigningMark()
        self._mark_out = False
        #: Never sign at or below this (set when the records turned out rolled back).
        self._floor: SigningMark | None = None
        #: Messages not signed because of the floor (for status and tests).
        self.refused_by_floor = 0
        #: Requests forwarded or relayed by peers and dropped: the pool, or that peer's
        #: share of it, was full (a peer that keeps hitting it is flooding).
        self.peer_requests_dropped = 0
        #: Started with no records and no signing mark: its key may have signed anything
        #: before (a data directory wiped or replaced, a second process of this node on
        #: an empty one), or nothing (a new cluster); nothing here tells which. Such a
        #: replica leads only views whose NEW-VIEW it signs itself (:meth:`_may_lead`),
        #: and, once q-1 peers told it their view (:meth:`_learn_view_floor`), signs no
        #: VIEW-CHANGE or NEW-VIEW at or below the view f+1 of them are active in.
        self._fresh = (
            not records and signing_mark is None and self._n > 1 and config.fresh_start_asks_peers
        )
        self._view_floor_pending = self._fresh
        #: The tick q-1 peers' STATUS had come by while the floor was pending: the rest
        #: are awaited until VIEW_FLOOR_GRACE_INTERVALS status intervals after it.
        self._view_floor_quorum_at: int | None = None
        #: The tick this replica last left a view (started a view change).
        self._left_view_at = 0
        #: The views whose NEW-VIEW this process signed.
        self._led_here: set[int] = set()
        state = parse_records(records) if records else durable.DurableState()
        self._init_mark(state, signing_mark)
        if self._fresh:
            # kept until the floor is learned: a restart before that is still fresh
            self._persist.append(Record(durable.VIEW_FLOOR_PENDING_KEY, b"\x01"))
        elif state.view_floor_pending and config.fresh_start_asks_peers:
            self._fresh = self._view_floor_pending = True
        if records:
            self._restore(state)
            self._leave_a_recovered_view()

    # --- public surface ---------------------------------------------------------------

    @property
    def view(self) -> int:
        return self._view

    @property
    def active(self) -> bool:
        """False while waiting for the NEW-VIEW of :attr:`view`."""
        return self._active

    @property
    def primary(self) -> int:
        return self.config.primary(self._view)

    @property
    def now(self) -> int:
        """Logical time: the ticks seen so far."""
        return self._now

    def oldest_pending_since(self) -> int | None:
        """The tick at which the oldest request in the pool arrived (None when empty)."""
        return self._pool.oldest_waiting_since()

    @property
    def last_executed(self) -> int:
        return self._last_exec

    @property
    def stable_seq(self) -> int:
        return self._low

    @property
    def signing_floor(self) -> SigningMark | None:
        """The floor below which nothing is signed (a rollback was detected), or None."""
        return self._floor

    @property
    def signed_mark(self) -> SigningMark:
        return self._mark

    @property
    def banned(self) -> frozenset[int]:
        return frozenset(self._rep.banned)

    def fault_counts(self) -> dict[tuple[int, FaultKind], int]:
        """How many faults of each kind were charged to each peer."""
        return dict(self._rep.counts)

    def reputation(self, peer: int) -> int:
        return self._rep.scores[peer]

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            replica=self.id,
            view=self._view,
            active=self._active,
            primary=self.primary,
            last_executed=self._last_exec,
            stable_seq=self._low,
            pool_size=len(self._pool),
            pool_bytes=self._pool.total_bytes,
            banned=self.banned,
            alone_in_view=self.alone_in_view(),
            held_batches=len(self._batches) - (NULL_DIGEST in self._batches),
        )

    def propose(self, request: Request, *, admitted: bool = False) -> ProposeResult:
        """A client request submitted to this replica.

        ``admitted``: the caller already decided admission control (:meth:`overloaded`,
        or its own measure of it) when the request arrived; the pool's bound still holds.
        """
        if request.size > self.config.batch_max_bytes:
            return ProposeResult.TOO_LARGE
        if request.hash in self._pool or request.hash in self._recent:
            return ProposeResult.DUPLICATE
        if self._pool.full_for(None, request.size):
            return ProposeResult.POOL_FULL
        if not admitted and self.overloaded():
            return ProposeResult.OVERLOADED
        self._pool.add(request, now=self._now, origin=None, relayed=False)
        if self._active:
            if self.primary == self.id:
                self._maybe_propose()
            else:
                self._forward.append(request)
        return ProposeResult.ACCEPTED

    def overloaded(self) -> bool:
        """Whether a pending request has waited longer than ``admission_max_wait``.

        Admission control: shedding new local requests while the replica is this far
        behind keeps the wait of those it took under the request timeout. Without it,
        an offered load above capacity makes every request time out, be relayed to
        every replica (multiplying the traffic) and end in view changes: throughput
        collapses instead of staying at capacity.
        """
        limit = self.config.admission_max_wait
        oldest = self.oldest_pending_since()
        return limit is not None and oldest is not None and self._now - oldest > limit

    def tick(self) -> None:
        """One unit of logical time."""
        self._now += 1
        now = self._now
        if now % self.config.status_interval == 0:
            self._status_tick()
        if self._view_floor_pending and self._view_floor_quorum_at is not None:
            self._learn_view_floor()  # the grace for the last peers' STATUS may be over
        if not self._active and self._nv_deadline is not None and now >= self._nv_deadline:
            self._start_view_change(self._view + 1)
        if self._transfer is None:
            if len(self._pool):
                self._check_progress()
                self._check_request_timers()
            if self._pool.pending_count:
                self._maybe_propose()
        if self._transfer is not None and now >= self._transfer.next_at:
            missed = self._transfer.asked
            if missed is not None and self._last_exec < self._transfer.seq:
                self._state_misses[missed] = self._state_misses.get(missed, 0) + 1
            self._request_state(None)
        self._skip_banned_primary()

    def quiet_ticks(self) -> int:
        """How many of the next ticks only count time, unless an input comes first.

        Nothing is timed before them: a :meth:`tick` among them produces no output and
        changes nothing but logical time (and, at a status interval where no STATUS is
        due, the flood-accounting window), so :meth:`ready` stays empty. A driver may
        apply those ticks without draining a Ready for each; the tick after them is a
        real one. 0 while requests wait, a view change or a state transfer runs, the
        primary is banned, or a fresh replica's grace for its last peers' STATUS runs
        (every tick counts then).
        """
        if (
            not self._active
            or self._transfer is not None
            or len(self._pool)
            or (self._rep.banned and self.primary in self._rep.banned)
            or (self._view_floor_pending and self._view_floor_quorum_at is not None)
        ):
            return 0
        interval = self.config.status_interval
        # The next status interval; while quiet, the one the heartbeat is due at (STATUS
        # is sent at multiples of the interval only, so ``_status_sent_at`` is one).
        boundary = self._now - self._now % interval + interval
        st = self._status()
        if st == self._status_sent and self._quiet(st):
            due = self._status_sent_at + interval * self.config.status_quiet_intervals
            boundary = max(boundary, due)
        return boundary - self._now - 1

    def report_fault(self, peer: int, kind: FaultKind) -> None:
        """A fault the driver detected (bad outer signature, undecodable bytes)."""
        self._fault(peer, kind)
        self._skip_banned_primary()

    def step(self, sender: int, envelope: Envelope) -> None:
        """An envelope from peer ``sender`` (any signed message's outer signature verified)."""
        if not 0 <= sender < self._n or sender == self.id or sender in self._rep.banned:
            return
        if isinstance(envelope, SignedEnvelope):
            self._on_signed(sender, envelope)
        elif isinstance(envelope, RequestsEnvelope):
            self._on_requests(sender, envelope.requests)
        elif isinstance(envelope, BatchEnvelope):
            self._on_batch(envelope.requests)
        elif isinstance(envelope, EvidenceEnvelope):
            self._on_evidence(sender, envelope)
        elif isinstance(envelope, StatusEnvelope):
            self._on_status(sender, envelope)
        elif isinstance(envelope, CheckpointProofEnvelope):
            self._on_checkpoint_proof(sender, envelope.checkpoints)
        elif isinstance(envelope, StateRequestEnvelope):
            self._on_state_request(sender, envelope)
        else:
            self._on_state_response(sender, envelope)
        self._skip_banned_primary()

    def ready(self) -> Ready:
        """Drain the accumulated output (persist, then send, then execute).

        The caller drains once it has applied every input it had (the driver after each
        burst), so a primary with no batch in flight cuts the pending requests into one
        here: waiting for the batch timeout would only add latency, and whatever arrived
        in the burst goes in the same batch.
        """
        if self.config.cut_when_idle and self._pool.pending_count:
            self._maybe_propose(idle=True)
        if not (
            self._mark_out
            or self._send
            or self._persist
            or self._forward
            or self._execute_out
            or self._serve
            or self._faults
        ):
            return _NOTHING
        if self._forward:
            if self._active and self.primary != self.id:
                self._send.append(Outbound(self.primary, RequestsEnvelope(tuple(self._forward))))
            self._forward = []
        mark = self._mark if self._mark_out else None
        self._mark_out = False
        rd = Ready(
            signed_mark=mark,
            persist=tuple(self._persist),
            send=tuple(self._send),
            execute=tuple(self._execute_out),
            serve=tuple(self._serve),
            evidence=tuple(self._evidence_out),
            faults=tuple(self._faults),
            bans=tuple(self._bans),
        )
        self._persist.clear()
        self._send.clear()
        self._execute_out.clear()
        self._serve.clear()
        self._evidence_out.clear()
        self._faults.clear()
        self._bans.clear()
        return rd

    # --- signing, faults, evidence ----------------------------------------------------

    def _make_signed(self, msg: M) -> Signed[M]:
        body = encode_body(msg)
        return Signed(body=body, signature=self._signer.sign(body), signer=self.id, msg=msg)

    def _sign_once(self, msg: M, *, requests: tuple[Request, ...] = ()) -> Signed[M] | None:
        """Sign, persist and broadcast ``msg``, unless it conflicts with what we signed.

        A message signed before (possibly before a restart) is re-sent as it was;
        a different message for the same (kind, view, seq) is never signed.
        """
        key = _own_key(msg)
        existing = self._own.get(key)
        if existing is None:
            if self._forbidden(msg):
                self.refused_by_floor += 1
                return None
            self._raise_mark(msg)
            signed = self._make_signed(msg)
            self._own[key] = signed
            self._persist.append(Record(durable.own_key(*key), durable.encode_signed(signed)))
        elif existing.msg == msg or isinstance(msg, ViewChange | NewView):
            signed = _typed(existing, type(msg))
        else:
            return None
        self._multicast(signed, requests)
        return signed

    def _multicast(self, signed: Signed[M], requests: tuple[Request, ...]) -> None:
        """Send ``signed`` to every peer, with the bodies of ``requests`` it lacks.

        A peer is not sent back a request it forwarded to us itself: it keeps it in
        its pool until it executes (a peer that lost it to a restart gets the bodies
        with the PRE-PREPARE's retransmission). Under load most requests reach the
        primary as forwards, so this saves about one copy of every body in four.
        """
        origins = [self._pool.origin(r.hash) for r in requests]
        if all(origin is None for origin in origins):
            self._send.append(Outbound(None, SignedEnvelope(signed, requests)))
            return
        for peer in range(self._n):
            if peer != self.id:
                lacks = tuple(r for r, o in zip(requests, origins, strict=True) if o != peer)
                self._send.append(Outbound(peer, SignedEnvelope(signed, lacks)))

    def _init_mark(self, state: durable.DurableState, file_mark: SigningMark | None) -> None:
        recorded = state.signed_mark
        if recorded is None:  # records from before the mark existed: derive it
            recorded = SigningMark()
            for _, view, seq in state.own:
                recorded = recorded.join(SigningMark(view, seq))
        self._mark = recorded
        self._floor = state.signing_floor
        if file_mark is None:
            self._mark_out = bool(state.own)
            return
        if file_mark.exceeds(recorded):
            # Storage is older than what we signed: whatever lies at or below the
            # file's mark may have been signed and sent, and is not in the records.
            floor = file_mark if self._floor is None else self._floor.join(file_mark)
            self._floor = floor
            self._persist.append(Record(durable.SIGNING_FLOOR_KEY, floor.encode()))
            self._mark = recorded.join(file_mark)
            self._persist.append(Record(durable.SIGNED_MARK_KEY, self._mark.encode()))
        elif recorded.exceeds(file_mark):
            self._mark_out = True

    def _forbidden(self, msg: Message) -> bool:
        """Whether signing ``msg`` could conflict with a message lost in a rollback.

        Below the floor (view V, seq S) anything may have been signed: no PRE-PREPARE,
        PREPARE or COMMIT at view <= V and seq <= S; no CHECKPOINT at seq <= S; and no
        VIEW-CHANGE or NEW-VIEW at view <= V, nor at all until the stable checkpoint
        reaches S (a VIEW-CHANGE must carry every prepared certificate above the
        stable checkpoint, and those at or below S may be among what was lost).

        A fresh replica (``_fresh``) signs no VIEW-CHANGE or NEW-VIEW before it knows
        its view floor: a replay of an old view's VIEW-CHANGEs would otherwise make it
        sign that view's messages again at once (:meth:`_learn_view_floor`).
        """
        if self._view_floor_pending and isinstance(msg, ViewChange | NewView):
            return True  # deferred: signed once the floor is known (:meth:`_learn_view_floor`)
        floor = self._floor
        if floor is None:
            return False
        if isinstance(msg, Checkpoint):
            return msg.seq <= floor.seq
        if isinstance(msg, ViewChange):
            return msg.new_view <= floor.view or self._low < floor.seq
        if isinstance(msg, NewView):
            return msg.view <= floor.view or self._low < floor.seq
        return msg.view <= floor.view and msg.seq <= floor.seq

    def _raise_mark(self, msg: Message) -> None:
        """Raise the signing mark to cover ``msg`` (persisted, and handed to the driver)."""
        if isinstance(msg, Checkpoint):
            covered = SigningMark(0, msg.seq)
        elif isinstance(msg, ViewChange):
            covered = SigningMark(msg.new_view, 0)
        elif isinstance(msg, NewView):
            seqs = [pp.msg.seq for pp in msg.pre_prepares]
            covered = SigningMark(msg.view, max(seqs, default=0))
        else:
            covered = SigningMark(msg.view, msg.seq)
        mark = self._mark.join(covered)
        if mark != self._mark:
            self._mark = mark
            self._mark_out = True
            self._persist.append(Record(durable.SIGNED_MARK_KEY, mark.encode()))

    def _fault(self, peer: int, kind: FaultKind) -> None:
        if peer == self.id or not 0 <= peer < self._n:
            return
        faults, banned = self._rep.charge(peer, kind)
        self._faults.extend(faults)
        if banned:
            self._bans.append(peer)
            self._future.pop(peer, None)
            self._future_bytes.pop(peer, None)

    def _skip_banned_primary(self) -> None:
        """Never wait on a primary this replica banned: move on to the next view."""
        while self._rep.banned and self.primary in self._rep.banned:
            self._start_view_change(self._view + 1)

    def _equivocation(self, first: Signed[Message], second: Signed[Message]) -> None:
        """Two conflicting messages signed by one replica: persist, gossip, ban."""
        signer = first.signer
        if signer == self.id or signer in self._evidence:
            return
        evidence = EvidenceEnvelope(first=first, second=second)
        self._evidence[signer] = evidence
        self._persist.append(
            Record(durable.evidence_key(signer), durable.encode_evidence(evidence))
        )
        self._send.append(Outbound(None, evidence))
        self._evidence_out.append(evidence)
        self._fault(signer, FaultKind.EQUIVOCATION)

    def _on_evidence(self, sender: int, ev: EvidenceEnvelope) -> None:
        signer = ev.first.signer
        if signer == self.id or signer in self._evidence:
            return
        try:
            self._proofs.evidence(ev.first, ev.second)
        except ProofError:
            self._fault(sender, FaultKind.INVALID_PROOF)
            return
        self._equivocation(ev.first, ev.second)

    # --- helpers ----------------------------------------------------------------------

    def _slot(self, seq: int) -> _Slot:
        slot = self._slots.get(seq)
        if slot is None:
            slot = self._slots[seq] = _Slot(created=self._now)
        return slot

    def _in_window(self, sender: int, seq: int) -> bool:
        if seq <= self._low:
            self._fault(sender, FaultKind.STALE)
            return False
        if seq > self._low + self._window:
            self._fault(sender, FaultKind.OUT_OF_WINDOW)
            return False
        return True

    def _defer(self, sender: int, env: SignedEnvelope) -> None:
        """Keep a message for a view this replica has not entered yet, bounded per sender
        in count and in the request bodies it carries (a PRE-PREPARE's): the oldest go
        first. An honest new primary pipelines at most ``max_inflight_full`` batches; a
        Byzantine one signing PRE-PREPAREs for a view it would lead could otherwise park
        2L+16 frames of bodies (gigabytes) in every replica."""
        queue = self._future.get(sender)
        if queue is None:
            queue = self._future[sender] = deque()
        queue.append(env)
        held = self._future_bytes.get(sender, 0) + _body_bytes(env)
        most = self.config.batch_max_bytes * (self.config.max_inflight_full + 1)
        while queue and (len(queue) > 2 * self._window + 16 or held > most):
            held -= _body_bytes(queue.popleft())
        self._future_bytes[sender] = held

    def _persist_view(self) -> None:
        self._persist.append(
            Record(durable.VIEW_KEY, durable.encode_view(self._view, self._active))
        )

    # --- normal case (§4.2) -----------------------------------------------------------

    def _on_signed(self, sender: int, env: SignedEnvelope) -> None:
        signed = env.signed
        signer = signed.signer
        if signer >= self._n:
            self._fault(sender, FaultKind.NON_MEMBER)
            return
        if signer == self.id or signer in self._rep.banned:
            return
        self._proofs.remember(signed)
        msg = signed.msg
        if isinstance(msg, PrePrepare):
            self._on_pre_prepare(sender, env)
        elif isinstance(msg, Prepare):
            self._on_prepare(sender, env)
        elif isinstance(msg, Commit):
            self._on_commit(sender, env)
        elif isinstance(msg, Checkpoint):
            self._on_checkpoint(sender, _typed(signed, Checkpoint))
        elif isinstance(msg, ViewChange):
            self._on_view_change(sender, _typed(signed, ViewChange))
        else:
            self._on_new_view(sender, _typed(signed, NewView))

    def _current_view(self, sender: int, env: SignedEnvelope, view: int) -> bool:
        """Whether a normal-case message is for the view we are active in (else defer or drop)."""
        if self._active and view == self._view:
            return True
        if view > self._view or (view == self._view and not self._active):
            self._defer(sender, env)
        else:
            self._fault(sender, FaultKind.STALE)
        return False

    def _on_pre_prepare(self, sender: int, env: SignedEnvelope) -> None:
        signed = _typed(env.signed, PrePrepare)
        pp = signed.msg
        if signed.signer != self.config.primary(pp.view):
            self._fault(signed.signer, FaultKind.PROTOCOL)
            return
        if not self._current_view(sender, env, pp.view) or not self._in_window(sender, pp.seq):
            return
        hashes = pp.request_hashes
        if (
            len(hashes) > self.config.batch_max_count
            or len(set(hashes)) != len(hashes)
            or batch_digest(hashes) != pp.digest
        ):
            self._fault(signed.signer, FaultKind.PROTOCOL)
            return
        if not hashes and not self._reissued_null(pp):
            # An honest primary orders the null batch only in a NEW-VIEW (to fill gaps);
            # others would be free checkpoints and signatures at its will.
            self._fault(signed.signer, FaultKind.PROTOCOL)
            return
        slot = self._slot(pp.seq)
        if slot.pre_prepare is not None:
            if slot.pre_prepare.msg.digest != pp.digest:
                self._equivocation(slot.pre_prepare, signed)
                return
        else:
            slot.pre_prepare = signed
            self._pool.assign(hashes)
        if not self._bodies_at_hand(slot, pp.digest):
            bodies = {r.hash: r for r in env.requests}
            self._learn_batch(pp.digest, hashes, bodies, blame=signed.signer)
        self._try_prepare(pp.seq, slot)
        self._check_prepared(pp.seq, slot)

    def _may_lead(self) -> bool:
        """Whether this primary may propose in its view.

        A replica started with no records and no signing mark may have led this very
        view before and would propose its seqs again with other batches: a node1 wiped
        (or a second process of it on an empty directory) did, and its peers banned it
        for equivocation (found 2026-12-04). What its peers report cannot rule it out
        (a batch it proposed may be prepared and executed nowhere yet), so it leads only
        views whose NEW-VIEW it signed itself, and hands its starting view on once it may
        sign a VIEW-CHANGE (its backups join their primary's at once): a new cluster
        starts with one view change.
        """
        if not self._fresh or self._view in self._led_here:
            return True
        if self._view_floor_pending:
            return False
        floor = self._floor.view if self._floor is not None else 0
        if self._active and self.primary == self.id and self._view + 1 > floor:
            self._start_view_change(self._view + 1)
        return False

    def _learn_view_floor(self) -> None:
        """A fresh replica (``_fresh``) that heard q-1 peers' STATUS: it signs no
        VIEW-CHANGE or NEW-VIEW at or below the view f+1 of them are *active* in (its key
        may have signed one there, and peers holding it would take a new one for
        equivocation: a replayed VIEW-CHANGE of such a view made a wiped primary sign its
        NEW-VIEW again). A view they are active in needs no VIEW-CHANGE any more, so the
        floor costs no liveness; one they are still changing to does, and is not below
        it. The (f+1)-th highest: one honest peer at least is that far, and f Byzantine
        peers cannot raise it.

        It waits for every peer's STATUS, or VIEW_FLOOR_GRACE_INTERVALS status intervals
        once q-1 came: of q-1 reports, f may be Byzantine, and one that said "view 0"
        beside one honest report set the floor to 0 (a review, 2026-12-05). Of all n-1,
        f low ones cannot take it below the (f+1)-th highest of the honest ones.

        Until then it defers every VIEW-CHANGE and NEW-VIEW (:meth:`_forbidden`: a replay
        in that first status interval made it sign them again at once), and here signs
        the view change it joined meanwhile, if the floor allows. Deferring, not
        refusing: a replica restarted before it signed anything is honest, and the
        simulator's clusters stalled without its VIEW-CHANGE."""
        heard = len(self._peer_status)
        if heard < self._q - 1:
            return
        if heard < self._n - 1:
            if self._view_floor_quorum_at is None:
                self._view_floor_quorum_at = self._now
            grace = VIEW_FLOOR_GRACE_INTERVALS * self.config.status_interval
            if self._now < self._view_floor_quorum_at + grace:
                return  # every live peer answers within an interval or two
        self._view_floor_pending = False
        self._persist.append(Record(durable.VIEW_FLOOR_PENDING_KEY, None))
        active = sorted((st.view for st in self._peer_status.values() if st.active), reverse=True)
        weak = quorum.weak_quorum_size(self._n)
        view = active[weak - 1] if len(active) >= weak else 0
        if view > 0:
            floor = SigningMark(view, 0)
            self._floor = floor if self._floor is None else self._floor.join(floor)
            self._persist.append(Record(durable.SIGNING_FLOOR_KEY, self._floor.encode()))
        if not self._active:  # a view change it joined meanwhile: sign it now, if allowed
            self._start_view_change(self._view)

    def _reissued_null(self, pp: PrePrepare) -> bool:
        """Whether the NEW-VIEW of ``pp``'s view re-issued the null batch at its seq (a
        resend of it comes on its own)."""
        nv = self._new_view_msg
        return (
            nv is not None
            and nv.msg.view == pp.view
            and any(
                p.msg.seq == pp.seq and p.msg.digest == NULL_DIGEST for p in nv.msg.pre_prepares
            )
        )

    def _learn_batch(
        self,
        digest: bytes,
        hashes: tuple[bytes, ...],
        bodies: Mapping[bytes, Request],
        *,
        blame: int,
    ) -> None:
        """Store the batch if every body is at hand (beside the message or in the pool)."""
        requests = []
        for h in hashes:
            request = bodies.get(h) or self._pool.get(h)
            if request is None:
                return
            requests.append(request)
        if sum(r.size for r in requests) > self.config.batch_max_bytes:
            self._fault(blame, FaultKind.PROTOCOL)
            return
        self._batches[digest] = tuple(requests)

    def awaits_batch(self, digest: bytes) -> bool:
        """Whether some slot waits for the bodies of batch ``digest`` (a read-only query:
        the driver verifies a BATCH's bodies ahead only then)."""
        return digest not in self._batches and bool(self._waiting_for(digest))

    def _waiting_for(self, digest: bytes) -> list[tuple[int, _Slot]]:
        """The slots not executed yet whose PRE-PREPARE or commit is for batch ``digest``."""
        return [
            (seq, slot)
            for seq, slot in self._slots.items()
            if slot.executed_at is None
            and (
                (slot.pre_prepare is not None and slot.pre_prepare.msg.digest == digest)
                or (slot.committed is not None and slot.committed.digest == digest)
            )
        ]

    def _bodies_at_hand(self, slot: _Slot, digest: bytes) -> bool:
        """Whether this replica may vote for batch ``digest`` at ``slot``: it holds the
        bodies, or it executed that very batch there (a NEW-VIEW re-issues the seqs
        prepared before it, executed ones too; their bodies may be gone from memory,
        but storage holds them finalized)."""
        return digest in self._batches or (
            slot.executed_at is not None
            and slot.committed is not None
            and slot.committed.digest == digest
        )

    def _release_bodies(self, seq: int) -> None:
        """Let go of the bodies of the batch applied at ``seq``: storage holds them
        finalized now (a lagging peer is served from there, :class:`ServeState`).

        Kept while a later seq names the same batch (only a faulty primary proposes one
        batch twice; that seq needs the bodies to execute). Before, a replica kept every
        batch's bodies until the next stable checkpoint: 16 to 32 batches, about 1 MB
        each at 300 vertices/s, the largest part of the consensus process's memory
        under load (docs/benchmarks.md)."""
        slot = self._slots.get(seq)
        if slot is None or slot.committed is None or slot.executed_at is None:
            return
        digest = slot.committed.digest
        if digest == NULL_DIGEST or digest not in self._batches:
            return
        for later, other in self._slots.items():
            if later > seq and digest in (
                other.pre_prepare.msg.digest if other.pre_prepare is not None else None,
                other.prepared.digest if other.prepared is not None else None,
                other.committed.digest if other.committed is not None else None,
            ):
                return
        del self._batches[digest]

    def _on_batch(self, requests: tuple[Request, ...]) -> None:
        """Bodies of a batch some slot is waiting for (self-verifying: digest of the hashes)."""
        hashes = tuple(r.hash for r in requests)
        digest = batch_digest(hashes)
        if digest in self._batches:
            return
        waiting = self._waiting_for(digest)
        if not waiting or len(hashes) != len(set(hashes)):
            return
        if sum(r.size for r in requests) > self.config.batch_max_bytes:
            return
        self._batches[digest] = requests
        for seq, slot in waiting:
            self._try_prepare(seq, slot)
            self._check_prepared(seq, slot)
        self._try_execute()

    def _try_prepare(self, seq: int, slot: _Slot) -> None:
        """A backup that accepted a PRE-PREPARE and holds its bodies multicasts PREPARE."""
        pp = slot.pre_prepare
        if pp is None or not self._active or pp.msg.view != self._view:
            return
        if self.primary == self.id or not self._bodies_at_hand(slot, pp.msg.digest):
            return
        if ("prepare", self._view, seq) in self._own and self.id in slot.prepares:
            return
        self._store_batch(pp.msg.digest)
        signed = self._sign_once(Prepare(view=self._view, seq=seq, digest=pp.msg.digest))
        if signed is not None:
            self._ordered_at = self._now
            self._add_prepare(seq, slot, signed)

    def _store_batch(self, digest: bytes) -> None:
        """Persist a batch's bodies before the first vote for it.

        A batch that may commit was voted for by a quorum; its bodies must
        survive their crashes, or its sequence number could never execute.
        """
        if digest in self._stored or digest == NULL_DIGEST:
            return
        if digest not in self._batches:
            # executed here and applied (_bodies_at_hand): storage holds the batch
            # finalized, and a restart resumes after it
            return
        self._stored.add(digest)
        value = durable.encode_batch(self._batches[digest])
        self._persist.append(Record(durable.batch_key(digest), value))

    def _on_prepare(self, sender: int, env: SignedEnvelope) -> None:
        signed = _typed(env.signed, Prepare)
        p = signed.msg
        if signed.signer == self.config.primary(p.view):
            self._fault(signed.signer, FaultKind.PROTOCOL)
            return
        if not self._current_view(sender, env, p.view) or not self._in_window(sender, p.seq):
            return
        self._add_prepare(p.seq, self._slot(p.seq), signed)

    def _add_prepare(self, seq: int, slot: _Slot, signed: Signed[Prepare]) -> None:
        old = slot.prepares.get(signed.signer)
        if old is not None:
            if old.msg.digest != signed.msg.digest:
                self._equivocation(old, signed)
            return
        slot.prepares[signed.signer] = signed
        self._check_prepared(seq, slot)

    def _check_prepared(self, seq: int, slot: _Slot) -> None:
        """prepared(m, v, n): the PRE-PREPARE and q-1 matching PREPAREs from backups."""
        pp = slot.pre_prepare
        if pp is None or not self._active or pp.msg.view != self._view:
            return
        if slot.prepared is not None and slot.prepared.view == self._view:
            return
        digest = pp.msg.digest
        if not self._bodies_at_hand(slot, digest):
            return
        votes = [slot.prepares[s] for s in sorted(slot.prepares)]
        matching = tuple(p for p in votes if p.msg.digest == digest)
        if len(matching) < self._q - 1:
            return
        cert = PreparedCert(pre_prepare=pp, prepares=matching[: self._q - 1])
        slot.prepared = cert
        self._store_batch(digest)
        self._persist.append(Record(durable.prepared_key(seq), durable.encode_prepared(cert)))
        signed = self._sign_once(Commit(view=self._view, seq=seq, digest=digest))
        if signed is not None:
            self._add_commit(seq, slot, signed)

    def _on_commit(self, sender: int, env: SignedEnvelope) -> None:
        signed = _typed(env.signed, Commit)
        c = signed.msg
        if c.view > self._view:
            self._defer(sender, env)
            return
        if not self._in_window(sender, c.seq):
            return
        self._add_commit(c.seq, self._slot(c.seq), signed)

    def _add_commit(self, seq: int, slot: _Slot, signed: Signed[Commit]) -> None:
        view = signed.msg.view
        votes = slot.commits.get(view)
        old = None if votes is None else votes.get(signed.signer)
        if old is not None:
            if old.msg.digest != signed.msg.digest:
                self._equivocation(old, signed)
            return
        if slot.committed is not None:
            return  # nothing left to commit: a later vote is kept only to compare with
        # A signer's COMMITs for one seq are kept for its COMMIT_VIEWS_PER_SIGNER highest
        # views: a quorum forms within one view, and an audit (2026-12-04) had one
        # Byzantine replica keep a validly signed COMMIT per (old view, seq), without end.
        mine = [v for v, by in slot.commits.items() if signed.signer in by]
        if len(mine) >= COMMIT_VIEWS_PER_SIGNER:
            lowest = min(mine)
            if view < lowest:
                return
            del slot.commits[lowest][signed.signer]
            if not slot.commits[lowest]:
                del slot.commits[lowest]
        if votes is None:
            votes = slot.commits[view] = {}
        votes[signed.signer] = signed
        matching = [votes[s] for s in sorted(votes) if votes[s].msg.digest == signed.msg.digest]
        if len(matching) >= self._q:
            slot.committed = Certificate(
                view=view,
                seq=seq,
                digest=signed.msg.digest,
                commits=tuple(matching[: self._q]),
            )
            self._try_execute()

    def _try_execute(self) -> None:
        """Execute committed batches strictly in sequence order."""
        while True:
            seq = self._last_exec + 1
            slot = self._slots.get(seq)
            if slot is None or slot.committed is None:
                return
            requests = self._batches.get(slot.committed.digest)
            if requests is None:
                return
            self._execute(seq, slot.committed, requests)

    def _execute(self, seq: int, cert: Certificate, requests: tuple[Request, ...]) -> None:
        """Hand the batch at ``seq`` to the application (which reports back with ``applied``)."""
        self._last_exec = seq
        self._executed_at = self._now
        if seq > self._low:
            slot = self._slot(seq)
            if slot.committed is None:
                slot.committed = cert
            slot.executed_at = self._now
            self._batches.setdefault(cert.digest, requests)
        self._execute_out.append(
            Committed(seq=seq, digest=cert.digest, requests=requests, certificate=cert)
        )
        hashes = tuple(r.hash for r in requests)
        self._pool.remove(hashes)
        for h in hashes:
            self._recent[h] = seq
        self._recent_order.append((seq, hashes))
        # batches executed by state transfer lie below the stable checkpoint already: an
        # idle cluster makes no next one to trim them at (an audit, 2026-12-04: a replica
        # that caught up 200 seqs kept every one of their hashes)
        self._forget_recent(self._low)
        if self._active and cert.view == self._view:
            self._progress_view = self._view

    def applied(self, seq: int, state_digest: bytes) -> None:
        """The application executed the batch at ``seq``; ``state_digest`` covers its outcomes.

        Reports come in sequence order, one per :class:`Committed`. A checkpoint is
        signed only over applied state, so it attests to what execution decided;
        a state that differs from a quorum's stable checkpoint halts the replica.
        """
        if seq != self._applied + 1 or seq > self._last_exec:
            raise ValueError(
                f"applied({seq}) out of order: last applied {self._applied}, "
                f"handed out up to {self._last_exec}"
            )
        self._applied = seq
        self._state_digest = state_digest
        self._release_bodies(seq)
        stable = self._stable_proof[0].msg if self._stable_proof else None
        if stable is not None and stable.seq == seq and stable.state_digest != state_digest:
            raise ConsensusHalted(
                f"our state at seq {seq} differs from the quorum's stable checkpoint"
            )
        if seq % self._k == 0 and seq > self._low:
            signed = self._sign_once(Checkpoint(seq=seq, state_digest=state_digest))
            if signed is not None:
                self._add_checkpoint(signed)
        transfer = self._transfer
        if transfer is not None and seq == transfer.seq:
            if state_digest != transfer.digest:
                raise ConsensusHalted(
                    f"state digest at seq {seq} differs from the stable checkpoint's"
                )
            self._transfer = None

    def _maybe_propose(self, *, idle: bool = False) -> None:
        """The primary packs pending requests into batches while the window has room.

        A partial batch goes once its oldest request waited ``batch_timeout`` with fewer
        than ``max_inflight`` batches unexecuted, or at once when ``idle`` (the caller has
        no more input) and none is.
        """
        if not self._active or self.primary != self.id or self._transfer is not None:
            return
        if not self._may_lead():
            return
        # Seqs below a signing floor were (or may have been) pre-prepared before a
        # rollback and are with the others: go on after them instead of stalling.
        while self._forbidden(
            PrePrepare(view=self._view, seq=self._next_seq, digest=NULL_DIGEST, request_hashes=())
        ):
            self._next_seq += 1
            self.refused_by_floor += 1
        cfg = self.config
        while self._pool.pending_count and self._next_seq <= self._low + self._window:
            oldest = self._pool.oldest_arrival()
            full = (
                self._pool.pending_count >= cfg.batch_max_count
                or self._pool.pending_bytes >= cfg.batch_max_bytes
            )
            inflight = self._next_seq - 1 - self._last_exec
            due = oldest is not None and (
                self._now - oldest >= cfg.batch_timeout or (idle and inflight == 0)
            )
            if inflight >= cfg.max_inflight_full or not (
                full or (due and inflight < cfg.max_inflight)
            ):
                return
            requests = self._pool.take_batch(
                max_count=cfg.batch_max_count, max_bytes=cfg.batch_max_bytes
            )
            hashes = tuple(r.hash for r in requests)
            digest = batch_digest(hashes)
            seq = self._next_seq
            pp = PrePrepare(view=self._view, seq=seq, digest=digest, request_hashes=hashes)
            signed = self._sign_once(pp, requests=requests)
            if signed is None:
                return
            self._next_seq += 1
            self._batches[digest] = requests
            slot = self._slot(seq)
            slot.pre_prepare = signed
            self._check_prepared(seq, slot)

    # --- requests -----------------------------------------------------------------------

    def _on_requests(self, sender: int, requests: tuple[Request, ...]) -> None:
        """Requests forwarded to us as primary, or relayed by a replica that timed out."""
        for request in requests:
            if request.hash in self._pool or request.hash in self._recent:
                continue
            if request.size > self.config.batch_max_bytes:
                self._fault(sender, FaultKind.PROTOCOL)
                continue
            if self._pool.full_for(sender, request.size):
                self.peer_requests_dropped += 1
                continue  # a smaller one may still fit the sender's share
            self._pool.add(request, now=self._now, origin=sender, relayed=True)
            if self._active and self.primary != self.id:
                self._forward.append(request)
        self._maybe_propose()

    def _check_progress(self) -> None:
        """Suspect a primary that makes no progress while requests wait (PBFT's timer).

        A backup active in its view suspects the primary once requests wait in its
        pool and nothing executed for ``progress_timeout`` ticks, counted from the
        later of its last executed batch, its last PREPARE for a new PRE-PREPARE of
        the primary, the oldest waiting request's arrival and the start of the view:
        a primary that executes or orders something now and then keeps it running (a
        round slower than the timeout under overload is not a stuck primary; one that
        orders batches that never commit is still caught by the request timers), and
        a new view starts it again. At half the timeout, once per
        stall, the oldest waiting requests (a batch's worth) go to every replica:
        a forward the primary lost is repaired, and the other backups, which may
        hold no request at all, start their own timers (a view change needs f+1 of
        them). A replica that f+1 peers report ahead of it in this view is lagging,
        not watching a stuck primary: it waits to catch up (pushes, state transfer);
        one that heard from fewer than f other backups lately is cut off and waits too.
        Either restarts the timer: half a timeout later its requests go out again.

        The timeout doubles with every view since the last one that executed a batch,
        like the NEW-VIEW wait: when a round takes longer than the timeout (a slow
        network, large batches), views stop failing once it is long enough, instead of
        changing for ever.
        """
        timeout = self.config.progress_timeout
        if timeout is None or not self._active or self.primary == self.id:
            return
        timeout <<= self._failed_views()
        oldest = self._pool.oldest_waiting_since()
        if oldest is None:
            return
        since = max(
            self._executed_at, self._ordered_at, oldest, self._view_since, self._progress_restarted
        )
        waited = self._now - since
        if waited >= timeout:
            if self._lagging() or self._cut_off():
                self._progress_restarted = self._now  # relay again at half, check again
            else:
                self._start_view_change(self._view + 1)
            return
        if waited >= max(1, timeout // 2) and self._stall_relayed != since:
            self._stall_relayed = since
            cfg = self.config
            oldest_requests = self._pool.oldest(
                max_count=cfg.batch_max_count, max_bytes=cfg.batch_max_bytes
            )
            self._send.append(Outbound(None, RequestsEnvelope(oldest_requests)))

    def _cut_off(self) -> bool:
        """Whether fewer than f backups besides us were heard from lately (STATUS).

        A VIEW-CHANGE needs f+1 replicas to spread: one that cannot reach f others is
        cut off itself, not watching a stuck primary, and would only leave the view
        alone (for good: it cannot go back) while the others carry on.
        """
        recent = self._now - 2 * self.config.status_interval
        heard = sum(
            1 for peer, at in self._peer_status_at.items() if at >= recent and peer != self.primary
        )
        return heard < quorum.max_faulty(self._n)

    def alone_in_view(self) -> bool:
        """Whether this replica waits for a NEW-VIEW while f+1 peers heard from lately
        (one honest at least) are active in a lower view: it left their view without
        them and cannot go back, so it orders nothing until they change views too, and
        learns what they finalize only at checkpoints (state transfer). Its node then
        tells load balancers it is not ready.

        Only once a view change would be over (``view_change_timeout`` since it left its
        view), by STATUS sent after the peers heard its VIEW-CHANGE: the first replica
        of every ordinary view change saw its peers still in the old view (a review,
        2026-12-04)."""
        if self._active:
            return False
        cfg = self.config
        if self._now - self._left_view_at < cfg.view_change_timeout:
            return False
        since = max(
            self._now - 3 * cfg.status_interval * cfg.status_quiet_intervals,
            self._left_view_at + cfg.status_interval,
        )
        below = sum(
            1
            for peer, st in self._peer_status.items()
            if st.active and st.view < self._view and self._peer_status_at.get(peer, 0) >= since
        )
        return below >= quorum.weak_quorum_size(self._n)

    def _lagging(self) -> bool:
        """Whether f+1 peers (one honest at least) executed beyond us in our view."""
        ahead = sum(
            1
            for st in self._peer_status.values()
            if st.view == self._view and st.active and st.last_executed > self._last_exec
        )
        return ahead >= quorum.weak_quorum_size(self._n)

    def _check_request_timers(self) -> None:
        """Relay requests unexecuted for a request timeout; suspect the primary after two.

        While waiting for a NEW-VIEW the replica only relays (the primary of the
        view the others are in, if any, then orders them). A replica cut off from its
        peers relays too instead of suspecting: its VIEW-CHANGE could not spread, and
        it would be left alone in a view it cannot leave once the network heals.
        """
        expired = self._pool.expired(self._now, self.config.request_timeout)
        if not expired:
            return
        if self._active and any(e.relayed for e in expired) and not self._cut_off():
            self._start_view_change(self._view + 1)
            return
        self._send.append(Outbound(None, RequestsEnvelope(tuple(e.request for e in expired))))
        self._pool.restart(expired, self._now)

    # --- checkpoints and garbage collection (§4.3) -----------------------------------

    def _on_checkpoint(self, sender: int, signed: Signed[Checkpoint]) -> None:
        cp = signed.msg
        if cp.seq % self._k:
            self._fault(signed.signer, FaultKind.PROTOCOL)
            return
        stable = self._stable_proof[0].msg if self._stable_proof else None
        if stable is not None and cp.seq == stable.seq and cp.state_digest != stable.state_digest:
            # signed another state than a quorum proved for this seq: lying, or diverged
            self._fault(signed.signer, FaultKind.DIVERGENT_CHECKPOINT)
            return
        if self._in_window(sender, cp.seq):
            self._add_checkpoint(signed)

    def _add_checkpoint(self, signed: Signed[Checkpoint]) -> None:
        cp = signed.msg
        if cp.seq <= self._low:
            return
        votes = self._checkpoints.get(cp.seq)
        if votes is None:
            votes = self._checkpoints[cp.seq] = {}
        old = votes.get(signed.signer)
        if old is not None:
            if old.msg.state_digest != cp.state_digest:
                self._equivocation(old, signed)
            return
        votes[signed.signer] = signed
        matching = tuple(
            votes[s] for s in sorted(votes) if votes[s].msg.state_digest == cp.state_digest
        )
        if len(matching) >= self._q:
            self._checkpoint_stable(cp.seq, cp.state_digest, matching[: self._q])

    def _on_checkpoint_proof(self, sender: int, proof: tuple[Signed[Checkpoint], ...]) -> None:
        try:
            seq, digest = self._proofs.checkpoint_proof(proof)
        except ProofError:
            self._fault(sender, FaultKind.INVALID_PROOF)
            return
        self._checkpoint_stable(seq, digest, proof)

    def _checkpoint_stable(
        self, seq: int, digest: bytes, proof: tuple[Signed[Checkpoint], ...]
    ) -> None:
        """A proven stable checkpoint: adopt it, and fetch the state up to it if behind."""
        if seq <= self._low:
            return
        own = self._own.get(("checkpoint", 0, seq))
        if own is not None and _typed(own, Checkpoint).msg.state_digest != digest:
            raise ConsensusHalted(f"our state at seq {seq} differs from a quorum's checkpoint")
        # The watermarks move even when this replica is behind: what lies below
        # a stable checkpoint comes only from state transfer, never from the log.
        self._stabilize(seq, proof)
        if self._last_exec < seq:
            self._start_transfer(seq, digest, proof)

    def _stabilize(self, seq: int, proof: tuple[Signed[Checkpoint], ...]) -> None:
        """Make ``seq`` the stable checkpoint: advance the watermarks, collect garbage."""
        if seq <= self._low:
            return
        digest = proof[0].msg.state_digest
        for signer, vote in self._checkpoints.get(seq, {}).items():
            # a replica that signed another state at this seq than a quorum proved: lying,
            # or diverged (it halts itself once it sees the proof); either way, say so
            if signer != self.id and vote.msg.state_digest != digest:
                self._fault(signer, FaultKind.DIVERGENT_CHECKPOINT)
        self._low = seq
        self._stable_proof = proof
        self._persist.append(Record(durable.STABLE_KEY, durable.encode_stable(proof)))
        for s in [s for s in self._slots if s <= seq]:
            if self._slots.pop(s).prepared is not None:
                self._persist.append(Record(durable.prepared_key(s), None))
        for key in [k for k in self._own if k[2] and k[2] <= seq]:
            del self._own[key]
            self._persist.append(Record(durable.own_key(*key), None))
        for s in [s for s in self._checkpoints if s <= seq]:
            del self._checkpoints[s]
        keep = {NULL_DIGEST}
        for slot in self._slots.values():
            if slot.pre_prepare is not None:
                keep.add(slot.pre_prepare.msg.digest)
            if slot.prepared is not None:
                keep.add(slot.prepared.digest)
            if slot.committed is not None:
                keep.add(slot.committed.digest)
        self._batches = {d: b for d, b in self._batches.items() if d in keep}
        for digest in self._stored - keep:
            self._stored.discard(digest)
            self._persist.append(Record(durable.batch_key(digest), None))
        self._forget_recent(seq)
        self._next_seq = max(self._next_seq, seq + 1)

    def _forget_recent(self, stable: int) -> None:
        """Drop the executed requests' hashes more than a window below ``stable``."""
        while self._recent_order and self._recent_order[0][0] <= stable - self._window:
            _, hashes = self._recent_order.popleft()
            for h in hashes:
                self._recent.pop(h, None)

    # --- state transfer -----------------------------------------------------------------

    def _start_transfer(
        self, seq: int, digest: bytes, proof: tuple[Signed[Checkpoint], ...]
    ) -> None:
        running = self._transfer
        if running is not None and running.seq >= seq:
            return
        # in replica order, not in the order the proof's sender chose
        candidates = tuple(sorted(c.signer for c in proof if c.signer != self.id))
        if not candidates:
            raise ConsensusHalted(
                f"storage is behind this replica's own stable checkpoint {seq}, and no peer has it"
            )
        t = self._transfer = _Transfer(seq=seq, digest=digest, proof=proof, candidates=candidates)
        if running is not None:
            t.attempt = running.attempt  # the rotation goes on where it was
            if self._now < running.next_at and self._last_exec < running.seq:
                # a request is out: wait for its answer (or its retry); asking again at
                # once let checkpoints coming faster than the retry keep it on one peer
                t.next_at, t.asked = running.next_at, running.asked
                return
        self._request_state(None)

    def _request_state(self, peer: int | None) -> None:
        """Ask ``peer`` (or the next signer of the checkpoint proof) for missing batches."""
        t = self._transfer
        if t is None or self._last_exec >= t.seq:  # all fetched: waiting for the application
            return
        if peer is None:
            eligible = [c for c in t.candidates if c not in self._rep.banned] or list(t.candidates)
            fewest = min(self._state_misses.get(c, 0) for c in eligible)
            eligible = [c for c in eligible if self._state_misses.get(c, 0) == fewest]
            peer = eligible[t.attempt % len(eligible)]
            t.attempt += 1
        t.asked = peer
        t.next_at = self._now + 2 * self.config.status_interval
        first = self._last_exec + 1
        last = min(t.seq, self._last_exec + self.config.transfer_max_batches)
        self._send.append(Outbound(peer, StateRequestEnvelope(from_seq=first, to_seq=last)))

    def _on_state_request(self, sender: int, req: StateRequestEnvelope) -> None:
        first = max(req.from_seq, 1)
        last = min(req.to_seq, self._applied, first + self.config.transfer_max_batches - 1)
        if first <= last:
            self._serve.append(ServeState(peer=sender, from_seq=first, to_seq=last))

    def _on_state_response(self, sender: int, resp: StateResponseEnvelope) -> None:
        """Finalized batches with their certificates: verify each, execute in order."""
        progressed = False
        for batch in resp.batches:
            cert = batch.certificate
            if cert.seq <= self._last_exec:
                continue
            if cert.seq != self._last_exec + 1:
                break
            if batch_digest(r.hash for r in batch.requests) != cert.digest:
                self._fault(sender, FaultKind.INVALID_PROOF)
                break
            try:
                self._proofs.certificate(cert)
            except ProofError:
                self._fault(sender, FaultKind.INVALID_PROOF)
                break
            self._execute(cert.seq, cert, batch.requests)
            progressed = True
        if progressed:
            self._state_misses.pop(sender, None)
            self._try_execute()
            if self._transfer is not None:
                # The next candidate, not ``sender`` again: a Byzantine responder answering
                # each request with one batch just before the retry timer would otherwise
                # keep every request (the honest signers never asked).
                self._request_state(None)

    # --- retransmission -----------------------------------------------------------------

    def _status(self) -> StatusEnvelope:
        return StatusEnvelope(
            view=self._view,
            active=self._active,
            last_executed=self._last_exec,
            stable_seq=self._low,
        )

    def _status_tick(self) -> None:
        """Every status interval: a new flood window, and STATUS to every peer, unless
        the replica is quiet and sent this same STATUS less than ``status_quiet_intervals``
        intervals ago (an idle cluster then exchanges only heartbeats)."""
        self._rep.new_window()
        st = self._status()
        quiet_period = self.config.status_interval * self.config.status_quiet_intervals
        if (
            st == self._status_sent
            and self._now - self._status_sent_at < quiet_period
            and self._quiet(st)
        ):
            return
        self._status_sent, self._status_sent_at = st, self._now
        self._send.append(Outbound(None, st))
        if not self._active:
            own_vc = self._own.get(("view_change", self._view, 0))
            if own_vc is not None:
                self._send.append(Outbound(None, SignedEnvelope(own_vc)))

    def _quiet(self, st: StatusEnvelope) -> bool:
        """Whether nothing needs repeating: no request waits, nothing is in progress
        (every slot known was executed and applied, the last checkpoint is stable, no
        view change, no transfer), and every peer heard from lately reported ``st``.

        Any difference turns the STATUS rate back up on both sides: a peer that lags,
        restarted or missed messages is repaired from its STATUS (``_on_status``), and
        learns that it lags from ours. A peer silent for three heartbeats (down, or cut
        off) is left out until it speaks again; a peer never heard from counts as
        silent once this replica has run that long.
        """
        if (
            not self._active
            or self._transfer is not None
            or len(self._pool)
            or self._applied < self._last_exec
            or self._last_exec >= self._low + self._k
        ):
            return False
        silent = self._now - 3 * self.config.status_interval * self.config.status_quiet_intervals
        for peer in range(self._n):
            if peer == self.id or peer in self._rep.banned:
                continue
            if self._peer_status_at.get(peer, 0) < silent:
                continue
            if self._peer_status.get(peer) != st:
                return False
        return not any(seq > self._last_exec for seq in self._slots)

    def _on_status(self, sender: int, st: StatusEnvelope) -> None:
        """Send a peer what its status shows it lacks (lost messages, restarts, lag).

        Batches and slots are resent only to a peer that made no progress since its
        previous STATUS: a peer that is merely slower (still executing) gets nothing
        extra, so an overloaded cluster is not buried under retransmissions.
        """
        previous = self._peer_status.get(sender)
        previous_at = self._peer_status_at.get(sender)
        self._peer_status[sender] = st
        self._peer_status_at[sender] = self._now
        if self._view_floor_pending:
            self._learn_view_floor()
            if not self._view_floor_pending and self._pool.pending_count:
                self._maybe_propose()  # a fresh primary may hand its view on now
        if previous != st:
            self._resend.pop(sender, None)
        elif sender == self.primary and previous_at is not None:
            self._answer_busy_primary(sender, self._now - previous_at)
        stalled = previous == st and self._resend_due(sender)
        resent = False
        settled = self._now - self.config.status_interval
        if st.stable_seq < self._low and self._answer_due("proof", sender, self._low):
            self._send.append(Outbound(sender, CheckpointProofEnvelope(self._stable_proof)))
        if stalled and self._low <= st.last_executed < self._last_exec:
            resent = self._push_batches(sender, st.last_executed, settled)
        if stalled:
            # Our CHECKPOINTs above its stable one, in case it lost them: while no
            # checkpoint is stable anywhere, nobody has a proof to send, and a full
            # watermark window would stall every primary for good.
            for kind, _, seq in list(self._own):
                if kind == "checkpoint" and seq > max(st.stable_seq, self._low):
                    self._send.append(Outbound(sender, SignedEnvelope(self._own[kind, 0, seq])))
                    resent = True
        if (
            not st.active
            and sender == self.config.primary(st.view)
            and st.view in self._vcs
            and self._answer_due("view_changes", sender, st.view)
        ):
            # A new primary still waiting: relay the VIEW-CHANGEs we hold for its view.
            for signer, vc in self._vcs[st.view].items():
                if signer != sender:
                    self._send.append(Outbound(sender, SignedEnvelope(vc)))
        if self._active:
            behind = st.view < self._view or (st.view == self._view and not st.active)
            if (
                behind
                and self._new_view_msg is not None
                and self._answer_due("new_view", sender, self._view)
            ):
                self._send.append(Outbound(sender, SignedEnvelope(self._new_view_msg)))
            if stalled and st.view == self._view and st.active:
                resent = self._resend_slots(sender, st, settled) or resent
        if resent:
            self._resent(sender)

    def _answer_due(self, what: str, peer: int, about: int) -> bool:
        """Whether ``peer``'s STATUS may draw ``what`` (our proof of checkpoint ``about``,
        our NEW-VIEW or held VIEW-CHANGEs for view ``about``) now: at most once a status
        interval for one ``about`` (an honest peer sends its STATUS that often; a flood of
        STATUS, a few bytes each, must not draw a proof or a NEW-VIEW of megabytes each)."""
        sent = self._answered.get((what, peer))
        if (
            sent is not None
            and sent[0] == about
            and self._now - sent[1] < self.config.status_interval
        ):
            return False
        self._answered[what, peer] = (about, self._now)
        return True

    def _answer_busy_primary(self, primary: int, gap: int) -> None:
        """Our primary repeated its STATUS after ``gap`` ticks: if that is the busy rate
        (an interval, not a heartbeat), it waits for something (a batch in flight), and
        only our STATUS tells it what we miss. A quiet backup answers it at once instead
        of at its next heartbeat. (The primary never answers a backup this way, and the
        answer goes to the primary only, so answers never set off more answers.)"""
        cfg = self.config
        if cfg.status_quiet_intervals < 2:
            return
        if 2 * gap >= cfg.status_interval * (1 + cfg.status_quiet_intervals):
            return
        st = self._status()
        if self._quiet(st):
            self._send.append(Outbound(primary, st))

    def _resend_slots(self, peer: int, st: StatusEnvelope, settled: int) -> bool:
        """Resend a stalled peer of our view the unexecuted slots above its STATUS
        (PRE-PREPARE with bodies, our PREPARE and COMMIT); whether anything went."""
        sent = len(self._send)
        first = max(st.last_executed, self._low) + 1
        last = min(
            max(self._slots, default=0),
            st.stable_seq + self._window,
            first + RESEND_MAX_SLOTS - 1,
        )
        budget = self.config.transfer_max_bytes
        for seq in range(first, last + 1):
            slot = self._slots.get(seq)
            if slot is None or slot.created > settled or slot.executed_at is not None:
                continue
            pp = slot.pre_prepare
            if pp is not None:
                # Bodies within a byte budget per STATUS; beyond it the bare PRE-PREPARE
                # (the peer may hold the requests in its pool; if not, the next resend).
                bodies = self._batches.get(pp.msg.digest, ()) if budget > 0 else ()
                budget -= sum(r.size for r in bodies)
                self._send.append(Outbound(peer, SignedEnvelope(pp, bodies), repair=bool(bodies)))
            for kind in ("prepare", "commit"):
                own = self._own.get((kind, self._view, seq))
                if own is not None:
                    self._send.append(Outbound(peer, SignedEnvelope(own)))
        return len(self._send) > sent

    def _resend_due(self, peer: int) -> bool:
        """Whether resending to ``peer``, stalled at its last STATUS, is allowed now.

        The first time at once; while it stays stuck at the same place, after 2, 4,
        ... up to :data:`RESEND_MAX_BACKOFF` status intervals (see :meth:`_resent`). A
        peer that is only overloaded (its CPU, not the network, is short) is then not
        buried under copies of what it already has queued, which would starve it
        further.
        """
        entry = self._resend.get(peer)
        return entry is None or self._now >= entry.next_at

    def _resent(self, peer: int) -> None:
        """Something was resent to ``peer``: back off before the next resend.

        Only a resend backs off: a STATUS that asked for nothing (an idle peer's
        heartbeat repeats itself) leaves the next real stall to be repaired at once.
        """
        interval = self.config.status_interval
        entry = self._resend.get(peer)
        if entry is None:
            self._resend[peer] = _Resend(next_at=self._now + interval, backoff=interval)
            return
        entry.backoff = min(entry.backoff * 2, RESEND_MAX_BACKOFF * interval)
        entry.next_at = self._now + entry.backoff

    def _push_batches(self, peer: int, after: int, settled: int) -> bool:
        """Send a lagging peer the batches it misses, with their certificates; whether
        anything went.

        From memory where the log still holds them; batches executed before a
        restart, and those applied since (:meth:`_release_bodies`), are only in
        storage, so the driver serves those.
        """
        batches: list[TransferBatch] = []
        limit = self.config.transfer_max_batches
        budget = self.config.transfer_max_bytes
        for seq in range(after + 1, min(self._last_exec, after + limit) + 1):
            if budget <= 0:
                break
            slot = self._slots.get(seq)
            requests = None
            if slot is not None and slot.committed is not None and slot.executed_at is not None:
                if slot.executed_at > settled:
                    break
                requests = self._batches.get(slot.committed.digest)
            if slot is None or slot.executed_at is None or requests is None:
                if not batches:
                    released = slot is not None and slot.executed_at is not None
                    # released bodies: storage has the seqs up to _applied
                    top = self._applied if released else self._last_exec
                    last = min(top, seq + limit - 1)
                    self._serve.append(ServeState(peer=peer, from_seq=seq, to_seq=last))
                    return True
                break
            assert slot.committed is not None
            batches.append(TransferBatch(requests=requests, certificate=slot.committed))
            budget -= sum(r.size for r in requests)
        if batches:
            self._send.append(Outbound(peer, StateResponseEnvelope(tuple(batches)), repair=True))
        return bool(batches)

    # --- view change (§4.4) -----------------------------------------------------------

    def _start_view_change(self, target: int) -> None:
        """Stop accepting messages of the current view; multicast VIEW-CHANGE for ``target``."""
        own = self._own.get(("view_change", target, 0))
        if own is None:
            prepared = tuple(
                cert
                for s in sorted(self._slots)
                if s > self._low and (cert := self._slots[s].prepared) is not None
            )
            vc = ViewChange(
                new_view=target,
                stable_seq=self._low,
                checkpoint_proof=self._stable_proof,
                prepared=prepared,
            )
            own = self._sign_once(vc)
        else:
            self._send.append(Outbound(None, SignedEnvelope(own)))
        if self._active or target != self._view:
            self._left_view_at = self._now
        self._view = target
        self._active = False
        self._nv_deadline = None
        self._new_view_msg = None
        self._persist_view()
        if own is not None:  # None: refused below the signing floor; others may go on
            self._vcs.setdefault(target, {})[self.id] = _typed(own, ViewChange)
        self._view_change_progress()

    def _on_view_change(self, sender: int, signed: Signed[ViewChange]) -> None:
        vc = signed.msg
        if vc.new_view <= self._active_view:
            self._fault(sender, FaultKind.STALE)
            return
        try:
            self._proofs.view_change(signed)
        except ProofError:
            self._fault(signed.signer, FaultKind.INVALID_PROOF)
            return
        self._add_view_change(signed)

    _VIEWS_PER_SIGNER = 4

    def _add_view_change(self, signed: Signed[ViewChange]) -> None:
        """Keep a valid VIEW-CHANGE (even once its signer moved on: it still counts)."""
        view, signer = signed.msg.new_view, signed.signer
        current = self._vcs.get(view, {}).get(signer)
        if current is not None:
            if current.body != signed.body:
                self._equivocation(current, signed)
            return
        held = sorted(v for v, by in self._vcs.items() if signer in by)
        if len(held) >= self._VIEWS_PER_SIGNER:
            if view < held[0]:
                return
            del self._vcs[held[0]][signer]
            if not self._vcs[held[0]]:  # no empty entry per view ever seen: views are unbounded
                del self._vcs[held[0]]
        self._vcs.setdefault(view, {})[signer] = signed
        self._view_change_progress()

    def _view_change_progress(self) -> None:
        # Join: our primary hands its view on (it restarted), or f+1 replicas want a
        # view above ours, so at least one honest does.
        primary = self.config.primary(self._view)
        if (
            self._active
            and primary != self.id
            and self._view + 1 in self._vcs
            and primary in self._vcs[self._view + 1]
        ):
            self._start_view_change(self._view + 1)
            return
        highest: dict[int, int] = {}
        for view, by in self._vcs.items():
            for j in by:
                if j != self.id and view > highest.get(j, -1):
                    highest[j] = view
        higher = sorted(highest.values(), reverse=True)
        weak = quorum.weak_quorum_size(self._n)
        if len(higher) >= weak and higher[weak - 1] > self._view:
            self._start_view_change(higher[weak - 1])
            return
        if self._active:
            return
        support = list(self._vcs.get(self._view, {}).values())
        if len(support) >= self._q and self.primary == self.id:
            self._send_new_view(sorted(support, key=lambda s: s.signer)[: self._q])
            return
        # The NEW-VIEW timer runs once q replicas want this view or a later one: some
        # of them may have moved past it (a new primary that entered it and then left
        # by its own timers while its NEW-VIEW was lost), so that q VIEW-CHANGEs for
        # exactly this view never come, and fewer than f+1 want any one view above it.
        wanting = {j for view, by in self._vcs.items() if view >= self._view for j in by}
        if len(wanting) >= self._q and self._nv_deadline is None:
            self._nv_deadline = self._now + (
                self.config.view_change_timeout << self._failed_views()
            )

    def _failed_views(self) -> int:
        """Views since the last one in which this replica executed a batch ordered in it
        (capped): the timeouts of view changes double with each (PBFT's backoff)."""
        return min(max(0, self._view - self._progress_view - 1), self.config.max_backoff)

    def _send_new_view(self, view_changes: list[Signed[ViewChange]]) -> None:
        view = self._view
        own = self._own.get(("new_view", view, 0))
        if own is None:
            plan = self._proofs.plan_new_view(view_changes)
            pre_prepares = tuple(
                self._make_signed(
                    PrePrepare(
                        view=view, seq=r.seq, digest=r.digest, request_hashes=r.request_hashes
                    )
                )
                for r in plan.reissues
            )
            nv = NewView(
                view=view,
                view_changes=tuple(view_changes),
                pre_prepares=pre_prepares,
            )
            own = self._sign_once(nv)
            if own is None:  # refused below the signing floor: the others move on
                return
            self._led_here.add(view)
        else:
            plan = self._proofs.plan_new_view(_typed(own, NewView).msg.view_changes)
            self._send.append(Outbound(None, SignedEnvelope(own)))
        self._enter_view(_typed(own, NewView), plan)

    def _on_new_view(self, sender: int, signed: Signed[NewView]) -> None:
        nv = signed.msg
        if signed.signer != self.config.primary(nv.view):
            self._fault(signed.signer, FaultKind.PROTOCOL)
            return
        accepted = self._new_view_msg
        if accepted is not None and accepted.msg.view == nv.view and accepted.body != signed.body:
            self._equivocation(accepted, signed)
            return
        if nv.view < self._view or (nv.view == self._view and self._active):
            self._fault(sender, FaultKind.STALE)
            return
        try:
            plan = self._proofs.new_view(signed)
        except ProofError:
            self._fault(signed.signer, FaultKind.INVALID_PROOF)
            return
        self._enter_view(signed, plan)

    def _enter_view(self, nv: Signed[NewView], plan: NewViewPlan) -> None:
        """Install a valid NEW-VIEW: its checkpoint, its re-issued PRE-PREPAREs, the pool."""
        view = nv.msg.view
        self._view = view
        self._active = True
        self._active_view = view
        self._view_since = self._now
        self._nv_deadline = None
        self._vcs = {v: by for v, by in self._vcs.items() if v > view}
        self._new_view_msg = nv
        self._persist_view()
        self._persist.append(Record(durable.NEW_VIEW_KEY, durable.encode_signed(nv)))
        for key in [k for k in self._own if k[0] in ("view_change", "new_view") and k[1] < view]:
            del self._own[key]
            self._persist.append(Record(durable.own_key(*key), None))
        if plan.stable_seq > self._low:
            digest = plan.stable_proof[0].msg.state_digest
            self._checkpoint_stable(plan.stable_seq, digest, plan.stable_proof)
        for slot in self._slots.values():
            slot.pre_prepare = None
            slot.prepares = {}
        self._pool.unassign_all()
        last = self._install_reissued(nv)
        self._next_seq = max(self._low, plan.stable_seq, last) + 1
        self._pool.restart_timers(self._now)
        if self.primary != self.id:
            self._forward.extend(self._pool.pending())
        self._replay_deferred()
        for pp in nv.msg.pre_prepares:
            reissued = self._slots.get(pp.msg.seq)
            if reissued is not None:
                self._try_prepare(pp.msg.seq, reissued)
                self._check_prepared(pp.msg.seq, reissued)
        self._maybe_propose()

    def _install_reissued(self, nv: Signed[NewView]) -> int:
        """Accept the NEW-VIEW's PRE-PREPAREs; return the highest seq they cover.

        The new primary never signs another PRE-PREPARE for their seqs.
        """
        last = 0
        for pp in nv.msg.pre_prepares:
            seq = pp.msg.seq
            last = max(last, seq)
            if nv.signer == self.id:
                self._own["pre_prepare", nv.msg.view, seq] = pp
            if seq > self._low:
                self._slot(seq).pre_prepare = pp
                self._pool.assign(pp.msg.request_hashes)
        return last

    def _replay_deferred(self) -> None:
        deferred = self._future
        self._future = {}
        self._future_bytes = {}
        for sender, queue in deferred.items():
            for env in queue:
                msg = env.signed.msg
                assert isinstance(msg, PrePrepare | Prepare | Commit)
                if msg.view >= self._view:
                    self._on_signed(sender, env)

    # --- restart ------------------------------------------------------------------------

    def _leave_a_recovered_view(self) -> None:
        """A restarted primary never proposes in the view it recovered: its records (and
        the signing mark beside them) may have been restored from an older copy and miss
        PRE-PREPAREs it sent in this view, and proposing those seqs again would
        equivocate (the signing floor catches a rollback only when the mark outlived
        it). It hands the view on; its backups join at once (:meth:`_view_change_progress`).

        A replica recovered in a view change it never signed a VIEW-CHANGE for (one it
        deferred while fresh, :meth:`_forbidden`) signs it now, if it may: the others may
        need it for their quorum (found by the simulator, seed 1535)."""
        if self._active and self.primary == self.id and self._n > 1:
            self._start_view_change(self._view + 1)
        elif not self._active and ("view_change", self._view, 0) not in self._own:
            self._start_view_change(self._view)

    def _restore(self, state: durable.DurableState) -> None:
        others = sorted({signed.signer for signed in state.own.values()} - {self.id})
        if others:
            # another node's database (its storage stamp lost or removed): its records
            # would make this replica resume, and sign on from, what another one signed
            raise CorruptState(
                f"the consensus records hold messages signed by replica "
                f"{', '.join(map(str, others))}, not by this one ({self.id}): the database "
                "of another node? Give this node its own database back"
            )
        if state.stable_proof:
            self._low = state.stable_proof[0].msg.seq
            self._stable_proof = state.stable_proof
        self._view, self._active = state.view, state.active
        nv = state.new_view
        if state.active:
            self._active_view = state.view
        else:
            self._active_view = 0 if nv is None else nv.msg.view
        self._progress_view = self._active_view
        self._own = dict(state.own)
        self._batches.update(state.batches)
        self._stored = set(state.batches)
        for signer, evidence in state.evidence.items():
            # Records are not trusted: evidence bans a peer only if it proves itself
            # (two valid, conflicting signatures of that peer), and is dropped otherwise.
            try:
                self._proofs.evidence(evidence.first, evidence.second)
            except ProofError:
                self._persist.append(Record(durable.evidence_key(signer), None))
                continue
            if evidence.first.signer != signer or signer == self.id:
                self._persist.append(Record(durable.evidence_key(signer), None))
                continue
            self._evidence[signer] = evidence
            self._rep.banned.add(signer)
        for seq, cert in state.prepared.items():
            if seq > self._low:
                self._slot(seq).prepared = cert
        for (_, view, seq), signed in state.own.items():
            msg = signed.msg
            if isinstance(msg, Prepare) and view == self._view and seq > self._low:
                self._slot(seq).prepares[self.id] = _typed(signed, Prepare)
            elif isinstance(msg, Commit) and seq > self._low:
                self._slot(seq).commits.setdefault(view, {})[self.id] = _typed(signed, Commit)
            elif isinstance(msg, Checkpoint) and seq > self._low:
                self._checkpoints.setdefault(seq, {})[self.id] = _typed(signed, Checkpoint)
            elif isinstance(msg, PrePrepare) and view == self._view and seq > self._low:
                self._slot(seq).pre_prepare = _typed(signed, PrePrepare)
                self._next_seq = max(self._next_seq, seq + 1)
            elif isinstance(msg, ViewChange) and view > self._active_view:
                self._vcs[view] = {self.id: _typed(signed, ViewChange)}
        if nv is not None and nv.msg.view == self._view and self._active:
            self._new_view_msg = nv
            self._next_seq = max(self._next_seq, self._install_reissued(nv) + 1)
        self._next_seq = max(self._next_seq, self._low + 1)
        if self._last_exec < self._low:
            digest = self._stable_proof[0].msg.state_digest
            self._start_transfer(self._low, digest, self._stable_proof)
        self._status_tick()
