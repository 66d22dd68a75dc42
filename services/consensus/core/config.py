"""The replica's configuration: one frozen, keyword-only dataclass (time in ticks)."""

from __future__ import annotations

from dataclasses import dataclass

from services.consensus.core import quorum


@dataclass(frozen=True, kw_only=True)
class Config:
    """Parameters of one replica. Every duration is a number of ticks.

    ``n`` is the size of the validator set; replica ``i`` is the i-th validator,
    and the primary of view ``v`` is replica ``v mod n``.
    """

    n: int
    replica_id: int
    #: A batch (one sequence number) holds at most this many requests ...
    batch_max_count: int = 256
    #: ... and at most this many request bytes (a lone larger request is refused).
    batch_max_bytes: int = 1_048_576
    #: The primary cuts a partial batch once its oldest pending request waited this long.
    batch_timeout: int = 2
    #: ... or at once when no batch is in flight and the driver has no more input (the
    #: end of a burst): an idle cluster then orders a request without waiting.
    cut_when_idle: bool = True
    #: Pipelining depth: the primary cuts a partial batch only while fewer than this
    #: many of its batches are unexecuted (full batches go out within the window). Under
    #: load, requests then gather into larger batches instead of many tiny ones.
    max_inflight: int = 4
    #: ... and a full batch only while fewer than this many are unexecuted: what the
    #: primary has multicast but not executed stays bounded in bytes (a window of
    #: L 1 MiB batches would be hundreds of MB queued towards slow peers).
    max_inflight_full: int = 8
    #: K: a checkpoint every K sequence numbers.
    checkpoint_interval: int = 64
    #: L: sequence numbers accepted lie in (h, h + L], h = the stable checkpoint.
    watermark_window: int = 256
    #: Base wait for a NEW-VIEW once q replicas want this view (or a later one);
    #: doubles per failed view.
    view_change_timeout: int = 200
    #: The doubling (of this and of ``progress_timeout``) stops after this many
    #: consecutive failed view changes.
    max_backoff: int = 6
    #: A request unexecuted this long is relayed to every replica; after as
    #: long again the replica suspects the primary and starts a view change.
    request_timeout: int = 400
    #: A backup suspects the primary (and starts a view change) when requests wait
    #: in its pool and nothing executed for this long, counted from the later of
    #: its last executed batch, the arrival of the oldest request still waiting and
    #: the start of the view (PBFT's single timer, restarted whenever a request
    #: executes). At half of it the replica relays its oldest waiting requests to
    #: every replica once (a lost forward, and the other backups start their timers).
    #: Doubles per view since the last one that executed (as ``view_change_timeout``).
    #: The request timers above stay: they catch a primary that makes progress but
    #: leaves one request out. None: off (only the request timers).
    progress_timeout: int | None = 150
    #: Local requests are refused (OVERLOADED) while a pending request has waited
    #: (since it arrived) longer than this; None: never (only ``pool_max`` bounds it).
    admission_max_wait: int | None = None
    #: Period of STATUS broadcasts (retransmission) and of VIEW-CHANGE resends.
    status_interval: int = 20
    #: While the replica is quiet (nothing pending or in progress, and every peer heard
    #: from lately reported the same status as its own), an unchanged STATUS goes out
    #: only every this many status intervals (a heartbeat); a changed one at the next
    #: interval, and every interval again as soon as anything is pending or out of
    #: step. 1: every interval, always.
    status_quiet_intervals: int = 5
    #: At most this many requests wait in the pool ...
    pool_max: int = 20_000
    #: ... and at most this many bytes of them (each peer's share: this / n, or a
    #: batch's worth when that is more).
    pool_max_bytes: int = 64 * 1024 * 1024
    #: Largest number of batches served or fetched per state-transfer request ...
    transfer_max_batches: int = 64
    #: ... and request bytes per transfer or resend message (one batch always goes):
    #: a message must stay far below the transport's frame limit.
    transfer_max_bytes: int = 2_097_152
    #: A peer whose reputation falls below this score is banned.
    reputation_threshold: int = -100
    #: A replica started with no records and no signing mark proposes nothing until its
    #: peers' STATUS shows whether the cluster is new (see ``Replica._may_lead``). Off
    #: only in unit tests that start a cluster and propose at once.
    fresh_start_asks_peers: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not 0 <= self.replica_id < self.n:
            raise ValueError(f"replica_id must be in [0, {self.n}), got {self.replica_id}")
        positive = (
            "batch_max_count",
            "batch_max_bytes",
            "checkpoint_interval",
            "watermark_window",
            "view_change_timeout",
            "request_timeout",
            "status_interval",
            "status_quiet_intervals",
            "pool_max",
            "pool_max_bytes",
            "transfer_max_batches",
            "transfer_max_bytes",
            "max_inflight",
            "max_inflight_full",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_timeout", "max_backoff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pool_max_bytes < self.batch_max_bytes:
            raise ValueError(
                f"pool_max_bytes ({self.pool_max_bytes}) must be >= batch_max_bytes "
                f"({self.batch_max_bytes}): the largest request must fit in an empty pool"
            )
        if self.watermark_window < self.checkpoint_interval:
            raise ValueError(
                f"watermark_window ({self.watermark_window}) must be >= "
                f"checkpoint_interval ({self.checkpoint_interval})"
            )
        if self.progress_timeout is not None and self.progress_timeout < 1:
            raise ValueError(f"progress_timeout must be >= 1 or None, got {self.progress_timeout}")
        if self.admission_max_wait is not None and not (
            1 <= self.admission_max_wait < self.request_timeout
        ):
            raise ValueError(
                f"admission_max_wait must be in [1, request_timeout), got {self.admission_max_wait}"
            )
        if self.reputation_threshold >= 0:
            raise ValueError("reputation_threshold must be negative (scores start at 0)")

    @property
    def pool_per_peer_bytes(self) -> int:
        """The pool bytes requests from one peer may hold."""
        return max(self.batch_max_bytes, self.pool_max_bytes // self.n)

    @property
    def f(self) -> int:
        return quorum.max_faulty(self.n)

    @property
    def q(self) -> int:
        return quorum.quorum_size(self.n)

    def primary(self, view: int) -> int:
        return view % self.n
