"""The shared gRPC serving helper: health, reflection, metrics, ordered graceful shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cretoai.errors import ERROR_CODE_KEY
from cretoai.serving import (
    EVICTED,
    HANDLER_UNWIND_S,
    GrpcService,
    PerClientLimitInterceptor,
    Servicer,
    TracingInterceptor,
)
from cretoai.v1 import transport_pb2, transport_pb2_grpc
from tests.conftest import REPO
from tests.support.echo_service import SERVICE, echo_servicer


def _slow_request(ms: int) -> bytes:
    return ms.to_bytes(4, "big") + b"payload"


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def test_health_reflection_and_metrics() -> None:
    service = GrpcService(
        name="echo", bind="127.0.0.1:0", metrics_bind="127.0.0.1:0", servicers=[echo_servicer()]
    )
    await service.start()
    try:
        assert service.port > 0 and service.metrics_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def requests():
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names = []
            async for reply in stub.ServerReflectionInfo(requests()):
                names = [s.name for s in reply.list_services_response.service]
            assert SERVICE in names and "grpc.health.v1.Health" in names

            echo = channel.unary_unary(f"/{SERVICE}/Slow")
            assert await echo(_slow_request(1), timeout=5) == _slow_request(1)

        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5
            ).read()
        )
        text = body.decode()
        assert 'cretoai_grpc_server_handled_total{code="OK",method="/test.Echo/Slow"' in text
        assert 'cretoai_service_serving{service="echo"} 1.0' in text
    finally:
        await service.stop()


async def test_raised_errors_become_statuses_in_one_place() -> None:
    service = GrpcService(name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()])
    await service.start()
    expected = {
        b"not-found": (grpc.StatusCode.NOT_FOUND, "no such thing", None),
        b"bad-signature": (grpc.StatusCode.INVALID_ARGUMENT, "signature invalid", "bad_signature"),
        b"overloaded": (grpc.StatusCode.RESOURCE_EXHAUSTED, "too much", None),
        b"bug": (grpc.StatusCode.INTERNAL, "internal error: ValueError: a bug", None),
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            fail = channel.unary_unary(f"/{SERVICE}/Fail")
            fail_later = channel.unary_stream(f"/{SERVICE}/FailLater")
            for request, (code, details, error_code) in expected.items():
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await fail(request, timeout=5)
                assert (info.value.code(), info.value.details()) == (code, details)
                trailing = dict(info.value.trailing_metadata() or ())
                assert trailing.get(ERROR_CODE_KEY) == error_code
                # a stream fails the same way, after what it sent
                call = fail_later(request, timeout=5)
                assert await call.read() == request
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                assert (info.value.code(), info.value.details()) == (code, details)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await fail(b"abort", timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details() == "aborted by the servicer"
    finally:
        await service.stop()


def _echo_recording(events: list[str]) -> GrpcService:
    """The echo service, its handlers and its cleanup appending to ``events``."""

    async def cleanup() -> None:
        events.append("cleanup")

    return GrpcService(
        name="echo",
        bind="127.0.0.1:0",
        servicers=[echo_servicer(events)],
        grace=5.0,
        cleanup=[cleanup],
    )


async def test_graceful_shutdown_drains_then_cleans_up() -> None:
    events: list[str] = []
    service = _echo_recording(events)
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Slow")
        in_flight = asyncio.ensure_future(echo(_slow_request(400), timeout=10))
        await asyncio.sleep(0.1)  # let the call reach the server before stopping
        await service.stop()
        assert await in_flight == _slow_request(400)
        assert events == ["handled", "cleanup"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await echo(_slow_request(1), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_waits_for_handlers_that_outlive_their_status() -> None:
    """gRPC's core counts a call done once its status is sent (grpc/grpc#37239); a
    handler may still be running then. stop() must not return (and the process end)
    before it finishes: the loop would cancel it and gRPC log a traceback."""
    events: list[str] = []
    service = _echo_recording(events)
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        abort = channel.unary_unary(f"/{SERVICE}/AbortThenFinish")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await abort(_slow_request(300), timeout=5)
        assert err.value.code() == grpc.StatusCode.ABORTED
        await service.stop()
    assert events == ["finished after abort", "cleanup"]


async def test_a_handler_that_does_not_finish_cannot_hold_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler still busy long after its status went out is waited for within the
    grace (at least HANDLER_UNWIND_S), not for ever: stop goes on, and says so."""
    events: list[str] = []
    service = _echo_recording(events)
    service.grace = 0.2
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        abort = channel.unary_unary(f"/{SERVICE}/AbortThenFinish")
        with pytest.raises(grpc.aio.AioRpcError):
            await abort(_slow_request(30_000), timeout=5)  # 30 s in its finally
        started = time.monotonic()
        await service.stop()
        took = time.monotonic() - started
    assert HANDLER_UNWIND_S <= took < HANDLER_UNWIND_S + 5
    assert events == ["cleanup"]  # went on without the handler
    assert "handlers still running after the grace period" in caplog.text


