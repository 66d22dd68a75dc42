"""What a driver does around one Replica: durable records, execution, Ready handling.

Execution is the real one (:mod:`services.consensus.execution`): each node decides
outcomes with its own signature verdict cache and its own finalized set, extends
the state digest over them and reports it to the replica, as the driver does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from services.consensus.core import codec
from services.consensus.core.config import Config
from services.consensus.core.crypto import GENESIS_STATE, next_state_digest, outcome_bytes
from services.consensus.core.durable import ExecutedState, SigningMark
from services.consensus.core.messages import (
    BatchEnvelope,
    Envelope,
    Request,
    RequestsEnvelope,
    SignedEnvelope,
    StateResponseEnvelope,
    TransferBatch,
)
from services.consensus.core.ready import Committed, Ready
from services.consensus.core.replica import Replica
from services.consensus.core.reputation import FaultKind
from services.consensus.execution import Candidate, Verdicts, decide
from services.consensus.sim.crypto import Scheme


class Requests:
    """How a simulation's requests are read: their content and their signature check.

    The default treats the whole body as content, validly signed (unit tests).
    """

    def content(self, body: bytes) -> bytes:
        return hashlib.sha3_256(body).digest()

    def signature_ok(self, body: bytes) -> bool:
        return True


@dataclass(slots=True)
class Application:
    """What execution keeps (in storage, so it survives a crash): the executed log,
    the state digest after each batch, the finalized contents."""

    log: list[Committed] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)
    #: Reject reason (None: finalized) of each request, per executed batch.
    outcomes: list[list[str | None]] = field(default_factory=list)
    finalized: set[bytes] = field(default_factory=set)

    @property
    def executed(self) -> ExecutedState:
        return ExecutedState(len(self.log), self.states[-1]) if self.log else ExecutedState()

    @property
    def state_digest(self) -> bytes:
        return self.states[-1] if self.states else GENESIS_STATE

    def copy(self) -> Application:
        return Application(
            list(self.log), list(self.states), [list(o) for o in self.outcomes], set(self.finalized)
        )

    def truncate(self, seq: int, requests: Requests) -> None:
        """Lose every batch after ``seq`` (a storage rollback)."""
        del self.log[seq:], self.states[seq:], self.outcomes[seq:]
        self.finalized = {
            requests.content(r.body)
            for c, reasons in zip(self.log, self.outcomes, strict=True)
            for r, reason in zip(c.requests, reasons, strict=True)
            if reason is None
        }


_TUPLE_FIELDS = [f for f in Ready.__dataclass_fields__ if f != "signed_mark"]


@dataclass(frozen=True, slots=True)
class Wire:
    """Bytes from one replica for another (``to`` None: every other replica)."""

    to: int | None
    data: bytes
    envelope: Envelope | None


class Node:
    """A replica plus the storage its driver keeps: records and the executed log.

    ``records`` and ``log`` survive :meth:`crash`; everything in the Replica does not.
    """

    def __init__(
        self,
        config: Config,
        scheme: Scheme,
        request_hash: Callable[[bytes], bytes],
        *,
        on_execute: Callable[[Node, Committed, list[str | None]], None] | None = None,
        decoded: dict[bytes, tuple[Envelope | None, bool]] | None = None,
        requests: Requests | None = None,
    ) -> None:
        self.config = config
        self.index = config.replica_id
        self._scheme = scheme
        self._request_hash = request_hash
        self._on_execute = on_execute
        #: Decoding and signature checks are pure: a simulation shares their results
        #: between replicas (a broadcast is decoded once, not n-1 times).
        self._decoded = {} if decoded is None else decoded
        self.requests = requests or Requests()
        self.records: dict[str, bytes] = {}
        self.app = Application()
        #: The driver's signing-mark file: outside storage, it survives a rollback.
        self.mark_file: SigningMark | None = None
        #: Signature verdicts (in memory: a restart starts with an empty cache).
        self.verdicts = Verdicts()
        self.replica = self._make()
        self.up = True

    @property
    def log(self) -> list[Committed]:
        return self.app.log

    def _make(self) -> Replica:
        return Replica(
            self.config,
            signer=self._scheme.signer(self.index),
            verifier=self._scheme.verifier,
            records=self.records,
            executed=self.app.executed,
            signing_mark=self.mark_file,
        )

    def crash(self) -> None:
        self.up = False

    def restart(self) -> None:
        self.verdicts = Verdicts()
        self.replica = self._make()
        self.up = True

    def snapshot(self) -> tuple[dict[str, bytes], Application]:
        """A copy of what storage holds (a backup)."""
        return dict(self.records), self.app.copy()

    def roll_back(self, backup: tuple[dict[str, bytes], Application]) -> None:
        """Storage replaced by an older copy (a restored backup); the mark file stays."""
        records, app = backup
        self.records, self.app = dict(records), app.copy()

    # --- what the consensus service does with requests ----------------------------

    def signature_ok(self, request: Request) -> bool:
        """This copy's verdict, verified once per node (the driver's ``Verifier``)."""
        content = self.requests.content(request.body)
        verdict = self.verdicts.get(request.hash, content)
        if verdict is None:
            verdict = self.requests.signature_ok(request.body)
            self.verdicts.put(request.hash, content, verdict)
        return verdict

    def submit(self, request: Request) -> bool:
        """A client's submission: verified, then proposed; False when refused (bad signature)."""
        if not self.signature_ok(request):
            return False
        self.replica.propose(request)
        return True

    def receive(self, sender: int, data: bytes) -> None:
        """What the driver does with bytes from a peer: decode, verify, step."""
        cached = self._decoded.get(data)
        if cached is None:
            cached = self._decode(data)
            if len(self._decoded) > 50_000:
                self._decoded.clear()
            self._decoded[data] = cached
        envelope, signature_ok = cached
        if envelope is None:
            self.replica.report_fault(sender, FaultKind.MALFORMED)
        elif not signature_ok:
            self.replica.report_fault(sender, FaultKind.INVALID_SIGNATURE)
        elif isinstance(envelope, RequestsEnvelope):
            valid = tuple(r for r in envelope.requests if self.signature_ok(r))
            if len(valid) < len(envelope.requests):
                self.replica.report_fault(sender, FaultKind.INVALID_SIGNATURE)
            if valid:
                self.replica.step(sender, RequestsEnvelope(valid))
        else:
            if isinstance(envelope, SignedEnvelope | BatchEnvelope):
                for request in envelope.requests:  # pre-verified, as the driver does
                    self.signature_ok(request)
            self.replica.step(sender, envelope)

    def _decode(self, data: bytes) -> tuple[Envelope | None, bool]:
        try:
            envelope = codec.decode_envelope(data, request_hash=self._request_hash)
        except codec.DecodeError:
            return None, False
        if isinstance(envelope, SignedEnvelope):
            s = envelope.signed
            if s.signer < self.config.n:
                return envelope, self._scheme.verifier.verify(s.signer, s.body, s.signature)
        return envelope, True

    def drain(self) -> tuple[Ready, list[Wire]]:
        """Carry out Readies until none is left; return them merged, and the wires to send.

        Executing a batch can make more output (a checkpoint over the applied state),
        which the next Ready holds: the driver carries that out at once too.
        """
        merged, wires = self._drain_one()
        while merged:
            rd, more = self._drain_one()
            if not rd:
                break
            fields = {f: getattr(merged, f) + getattr(rd, f) for f in _TUPLE_FIELDS}
            merged = Ready(**fields, signed_mark=rd.signed_mark or merged.signed_mark)
            wires.extend(more)
        return merged, wires

    def _drain_one(self) -> tuple[Ready, list[Wire]]:
        """Carry out one Ready: persist, then send (returned), then execute, then serve."""
        rd = self.replica.ready()
        if not rd:
            return rd, []
        if rd.signed_mark is not None:  # before anything is sent
            self.mark_file = rd.signed_mark
        for record in rd.persist:
            if record.value is None:
                self.records.pop(record.key, None)
            else:
                self.records[record.key] = record.value
        wires = [Wire(out.to, codec.encode_envelope(out.envelope), out.envelope) for out in rd.send]
        for committed in rd.execute:
            self._execute(committed)
        for serve in rd.serve:
            # as the driver does: up to transfer_max_bytes of requests (one batch always)
            budget = self.replica.config.transfer_max_bytes
            batches = []
            for c in self.log[serve.from_seq - 1 : serve.to_seq]:
                if budget <= 0:
                    break
                batches.append(TransferBatch(requests=c.requests, certificate=c.certificate))
                budget -= sum(r.size for r in c.requests)
            env = StateResponseEnvelope(tuple(batches))
            wires.append(Wire(serve.peer, codec.encode_envelope(env), env))
        return rd, wires

    def _execute(self, committed: Committed) -> None:
        """Decide, extend the state digest, store, report ``applied`` (the executor's job)."""
        app = self.app
        if committed.seq != len(app.log) + 1:
            raise AssertionError(f"replica {self.index} executed seq {committed.seq} out of order")
        candidates = [
            Candidate(
                content=self.requests.content(r.body),
                parents=(),
                malformed=None,
                signature_ok=self.signature_ok(r),
            )
            for r in committed.requests
        ]
        reasons = decide(candidates, app.finalized)
        state = next_state_digest(
            app.state_digest,
            committed.seq,
            committed.digest,
            outcome_bytes(r is not None for r in reasons),
        )
        app.log.append(committed)
        app.states.append(state)
        app.outcomes.append(reasons)
        app.finalized.update(
            c.content for c, r in zip(candidates, reasons, strict=True) if r is None
        )
        if self._on_execute is not None:
            self._on_execute(self, committed, reasons)
        self.replica.applied(committed.seq, state)
