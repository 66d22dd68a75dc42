"""What a driver does around one Replica: durable records, executed log, Ready handling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.consensus.core import codec
from services.consensus.core.config import Config
from services.consensus.core.durable import ExecutedState
from services.consensus.core.messages import (
    Envelope,
    SignedEnvelope,
    StateResponseEnvelope,
    TransferBatch,
)
from services.consensus.core.ready import Committed, Ready
from services.consensus.core.replica import Replica
from services.consensus.core.reputation import FaultKind
from services.consensus.sim.crypto import Scheme


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
        on_execute: Callable[[Node, Committed], None] | None = None,
        decoded: dict[bytes, tuple[Envelope | None, bool]] | None = None,
    ) -> None:
        self.config = config
        self.index = config.replica_id
        self._scheme = scheme
        self._request_hash = request_hash
        self._on_execute = on_execute
        #: Decoding and signature checks are pure: a simulation shares their results
        #: between replicas (a broadcast is decoded once, not n-1 times).
        self._decoded = {} if decoded is None else decoded
        self.records: dict[str, bytes] = {}
        self.log: list[Committed] = []
        self.replica = self._make()
        self.up = True

    def _make(self) -> Replica:
        last = self.log[-1] if self.log else None
        executed = ExecutedState() if last is None else ExecutedState(last.seq, last.state_digest)
        return Replica(
            self.config,
            signer=self._scheme.signer(self.index),
            verifier=self._scheme.verifier,
            records=self.records,
            executed=executed,
        )

    def crash(self) -> None:
        self.up = False

    def restart(self) -> None:
        self.replica = self._make()
        self.up = True

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
        else:
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
        """Carry out one Ready: persist, then send (returned), then execute, then serve."""
        rd = self.replica.ready()
        if not rd:
            return rd, []
        for record in rd.persist:
            if record.value is None:
                self.records.pop(record.key, None)
            else:
                self.records[record.key] = record.value
        wires = [Wire(out.to, codec.encode_envelope(out.envelope), out.envelope) for out in rd.send]
        for committed in rd.execute:
            if committed.seq != len(self.log) + 1:
                raise AssertionError(
                    f"replica {self.index} executed seq {committed.seq} out of order"
                )
            self.log.append(committed)
            if self._on_execute is not None:
                self._on_execute(self, committed)
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