async def test_not_serving_during_drain() -> None:
    service = GrpcService(name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()], grace=3.0)
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Slow")
        in_flight = asyncio.ensure_future(echo(_slow_request(600), timeout=10))
        await asyncio.sleep(0.1)
        await service.health.enter_graceful_shutdown()
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        await service.stop()
        assert await in_flight == _slow_request(600)


async def test_port_in_use_is_a_clear_error() -> None:
    first = GrpcService(name="a", bind="127.0.0.1:0", servicers=[])
    await first.start()
    try:
        second = GrpcService(name="b", bind=f"127.0.0.1:{first.port}", servicers=[])
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await second.start()
    finally:
        await first.stop()


async def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    """It named neither the service nor the setting: ``[Errno 98] Address already in use``."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        service = GrpcService(
            name="storage", bind="127.0.0.1:0", metrics_bind=f"127.0.0.1:{port}", servicers=[]
        )
        with pytest.raises(OSError, match=rf"storage: cannot serve metrics on 127.0.0.1:{port}"):
            await service.start()
        assert service._server is None  # the gRPC server it started was stopped again


@pytest.mark.parametrize(
    ("sig", "call"),
    [
        (signal.SIGTERM, "in flight"),
        (signal.SIGINT, "in flight"),
        # A handler still in its finally after its status went out (grpc/grpc#37239).
        (signal.SIGTERM, "outlives its status"),
    ],
)
def test_process_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals, call: str) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.echo_service", str(port_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            if call == "in flight":
                echo = channel.unary_unary(f"/{SERVICE}/Slow")
                future = echo.future(_slow_request(500), timeout=10)
                time.sleep(0.1)
                proc.send_signal(sig)
                assert future.result() == _slow_request(500)
            else:
                abort = channel.unary_unary(f"/{SERVICE}/AbortThenFinish")
                with pytest.raises(grpc.RpcError) as err:
                    abort(_slow_request(400), timeout=5)
                assert err.value.code() == grpc.StatusCode.ABORTED
                proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "cleanup-ran" in stdout
    if call == "outlives its status":  # cleanup came after the handler's finally
        assert "cleanup-ran after: finished after abort" in stdout
    lines = stderr.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if marker in line)
        for marker in ('msg="shutting down"', "msg=stopped")
    ]
    assert order == sorted(order)
    assert "Traceback" not in stderr


async def test_server_span_continues_the_callers_trace() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    service = GrpcService(name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()])
    await service.start()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            echo = channel.unary_unary(f"/{SERVICE}/Slow")
            await echo(_slow_request(1), metadata=(("traceparent", traceparent),), timeout=5)
    finally:
        await service.stop()
    spans = [s for s in exporter.get_finished_spans() if s.name == f"/{SERVICE}/Slow"]
    assert len(spans) == 1
    span = spans[0]
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == trace_id
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == "OK"


async def test_service_channel_propagates_the_current_span() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cretoai.channels import service_channel

    service = GrpcService(name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()])
    await service.start()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with service_channel(f"127.0.0.1:{service.port}") as channel:
            echo = channel.unary_unary(f"/{SERVICE}/Slow")
            # under a sampled remote parent: the client span is recorded whatever the
            # process's sampling ratio (the default samples 1 trace in 100)
            sampled = trace.set_span_in_context(
                trace.NonRecordingSpan(
                    trace.SpanContext(
                        0x4BF92F3577B34DA6A3CE929D0E0E4736,
                        0x00F067AA0BA902B7,
                        is_remote=True,
                        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
                    )
                )
            )
            with trace.get_tracer("test").start_as_current_span(
                "client", context=sampled
            ) as client_span:
                await echo(_slow_request(1), timeout=5)
    finally:
        await service.stop()
    server = next(s for s in exporter.get_finished_spans() if s.name == f"/{SERVICE}/Slow")
    assert server.parent is not None
    assert server.parent.span_id == client_span.get_span_context().span_id


class _Peers(transport_pb2_grpc.TransportServicer):
    """A servicer of a real contract, for requests that are not its messages."""

    async def ListPeers(self, request: Any, context: Any) -> transport_pb2.ListPeersResponse:
        return transport_pb2.ListPeersResponse()

    async def ExchangeBatches(self, request_iterator: Any, context: Any) -> Any:
        async for batch in request_iterator:
            yield batch


async def test_a_request_that_is_not_the_methods_message_is_invalid_argument(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc.aio decodes a request before any handler: a DecodeError there was UNKNOWN,
    with an error log line per call. It is the caller's fault: INVALID_ARGUMENT."""
    name = transport_pb2.DESCRIPTOR.services_by_name["Transport"].full_name
    servicer = Servicer(
        name=name,
        register=lambda server: transport_pb2_grpc.add_TransportServicer_to_server(
            _Peers(), server
        ),
    )
    service = GrpcService(name="peers", bind="127.0.0.1:0", servicers=[servicer])
    await service.start()
    garbage = b"\xff\xff\xff\xff"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            list_peers = channel.unary_unary(f"/{name}/ListPeers")
            with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as info:
                await list_peers(garbage, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in (info.value.details() or "")
            assert dict(info.value.trailing_metadata() or ()).get(ERROR_CODE_KEY) == "bad_request"
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert await list_peers(b"", timeout=5) == b""  # still serving

            # a client stream: the messages before the bad one are served, then it fails
            exchange = channel.stream_stream(f"/{name}/ExchangeBatches")
            good = transport_pb2.EnvelopeBatch(
                envelopes=[transport_pb2.Envelope(payload=b"x")]
            ).SerializeToString()
            call = exchange(timeout=5)
            await call.write(good)
            assert await call.read() == good
            await call.write(garbage)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await service.stop()


def test_only_a_callers_traceparent_is_continued() -> None:
    """A caller's ``tracestate`` and ``baggage`` are not carried on: every internal call
    made for it would repeat them, and a client's 8-KB ``tracestate`` pushed the internal
    calls of a combined submission over gRPC's 8-KiB metadata limit (other clients'
    vertices refused as overloaded)."""
    from opentelemetry import trace

    from cretoai.telemetry import extract_context, inject_context

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    carrier = {
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "tracestate": ",".join(f"k{i}={'v' * 240}" for i in range(32)),  # 8 KB, valid
        "baggage": "user=" + "x" * 4000,
    }
    context = extract_context(carrier)
    with trace.get_tracer("test").start_as_current_span("gateway", context=context):  # type: ignore[arg-type]
        out = inject_context()
    assert set(out) == {"traceparent"}
    assert out["traceparent"].split("-")[1] == trace_id  # the same trace goes on
    assert trace.get_current_span(extract_context({"traceparent": "garbage"})) is trace.INVALID_SPAN  # type: ignore[arg-type]


async def test_calls_in_progress_are_bounded_per_client_and_released_however_they_end() -> None:
    """PerClientLimitInterceptor on a real server. Here a client is a connection (the peer's
    whole address): one channel's second call in progress is RESOURCE_EXHAUSTED at once,
    another channel's is served; every call gives its slot back when it ends, whether it
    answered, failed (unary or streaming) or was refused."""
    refused: list[str] = []
    limit = PerClientLimitInterceptor(
        1, lambda peer: peer, setting="test.per_client", on_refused=lambda: refused.append("x")
    )
    service = GrpcService(
        name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()], interceptors=[limit]
    )
    await service.start()
    target = f"127.0.0.1:{service.port}"
    try:
        own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each, not a shared one
        async with (
            grpc.aio.insecure_channel(target, options=own) as a,
            grpc.aio.insecure_channel(target, options=own) as b,
        ):
            slow_a = a.unary_unary(f"/{SERVICE}/Slow")
            waiting = asyncio.ensure_future(slow_a(_slow_request(3000), timeout=10))
            while sum(limit.in_progress.values()) < 1:  # bounded by the call's own timeout
                assert not waiting.done(), await waiting
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await slow_a(_slow_request(1), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (err.value.details() or "").startswith(
                "this client has 1 calls in progress (test.per_client)"
            )
            assert refused == ["x"]
            assert await _health(a) == health_pb2.HealthCheckResponse.SERVING  # exempt
            slow_b, fail_b = b.unary_unary(f"/{SERVICE}/Slow"), b.unary_unary(f"/{SERVICE}/Fail")
            assert await slow_b(_slow_request(1), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await fail_b(b"bug", timeout=5)
            fail_later = b.unary_stream(f"/{SERVICE}/FailLater")
            stream = fail_later(b"not-found", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in stream:
                    pass
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            deadline = time.monotonic() + 5
            while limit.in_progress:  # the cancelled call's handler unwinds on the server
                assert time.monotonic() < deadline, dict(limit.in_progress)
                await asyncio.sleep(0.01)
            assert await slow_a(_slow_request(1), timeout=5)
            assert not limit.in_progress
    finally:
        await service.stop()


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    from cretoai.telemetry import TokenBucket

    now = [100.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 60  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_a_clients_request_for_a_trace_is_honoured_within_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's sampled ``traceparent`` used to have every request traced (60-100 spans
    each across the cluster): any client could multiply tracing's cost by 1/ratio. Within
    the budget it is honoured (one asking for a trace of a request gets it); beyond, only
    at the sampling ratio. The trace id goes on either way; an unsampled flag stays."""
    from opentelemetry import trace

    from cretoai.telemetry import TokenBucket, extract_client_context

    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sampled = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}

    def parent(carrier: dict[str, str], ratio: float, budget: TokenBucket) -> Any:
        context = extract_client_context(carrier, ratio, budget)
        return trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]

    budget = TokenBucket(0.0, 2, clock=lambda: 0.0)  # two, never refilled
    got = [parent(sampled, 0.0, budget) for _ in range(5)]
    assert [c.trace_flags.sampled for c in got] == [True, True, False, False, False]
    assert {f"{c.trace_id:032x}" for c in got} == {trace_id}  # the trace goes on
    assert all(parent(sampled, 1.0, budget).trace_flags.sampled for _ in range(20))
    unsampled = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"}
    assert not parent(unsampled, 1.0, TokenBucket(1.0, 5)).trace_flags.sampled
    assert not parent({"traceparent": "garbage"}, 1.0, budget).is_valid
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")  # the operator's own sampler
    assert parent(sampled, 0.0, budget).trace_flags.sampled


async def test_a_public_servers_clients_cannot_have_every_call_traced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A public GrpcService (the gateway's) records a client's sampled calls only within
    the budget and the ratio (0 here); an internal one follows its caller (the node's own
    services), as one trace must follow a vertex across them."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cretoai import telemetry

    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setattr(telemetry, "_client_traces", telemetry.TokenBucket(0.0, 3))
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorded = {}
    for public in (True, False):
        service = GrpcService(
            name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()], public=public,
            sampling_ratio=0.0,
        )  # fmt: skip
        await service.start()
        exporter.clear()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                echo = channel.unary_unary(f"/{SERVICE}/Slow")
                for _ in range(10):
                    metadata = (("traceparent", f"00-{os.urandom(16).hex()}-{'1' * 16}-01"),)
                    await echo(_slow_request(0), metadata=metadata, timeout=5)
        finally:
            await service.stop()
        recorded[public] = len(
            [s for s in exporter.get_finished_spans() if s.name == f"/{SERVICE}/Slow"]
        )
    assert recorded == {True: 3, False: 10}


async def test_a_connection_that_never_handshakes_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC held a connection that never began its TLS handshake for 120 s, so any local
    process could keep one descriptor of an internal service per connection it opened.
    Every service closes it after HANDSHAKE_TIMEOUT_MS (1 s here); the node's own callers
    are unaffected."""
    from cretoai import serving
    from cretoai.tls import generate_node_tls, load_internal_tls

    monkeypatch.setattr(serving, "HANDSHAKE_TIMEOUT_MS", 1000)
    tls = load_internal_tls(*generate_node_tls(tmp_path / "tls", "node1"))
    service = GrpcService(name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()], tls=tls)
    await service.start()
    try:
        silent = socket.create_connection(("127.0.0.1", service.port), timeout=30)
        half = socket.create_connection(("127.0.0.1", service.port), timeout=30)
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
        try:
            for sock in (silent, half):  # EOF from the server, not our own 30-s timeout
                assert await asyncio.to_thread(sock.recv, 1) == b""
        finally:
            silent.close()
            half.close()
        options = [*tls.channel_options()]
        target = f"127.0.0.1:{service.port}"
        async with grpc.aio.secure_channel(target, tls.channel_credentials(), options) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await service.stop()


def test_a_call_ending_in_another_context_than_it_began_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream's handler is an async generator that gRPC may close from another task
    (a client's reset): its span's context was then detached in another Context than
    the one it was attached in, and OpenTelemetry logged "Failed to detach context" with
    a traceback at error level, which any client could repeat (audit, 2026-12-04)."""
    interceptor = TracingInterceptor()
    began_elsewhere = contextvars.copy_context().run(interceptor.begin, "/svc/Watch", {})
    assert began_elsewhere is not None
    with caplog.at_level(logging.DEBUG):
        interceptor.end(began_elsewhere, "/svc/Watch", "CANCELLED", None)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not began_elsewhere[0].is_recording()  # the span still ended
    # in the same Context: detached as usual
    state = interceptor.begin("/svc/Get", {})
    interceptor.end(state, "/svc/Get", "OK", None)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_total_of_calls_is_shared_fairly_between_clients() -> None:
    """PerClientLimitInterceptor with ``total`` on a real server (a client is a connection
    here): with every call slot taken by one client, a call of a client holding two
    fewer ends that client's oldest call (RESOURCE_EXHAUSTED, EVICTED) and is served;
    the first client's next call is refused, and so is the second client's once they
    are one apart. Without it four gateway clients at 8 calls kept every other out."""
    refused: list[str] = []
    evicted: list[str] = []
    limit = PerClientLimitInterceptor(
        3,
        lambda peer: peer,
        setting="test.per_client",
        total=3,
        total_setting="test.total",
        on_refused_total=lambda: refused.append("total"),
        on_evicted=lambda: evicted.append("x"),
    )
    service = GrpcService(
        name="echo", bind="127.0.0.1:0", servicers=[echo_servicer()], interceptors=[limit]
    )
    await service.start()
    target = f"127.0.0.1:{service.port}"
    try:
        own = [("grpc.use_local_subchannel_pool", 1)]
        async with (
            grpc.aio.insecure_channel(target, options=own) as a,
            grpc.aio.insecure_channel(target, options=own) as b,
        ):
            slow_a, slow_b = a.unary_unary(f"/{SERVICE}/Slow"), b.unary_unary(f"/{SERVICE}/Slow")
            held = []
            for i in range(3):  # one after the other: the first is the oldest
                held.append(asyncio.ensure_future(slow_a(_slow_request(8000), timeout=10)))
                while sum(limit.in_progress.values()) < i + 1:
                    assert not held[-1].done(), await held[-1]
                    await asyncio.sleep(0.01)
            newcomer = asyncio.ensure_future(slow_b(_slow_request(300), timeout=10))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await held[0]
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.details() == EVICTED
            assert evicted == ["x"]
            assert await newcomer  # served
            assert not held[1].done() and not held[2].done()
            newcomer = asyncio.ensure_future(slow_b(_slow_request(8000), timeout=10))
            while sum(limit.in_progress.values()) < 3:  # all 3 taken again: a 2, b 1
                assert not newcomer.done(), await newcomer
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await slow_a(_slow_request(1), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (err.value.details() or "").startswith("3 calls are in progress here")
            assert refused == ["total"]
            with pytest.raises(grpc.aio.AioRpcError):  # b holds 1 against a's 2: fair
                await slow_b(_slow_request(1), timeout=5)
            assert refused == ["total", "total"] and evicted == ["x"]
            for call in (*held[1:], newcomer):
                call.cancel()
            deadline = time.monotonic() + 5
            while limit.in_progress:
                assert time.monotonic() < deadline, dict(limit.in_progress)
                await asyncio.sleep(0.01)
    finally:
        await service.stop()
