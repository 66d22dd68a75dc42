"""Traces and the per-stage latency of batches, kept by the driver (the core stays pure).

**Trace propagation.** A vertex's trace starts at the gateway (its REST or gRPC
span) and reaches consensus in ``SubmitVertex``'s metadata; :meth:`BatchTraces.submitted`
keeps that span context with the pending vertex. A non-primary forwards the vertex
with its context (the envelope's ``trace_context``: ``traceparent`` for the
transport's spans, plus ``r<i>`` = the ``traceparent`` of the i-th forwarded
request), and the primary keeps it too. When the primary cuts a batch, a
``consensus.batch`` span starts as a child of the first sampled vertex's context,
linked to every other sampled vertex's; each of those vertices' traces gets a short
``consensus.batched`` span linked back to the batch, so the batch is found from
any of its vertices. Every PRE-PREPARE, PREPARE and COMMIT this replica sends goes
out inside a ``pbft.send`` span under its batch span, whose context the envelope
carries; the transports continue it across QUIC (``transport.send``,
``transport.receive``), and a backup starts its own ``consensus.batch`` span as a
child of the PRE-PREPARE it received. Under each batch span: the phases
(``pbft.pre_prepare``, ``pbft.prepare``, ``pbft.commit``, with the times the stage
histogram observes), ``consensus.persist`` (the synced state write, whose storage
``WriteState`` span is its child), ``consensus.execute`` with
``consensus.storage_commit`` (storage's ``CommitBatch``) and ``consensus.notify``.
Nothing of this runs for an unsampled batch beyond dictionary look-ups: envelopes
then carry no trace context at all.

**Stages** (``cretoai_consensus_stage_seconds{stage}``; one monotonic clock read per
boundary, shared with the spans' times):

- ``queue`` (per vertex submitted here): ``SubmitVertex`` hands it to the driver →
  the replica task admits it to the pool (the replica's inbox wait);
- ``batch_wait`` (per vertex submitted here): in the pool → in a cut batch, as this
  node sees it: the primary cuts it (the Ready carrying its PRE-PREPARE is drained),
  a backup receives that PRE-PREPARE (forwarding included);
- ``pre_prepare`` (per batch, on every node): batch cut (primary) or PRE-PREPARE
  received (backup) → this replica's PRE-PREPARE (primary) or PREPARE (backup) is
  sent, its record persisted first;
- ``prepare``: → this replica's COMMIT is sent (prepared: 2f matching PREPAREs, the
  record persisted);
- ``commit``: → committed-local (2f+1 COMMITs; the batch is in the Ready to execute);
- ``persist`` (per synced write, not per batch): the storage ``WriteState`` of a
  Ready's records plus the signing mark — a part of the phases above, shown alone;
- ``execute``: committed-local → storage ``CommitBatch`` is called (waiting for the
  Ready's persist and sends and for earlier batches, then the validity checks);
- ``storage_commit``: the ``CommitBatch`` call;
- ``notify``: ``CommitBatch`` answered → the batch is published to ``WatchFinalized``
  watchers (the gateway, which answers waiting clients).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext
from prometheus_client import Histogram

from cretoai.telemetry import format_traceparent, parse_traceparent, remote_parent
from services.consensus.core.messages import (
    Commit,
    Envelope,
    Prepare,
    PrePrepare,
    Request,
    RequestsEnvelope,
    SignedEnvelope,
)

STAGE = Histogram(
    "cretoai_consensus_stage_seconds",
    "Finality by stage (see docs/observability.md for the boundaries)",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STAGES = (
    "queue",
    "batch_wait",
    "pre_prepare",
    "prepare",
    "commit",
    "persist",
    "execute",
    "storage_commit",
    "notify",
)
_OBSERVE = {stage: STAGE.labels(stage).observe for stage in STAGES}

tracer = trace.get_tracer("cretoai.consensus")

#: Sampled request contexts carried per forwarded envelope (``r<i>`` keys).
FORWARD_CONTEXTS_MAX = 64
#: Links from one batch span to its other vertices.
LINKS_MAX = 128
#: Batches followed at once (more are not timed nor traced until older ones execute);
#: the window bounds them first, this bounds a window set larger than it.
BATCHES_MAX = 1024


def now_ns() -> int:
    return time.monotonic_ns()


@dataclass(slots=True)
class _Vertex:
    submitted: int = 0  # monotonic ns; 0: not submitted here
    pooled: int = 0
    context: SpanContext | None = None  # sampled contexts only


@dataclass(slots=True)
class _Batch:
    seq: int
    digest: bytes
    started: int
    pre_prepared: int = 0
    prepared: int = 0
    committed: int = 0
    span: Span | None = None
    parent: otel_context.Context | None = None
    attributes: dict[str, str | int] = field(default_factory=dict)


class BatchTraces:
    """What the driver knows of vertices and batches for spans and stage timings."""

    def __init__(
        self, replica_id: int, n: int, *, window: int = 256, max_vertices: int = 100_000
    ) -> None:
        self._me = replica_id
        self._n = n
        #: Batches beyond the last executed seq + ``window`` (the replica's watermark
        #: window) are not followed: the replica drops their PRE-PREPAREs too, and a
        #: Byzantine primary could otherwise hold every slot with seqs never executed.
        self._window = window
        self._offset = time.time_ns() - time.monotonic_ns()
        self._vertices: OrderedDict[bytes, _Vertex] = OrderedDict()
        self._max_vertices = max_vertices
        self._batches: dict[int, _Batch] = {}
        self._executed = 0
        self._executing = (0, 0)  # (seq, committed-local) of the batch being executed

    def _epoch(self, mono_ns: int) -> int:
        return mono_ns + self._offset

    # --- vertices -------------------------------------------------------------------

    def _vertex(self, request_hash: bytes) -> _Vertex:
        vertex = self._vertices.get(request_hash)
        if vertex is None:
            vertex = self._vertices[request_hash] = _Vertex()
            if len(self._vertices) > self._max_vertices:
                self._vertices.popitem(last=False)
        return vertex

    def submitted(self, request_hash: bytes) -> None:
        """A local client's vertex reaches the driver (inside ``SubmitVertex``'s span)."""
        vertex = self._vertex(request_hash)
        vertex.submitted = now_ns()
        span_context = trace.get_current_span().get_span_context()
        if span_context.trace_flags.sampled:
            vertex.context = span_context

    def pooled(self, request_hash: bytes, accepted: bool) -> None:
        """The replica task admitted (or refused) a local client's vertex."""
        vertex = self._vertices.get(request_hash)
        if vertex is None or not vertex.submitted or vertex.pooled:
            return
        if not accepted:
            del self._vertices[request_hash]
            return
        vertex.pooled = now_ns()
        _OBSERVE["queue"]((vertex.pooled - vertex.submitted) / 1e9)

    def forwarded(self, requests: tuple[Request, ...], carrier: Mapping[str, str]) -> None:
        """Requests forwarded by a peer: keep each one's trace context (``r<i>`` keys)."""
        for key, value in carrier.items():
            # ASCII digits only: "²".isdigit() is true, and int("²") raises
            if key[:1] != "r" or not (key[1:].isascii() and key[1:].isdigit()):
                continue
            index = int(key[1:])
            span_context = parse_traceparent(value)
            if index < len(requests) and span_context and span_context.trace_flags.sampled:
                vertex = self._vertex(requests[index].hash)
                if vertex.context is None:
                    vertex.context = span_context

    # --- batches --------------------------------------------------------------------

    def received(self, envelope: Envelope, arrived: int, carrier: Mapping[str, str]) -> None:
        """A verified envelope from a peer reaches the replica: a PRE-PREPARE starts its
        batch here (a backup), continuing the trace it carries."""
        if not isinstance(envelope, SignedEnvelope):
            return
        msg = envelope.signed.msg
        if not isinstance(msg, PrePrepare) or not self._in_window(msg.seq):
            return
        if envelope.signed.signer != msg.view % self._n:
            return  # not from its view's primary: the replica drops it too
        known = self._batches.get(msg.seq)
        if known is not None and known.digest == msg.digest:
            return
        parent = remote_parent(carrier) if carrier else None
        self._start(msg, arrived, parent, role="backup")

    def ready(self, send: tuple[Envelope, ...], execute_seqs: tuple[int, ...]) -> None:
        """A Ready is drained: own PRE-PREPAREs in it are batches cut now (primary); its
        batches to execute are committed-local now."""
        now = 0
        for envelope in send:
            if isinstance(envelope, SignedEnvelope) and envelope.signed.signer == self._me:
                msg = envelope.signed.msg
                if isinstance(msg, PrePrepare) and self._in_window(msg.seq):
                    known = self._batches.get(msg.seq)
                    if known is None or known.digest != msg.digest:
                        now = now or now_ns()
                        self._start(msg, now, None, role="primary")
        for seq in execute_seqs:
            batch = self._batches.get(seq)
            if batch is None or batch.committed:
                continue
            now = now or now_ns()
            batch.committed = now
            if batch.prepared:
                _OBSERVE["commit"]((now - batch.prepared) / 1e9)
                self._phase(batch, "pbft.commit", batch.prepared, now)

    def _in_window(self, seq: int) -> bool:
        return self._executed < seq <= self._executed + self._window

    def _start(
        self, msg: PrePrepare, started: int, parent: otel_context.Context | None, *, role: str
    ) -> None:
        old = self._batches.pop(msg.seq, None)
        if old is not None and old.span is not None:  # re-proposed in a new view
            old.span.set_attribute("pbft.superseded", True)
            old.span.end()
        if len(self._batches) >= BATCHES_MAX:
            return
        batch = _Batch(seq=msg.seq, digest=msg.digest, started=started)
        self._batches[msg.seq] = batch
        contexts: list[SpanContext] = []
        for request_hash in msg.request_hashes:
            vertex = self._vertices.pop(request_hash, None)
            if vertex is None:
                continue
            if vertex.pooled:
                _OBSERVE["batch_wait"]((started - vertex.pooled) / 1e9)
            if vertex.context is not None:
                contexts.append(vertex.context)
        if parent is None and contexts:  # the primary: under its first sampled vertex
            parent = trace.set_span_in_context(NonRecordingSpan(contexts.pop(0)))
        if parent is None:
            return
        own = trace.get_current_span(parent).get_span_context().trace_id
        contexts = [c for c in contexts if c.trace_id != own]  # already in the batch's trace
        batch.attributes = {
            "pbft.seq": msg.seq,
            "pbft.view": msg.view,
            "pbft.digest": msg.digest.hex()[:16],
            "pbft.requests": len(msg.request_hashes),
            "pbft.role": role,
        }
        span = tracer.start_span(
            "consensus.batch",
            context=parent,
            attributes=batch.attributes,
            links=[Link(c) for c in contexts[:LINKS_MAX]],
            start_time=self._epoch(started),
        )
        if not span.is_recording():
            return
        batch.span = span
        batch.parent = trace.set_span_in_context(span)
        link = [Link(span.get_span_context())]
        for span_context in contexts[:LINKS_MAX]:
            tracer.start_span(
                "consensus.batched",
                context=trace.set_span_in_context(NonRecordingSpan(span_context)),
                attributes={"pbft.seq": msg.seq},
                links=link,
                start_time=self._epoch(started),
            ).end(self._epoch(started))

    def _phase(self, batch: _Batch, name: str, start: int, end: int) -> None:
        if batch.parent is not None:
            tracer.start_span(
                name,
                context=batch.parent,
                attributes={"pbft.seq": batch.seq},
                start_time=self._epoch(start),
            ).end(self._epoch(end))

    def sending(self, envelope: Envelope, to: int | None) -> dict[str, str]:
        """An envelope goes out now: the trace context it carries (often none), and the
        phase it ends when it is this replica's own PRE-PREPARE, PREPARE or COMMIT."""
        if isinstance(envelope, RequestsEnvelope):
            return self._forward_carrier(envelope.requests)
        if not isinstance(envelope, SignedEnvelope) or envelope.signed.signer != self._me:
            return {}
        msg = envelope.signed.msg
        if not isinstance(msg, PrePrepare | Prepare | Commit):
            return {}
        batch = self._batches.get(msg.seq)
        if batch is None or batch.digest != msg.digest:
            return {}
        kind = "commit" if isinstance(msg, Commit) else "prepare"
        if isinstance(msg, PrePrepare):
            kind = "pre_prepare"
        if kind == "commit":
            if not batch.prepared:
                batch.prepared = now_ns()
                if batch.pre_prepared:
                    _OBSERVE["prepare"]((batch.prepared - batch.pre_prepared) / 1e9)
                    self._phase(batch, "pbft.prepare", batch.pre_prepared, batch.prepared)
        elif not batch.pre_prepared:
            batch.pre_prepared = now_ns()
            _OBSERVE["pre_prepare"]((batch.pre_prepared - batch.started) / 1e9)
            self._phase(batch, "pbft.pre_prepare", batch.started, batch.pre_prepared)
        if batch.parent is None:
            return {}
        span = tracer.start_span(
            "pbft.send",
            context=batch.parent,
            attributes={
                "pbft.type": kind,
                "pbft.seq": msg.seq,
                "pbft.to": -1 if to is None else to,
            },
        )
        span.end()
        return {"traceparent": format_traceparent(span.get_span_context())}

    def _forward_carrier(self, requests: tuple[Request, ...]) -> dict[str, str]:
        carrier: dict[str, str] = {}
        for index, request in enumerate(requests):
            vertex = self._vertices.get(request.hash)
            if vertex is not None and vertex.context is not None:
                value = format_traceparent(vertex.context)
                carrier.setdefault("traceparent", value)
                carrier[f"r{index}"] = value
                if len(carrier) > FORWARD_CONTEXTS_MAX:
                    break
        return carrier

    def persist_span(self, send: tuple[Envelope, ...]) -> Span | None:
        """A ``consensus.persist`` span for a synced write, under the batch it is for (the
        first traced one among the Ready's own messages); None when none is traced."""
        for envelope in send:
            if isinstance(envelope, SignedEnvelope) and envelope.signed.signer == self._me:
                msg = envelope.signed.msg
                if isinstance(msg, PrePrepare | Prepare | Commit):
                    batch = self._batches.get(msg.seq)
                    if batch is not None and batch.parent is not None:
                        return tracer.start_span("consensus.persist", context=batch.parent)
        return None

    @staticmethod
    def persisted(seconds: float) -> None:
        _OBSERVE["persist"](seconds)

    def execute_parent(self, seq: int) -> tuple[otel_context.Context | None, int]:
        """The context to execute batch ``seq`` in (None: untraced) and its execute
        stage's start (committed-local; now if this node never saw the batch's phases)."""
        batch = self._batches.get(seq)
        started = (batch.committed if batch is not None else 0) or now_ns()
        self._executing = (seq, started)
        return (batch.parent if batch is not None else None), started

    def epoch(self, mono_ns: int) -> int:
        """``mono_ns`` (monotonic) as a span time (ns since the epoch)."""
        return self._epoch(mono_ns)

    def executed(self, seq: int, storage_started: int, storage_done: int) -> None:
        """Batch ``seq`` is executed, stored and published now: its last stages; its span
        ends (and any older batch's still open here)."""
        published = now_ns()
        executing, committed = self._executing
        if storage_started and executing == seq:
            _OBSERVE["execute"]((storage_started - committed) / 1e9)
            _OBSERVE["storage_commit"]((storage_done - storage_started) / 1e9)
            _OBSERVE["notify"]((published - storage_done) / 1e9)
        self._executed = max(self._executed, seq)
        for stale in [s for s in self._batches if s <= seq]:
            batch = self._batches.pop(stale)
            if batch.span is None:
                continue
            if stale == seq:
                self._phase(batch, "consensus.notify", storage_done or published, published)
                batch.span.end(self._epoch(published))
            else:
                batch.span.set_attribute("pbft.abandoned", True)
                batch.span.end()
