"""A small OTLP/gRPC trace receiver for tests and compose (in place of Jaeger).

It accepts ``TraceService.Export`` calls, keeps the last ``max_spans`` spans in
memory and lets tests wait for spans (``wait_for``, woken on every export). As a
command it also serves ``GET /spans`` (``{"spans": [...]}``) and ``GET /healthz``
over HTTP::

    python -m devkit.otlp_receiver [--listen 127.0.0.1:4317] [--query 127.0.0.1:16686]

Both default to loopback; a container that others reach (compose's ``jaeger``) passes
``0.0.0.0`` explicitly.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

AttrValue = str | int | float | bool

#: The resource attribute that names the node (set by ``cretoai.telemetry``).
NODE_ATTRIBUTE = "service.instance.id"


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, flattened."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service_name: str
    node: str
    attributes: dict[str, AttrValue]
    links: tuple[tuple[str, str], ...]
    start_ns: int
    end_ns: int

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["links"] = [list(link) for link in self.links]
        return out


def _value(v: common_pb2.AnyValue) -> AttrValue:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "array_value":
        return json.dumps([_value(x) for x in v.array_value.values])
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return ""


def _attrs(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, AttrValue]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """The spans of one export request."""
    out: list[ReceivedSpan] = []
    for rs in request.resource_spans:
        res = _attrs(rs.resource.attributes)
        service = str(res.get("service.name", ""))
        node = str(res.get(NODE_ATTRIBUTE, ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        service_name=service,
                        node=node,
                        attributes=_attrs(s.attributes),
                        links=tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return out


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._add(decode(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC trace endpoint (plaintext) that keeps what it receives."""

    def __init__(self, listen: str = "127.0.0.1:0", *, max_spans: int = 100_000) -> None:
        self._listen = listen
        self._spans: collections.deque[ReceivedSpan] = collections.deque(maxlen=max_spans)
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self._port = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """What an exporter dials (``http://127.0.0.1:<port>`` for a loopback listener)."""
        host = self._listen.rpartition(":")[0].strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), server
        )
        port = server.add_insecure_port(self._listen)
        if port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        server.start()
        self._server, self._port = server, port

    def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of the spans received so far (oldest first)."""
        with self._cond:
            return list(self._spans)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float
    ) -> list[ReceivedSpan]:
        """Wait until ``predicate(spans)`` holds; return that snapshot, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._spans)
                if predicate(snapshot):
                    return snapshot
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no match after {timeout:.1f}s: {summary(snapshot)}")
                self._cond.wait(left)


def summary(spans: list[ReceivedSpan]) -> str:
    """A one-line count of spans by service and name."""
    counts = collections.Counter(f"{s.service_name}/{s.name}" for s in spans)
    traces = len({s.trace_id for s in spans})
    parts = ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))
    return f"{len(spans)} spans in {traces} traces: {parts or 'none'}"


def _query_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, {"status": "ok"})
            elif path == "/spans":
                self._send(200, {"spans": [s.to_json() for s in receiver.spans()]})
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve_query(receiver: OtlpReceiver, listen: str) -> ThreadingHTTPServer:
    """Serve ``GET /spans`` and ``GET /healthz`` on ``host:port`` in a daemon thread."""
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer(
        (host.strip("[]") or "127.0.0.1", int(port)), _query_handler(receiver)
    )
    threading.Thread(target=server.serve_forever, name="otlp-query", daemon=True).start()
    return server


#: How often the main thread wakes to run a signal handler another thread received.
STOP_POLL_S = 0.2


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m devkit.otlp_receiver", description=__doc__)
    cli.add_argument("--listen", default="127.0.0.1:4317", help="OTLP/gRPC address")
    cli.add_argument("--query", default="127.0.0.1:16686", help="HTTP query address")
    cli.add_argument("--max-spans", type=int, default=100_000)
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    receiver = OtlpReceiver(args.listen, max_spans=args.max_spans)
    receiver.start()
    http = serve_query(receiver, args.query)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"otlp receiver: grpc :{receiver.port}, http :{http.server_address[1]}",
        flush=True,
    )
    # A timed wait: a signal's Python handler runs on the main thread only when that thread
    # runs Python code, and the kernel may hand SIGTERM to one of gRPC's or the HTTP
    # server's threads instead. An untimed wait then slept through it until the
    # container's SIGKILL (CI, 2026-12-06: the compose test's `jaeger` exited 137).
    while not stop.wait(STOP_POLL_S):
        pass
    http.shutdown()
    http.server_close()
    receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
