"""services/consensus/tracing.py: which events observe which stage, forwarded contexts,
and peers' garbage trace contexts (ignored)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY

from cretoai.telemetry import format_traceparent, parse_traceparent
from services.consensus.core.messages import (
    Commit,
    Message,
    Prepare,
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
)
from services.consensus.tracing import BATCHES_MAX, STAGES, BatchTraces, now_ns

H1, H2 = b"\x01" * 32, b"\x02" * 32
DIGEST = b"\xdd" * 32
SAMPLED = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


def counts() -> dict[str, float]:
    return {
        s: REGISTRY.get_sample_value("cretoai_consensus_stage_seconds_count", {"stage": s}) or 0.0
        for s in STAGES
    }


def signed(msg: Message, signer: int) -> SignedEnvelope:
    return SignedEnvelope(Signed(body=b"", signature=b"", signer=signer, msg=msg))


def observed(before: dict[str, float]) -> dict[str, float]:
    return {s: n - before[s] for s, n in counts().items() if n != before[s]}


def test_a_batch_cut_here_observes_every_stage_once() -> None:
    traces = BatchTraces(replica_id=0, n=4)
    before = counts()
    traces.submitted(H1)
    traces.pooled(H1, accepted=True)
    assert observed(before) == {"queue": 1}
    pre_prepare = signed(PrePrepare(view=0, seq=1, digest=DIGEST, request_hashes=(H1,)), 0)
    traces.ready((pre_prepare,), ())
    assert observed(before) == {"queue": 1, "batch_wait": 1}
    assert traces.sending(pre_prepare, None) == {}  # untraced: no context on the wire
    traces.sending(pre_prepare, None)  # sent again (a retransmission): not observed twice
    traces.sending(signed(Prepare(view=0, seq=1, digest=DIGEST), 2), None)  # not ours
    assert observed(before)["pre_prepare"] == 1
    traces.sending(signed(Commit(view=0, seq=1, digest=DIGEST), 0), None)
    assert observed(before)["prepare"] == 1
    traces.ready((), (1,))
    assert observed(before)["commit"] == 1
    BatchTraces.persisted(0.001)
    parent, committed = traces.execute_parent(1)
    assert parent is None and committed > 0
    start = now_ns()
    traces.executed(1, start, start + 1_000_000)
    assert observed(before) == {s: 1 for s in STAGES}


def test_a_backup_starts_at_the_pre_prepare_and_ignores_a_garbage_context() -> None:
    traces = BatchTraces(replica_id=1, n=4)
    before = counts()
    pre_prepare = signed(PrePrepare(view=0, seq=1, digest=DIGEST, request_hashes=(H1,)), 0)
    for garbage in ({"traceparent": "zz"}, {"traceparent": "00-" + "f" * 5000}, {"x": "y"}):
        traces.received(pre_prepare, now_ns(), garbage)
    traces.sending(signed(Prepare(view=0, seq=1, digest=DIGEST), 1), None)
    assert observed(before) == {"pre_prepare": 1}
    # a refused vertex leaves nothing behind; one never pooled observes no queue time
    traces.submitted(H2)
    traces.pooled(H2, accepted=False)
    traces.pooled(H2, accepted=True)
    assert observed(before) == {"pre_prepare": 1}


def test_forwarded_requests_carry_each_sampled_vertex_context() -> None:
    backup, primary = BatchTraces(replica_id=1, n=4), BatchTraces(replica_id=0, n=4)
    with trace.use_span(NonRecordingSpan(SAMPLED)):
        backup.submitted(H2)
    backup.submitted(H1)  # no span: not sampled
    requests = (Request(hash=H1, body=b"a"), Request(hash=H2, body=b"b"))
    carrier = backup.sending(RequestsEnvelope(requests), 0)
    assert carrier == {"traceparent": format_traceparent(SAMPLED), "r1": carrier["traceparent"]}
    parsed = parse_traceparent(carrier["r1"])
    assert parsed is not None and parsed.trace_id == SAMPLED.trace_id
    # the primary keeps them; garbage keys and indexes out of range are ignored
    primary.forwarded(
        requests, {**carrier, "r9": carrier["r1"], "r0": "garbage", "rx": "1", "r": ""}
    )
    assert primary.sending(RequestsEnvelope(requests), 1) == carrier


def test_traceparent_parsing_is_strict() -> None:
    good = format_traceparent(SAMPLED)
    assert parse_traceparent(good) == SAMPLED
    for bad in (
        None,
        "",
        good[:-1],
        good + "0",
        good.upper(),
        "01" + good[2:],
        good.replace("-", "_"),
    ):
        assert parse_traceparent(bad) is None, bad


def test_pre_prepares_not_from_the_primary_or_beyond_the_bound_are_not_followed() -> None:
    traces = BatchTraces(replica_id=1, n=4)
    before = counts()
    forged = signed(PrePrepare(view=0, seq=1, digest=DIGEST, request_hashes=()), 2)
    traces.received(forged, now_ns(), {})
    traces.sending(signed(Prepare(view=0, seq=1, digest=DIGEST), 1), None)
    assert observed(before) == {}
    for seq in range(2, 2 + BATCHES_MAX + 10):  # a flood of (validly signed) PRE-PREPAREs
        pre_prepare = signed(PrePrepare(view=0, seq=seq, digest=DIGEST, request_hashes=()), 0)
        traces.received(pre_prepare, now_ns(), {})
    last = 1 + BATCHES_MAX + 10
    traces.sending(signed(Prepare(view=0, seq=last, digest=DIGEST), 1), None)
    assert observed(before) == {}
    traces.sending(signed(Prepare(view=0, seq=2, digest=DIGEST), 1), None)
    assert observed(before) == {"pre_prepare": 1}


def test_a_byzantine_primary_cannot_take_every_slot_with_seqs_never_executed() -> None:
    traces = BatchTraces(replica_id=1, n=4, window=256)
    before = counts()
    for seq in range(1_000, 1_000 + 2 * BATCHES_MAX):  # validly signed, far beyond the window
        pre_prepare = signed(PrePrepare(view=0, seq=seq, digest=DIGEST, request_hashes=()), 0)
        traces.received(pre_prepare, now_ns(), {})
    traces.sending(signed(Prepare(view=0, seq=1_000, digest=DIGEST), 1), None)
    assert observed(before) == {}
    # the batches the cluster does execute are still followed
    traces.received(
        signed(PrePrepare(view=0, seq=1, digest=DIGEST, request_hashes=()), 0), now_ns(), {}
    )
    traces.sending(signed(Prepare(view=0, seq=1, digest=DIGEST), 1), None)
    assert observed(before) == {"pre_prepare": 1}
