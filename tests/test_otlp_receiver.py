"""devkit.otlp_receiver: the real OTel SDK exporter sends to it; its HTTP query side."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from devkit.otlp_receiver import OtlpReceiver, ReceivedSpan, parser, serve_query
from devkit.ports import free_tcp_port

from .conftest import REPO


def _provider(endpoint: str, service: str = "cretoai-test", node: str = "node9") -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": node})
    )
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True))
    )
    return provider


def test_receives_spans_with_parents_links_attributes_and_resource(receiver: OtlpReceiver) -> None:
    provider = _provider(receiver.endpoint)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("other") as other:
        pass
    other_ctx = other.get_span_context()
    with (
        tracer.start_as_current_span("root", attributes={"k": "v", "n": 3, "b": True}) as root,
        tracer.start_as_current_span(
            "child", links=[trace.Link(other_ctx)], attributes={"f": 1.5}
        ) as child,
    ):
        pass
    provider.shutdown()

    spans = receiver.wait_for(lambda s: len(s) == 3, timeout=10)
    by_name = {s.name: s for s in spans}
    r, c = by_name["root"], by_name["child"]
    assert r.trace_id == format(root.get_span_context().trace_id, "032x")
    assert r.span_id == format(root.get_span_context().span_id, "016x")
    assert r.parent_span_id == ""
    assert c.parent_span_id == r.span_id and c.trace_id == r.trace_id
    assert c.span_id == format(child.get_span_context().span_id, "016x")
    assert c.links == ((format(other_ctx.trace_id, "032x"), format(other_ctx.span_id, "016x")),)
    assert r.attributes == {"k": "v", "n": 3, "b": True}
    assert c.attributes == {"f": 1.5}
    assert (r.service_name, r.node) == ("cretoai-test", "node9")
    assert 0 < r.start_ns <= c.start_ns <= c.end_ns <= r.end_ns


def test_wait_for_is_woken_by_an_export(receiver: OtlpReceiver) -> None:
    provider = _provider(receiver.endpoint)
    got: list[list[ReceivedSpan]] = []
    waiter = threading.Thread(
        target=lambda: got.append(receiver.wait_for(lambda s: any(x.name == "late" for x in s), 10))
    )
    waiter.start()
    with provider.get_tracer("t").start_as_current_span("late"):
        pass
    waiter.join(timeout=15)
    provider.shutdown()
    assert got and [s.name for s in got[0]] == ["late"]


def test_wait_for_times_out_with_a_summary(receiver: OtlpReceiver) -> None:
    provider = _provider(receiver.endpoint)
    with provider.get_tracer("t").start_as_current_span("only"):
        pass
    provider.shutdown()
    receiver.wait_for(lambda s: len(s) == 1, timeout=10)
    with pytest.raises(TimeoutError, match=r"1 spans in 1 traces: cretoai-test/only x1"):
        receiver.wait_for(lambda s: len(s) > 1, timeout=0.2)


def test_memory_is_bounded() -> None:
    r = OtlpReceiver(max_spans=5)
    r.start()
    try:
        provider = _provider(r.endpoint)
        tracer = provider.get_tracer("t")
        for i in range(8):
            with tracer.start_as_current_span(f"s{i}"):
                pass
        provider.shutdown()
        spans = r.wait_for(lambda s: bool(s) and s[-1].name == "s7", timeout=10)
        assert [s.name for s in spans] == ["s3", "s4", "s5", "s6", "s7"]
    finally:
        r.stop()


def test_http_query_serves_spans_and_health(receiver: OtlpReceiver) -> None:
    http = serve_query(receiver, "127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{http.server_address[1]}"
        provider = _provider(receiver.endpoint)
        with provider.get_tracer("t").start_as_current_span("q", attributes={"a": 1}):
            pass
        provider.shutdown()
        receiver.wait_for(lambda s: len(s) == 1, timeout=10)
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
            assert json.load(resp) == {"status": "ok"}
        with urllib.request.urlopen(f"{base}/spans", timeout=5) as resp:
            body = json.load(resp)
        [span] = body["spans"]
        assert span["name"] == "q" and span["attributes"] == {"a": 1}
        assert span["service_name"] == "cretoai-test" and span["node"] == "node9"
        assert span["links"] == [] and len(span["trace_id"]) == 32
    finally:
        http.shutdown()
        http.server_close()


def _cli() -> tuple[subprocess.Popen[str], int, int]:
    """``python -m devkit.otlp_receiver`` on free loopback ports (its process, and them)."""
    grpc_port, http_port = free_tcp_port(), free_tcp_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.otlp_receiver",
            "--listen",
            f"127.0.0.1:{grpc_port}",
            "--query",
            f"127.0.0.1:{http_port}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, grpc_port, http_port


@pytest.mark.slow
def test_cli_serves_and_stops_on_sigterm() -> None:
    proc, grpc_port, http_port = _cli()
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once both sides listen
        assert f":{grpc_port}" in banner and f":{http_port}" in banner
        provider = _provider(f"http://127.0.0.1:{grpc_port}")
        with provider.get_tracer("t").start_as_current_span("via-cli"):
            pass
        provider.shutdown()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/spans", timeout=5) as resp:
            assert [s["name"] for s in json.load(resp)["spans"]] == ["via-cli"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="SYS_tgkill is x86-64's number here")
def test_cli_stops_on_a_sigterm_that_another_of_its_threads_receives() -> None:
    """The kernel may deliver a process's SIGTERM to any of its threads that does not block
    it (gRPC's, the HTTP server's): the main thread must still notice it. An untimed
    ``Event.wait()`` slept through it until the container's SIGKILL (CI: exit 137)."""
    proc, _, _ = _cli()
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # serving
        others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
        assert others, "the receiver runs threads besides its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        tgkill = 234  # x86-64's SYS_tgkill: a signal for one thread of the process
        assert libc.syscall(tgkill, proc.pid, others[0], int(signal.SIGTERM)) == 0
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_command_listens_on_loopback_unless_told_otherwise() -> None:
    """The network rule: a default never exposes a port beyond the host (compose's
    ``jaeger`` passes 0.0.0.0 itself, tests/deployment/compose.otlp-receiver.yaml)."""
    defaults = parser().parse_args([])
    assert defaults.listen.rsplit(":", 1)[0] == "127.0.0.1"
    assert defaults.query.rsplit(":", 1)[0] == "127.0.0.1"
    override = (REPO / "tests/deployment/compose.otlp-receiver.yaml").read_text()
    assert '--listen, "0.0.0.0:4317", --query, "0.0.0.0:16686"' in override
