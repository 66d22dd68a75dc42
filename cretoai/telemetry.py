"""OpenTelemetry tracing and the Prometheus endpoint shared by every service.

Tracing exports over OTLP/gRPC when an endpoint is configured (the
``[telemetry] otlp_endpoint`` setting, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``); otherwise spans are created but dropped.
Sampling is a parent-based ratio (``[telemetry] sampling_ratio``, default
:data:`DEFAULT_SAMPLING_RATIO`), so a trace started by a sampled client stays
sampled across services and nodes; the standard ``OTEL_TRACES_SAMPLER`` /
``OTEL_TRACES_SAMPLER_ARG`` override it when set. Every span's resource names its
service (``service.name`` = ``cretoai-<service>``) and node
(``service.instance.id`` = the node's name).

Trace context crosses processes as W3C ``traceparent`` (gRPC metadata, and the
``trace_context`` map of transport envelopes). What a peer sends is untrusted:
:func:`sanitize_carrier` and :func:`parse_traceparent` drop anything malformed or
oversized instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY, CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from cretoai.fairness import holder_to_evict

log = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """What a service must flush and close at shutdown."""

    tracer_provider: TracerProvider
    metrics_server: WSGIServer | None = None
    metrics_thread: threading.Thread | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.server_port if self.metrics_server else None

    def shutdown(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.tracer_provider.force_flush(timeout_millis=5000)
        self.tracer_provider.shutdown()


#: The default ``[telemetry] sampling_ratio``: 1 vertex in 100 is traced (each traced
#: vertex makes some 60-100 spans across a 4-node cluster).
DEFAULT_SAMPLING_RATIO = 0.01


def sampler(sampling_ratio: float) -> Sampler | None:
    """Parent-based ``sampling_ratio``; None (the SDK then reads the standard variables)
    when ``OTEL_TRACES_SAMPLER`` is set."""
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    return ParentBased(TraceIdRatioBased(sampling_ratio))


def setup_tracing(
    *,
    service: str,
    node: str,
    otlp_endpoint: str = "",
    sampling_ratio: float = DEFAULT_SAMPLING_RATIO,
) -> TracerProvider:
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    resource = Resource.create({"service.name": f"cretoai-{service}", "service.instance.id": node})
    provider = TracerProvider(resource=resource, sampler=sampler(sampling_ratio))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = not endpoint.startswith("https://")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        )
        log.info("exporting traces over OTLP", extra={"fields": {"endpoint": endpoint}})
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)  # once per process; tests start several services
    return provider


#: A scrape is one short request: a connection that has not sent it, or has not read
#: the answer, within this many seconds is closed (the handler thread ends with it).
METRICS_TIMEOUT_S = 10.0
#: Connections served at once; more are closed unanswered (and counted). Prometheus
#: holds one per scrape.
METRICS_MAX_CONNECTIONS = 16
#: Of those, from one client address at once: one client (a hostile process on the
#: container network, a stuck scraper) cannot hold every slot and blind Prometheus.
METRICS_MAX_PER_CLIENT = 4

METRICS_REFUSED = Counter(
    "cretoai_service_metrics_connections_refused",
    "Connections to the /metrics endpoint closed unanswered: "
    "METRICS_MAX_CONNECTIONS were being served, or METRICS_MAX_PER_CLIENT from that address",
)


#: A rendered answer is served again for this long: scrapes within it cost no rendering.
METRICS_CACHE_S = 0.2
#: Renders per second, and at most this many in a burst; beyond, the last answer is
#: served again (older than METRICS_CACHE_S), or 429 when there is none. A render costs
#: a few ms of the service's CPU under its GIL: an audit (2026-12-04) had one local
#: process scraping a consensus /metrics 120 times a second take 69 % of a core from it
#: and more than double finality latency.
METRICS_RENDERS_PER_S = 5.0
METRICS_RENDER_BURST = 10

METRICS_EVICTED = Counter(
    "cretoai_service_metrics_connections_evicted",
    "Connections to the /metrics endpoint closed to serve a client holding at least two "
    "fewer, all METRICS_MAX_CONNECTIONS being served (the oldest of the address holding "
    "the most)",
)

METRICS_THROTTLED = Counter(
    "cretoai_service_metrics_scrapes_throttled",
    "Scrapes of /metrics answered without a render because more renders were asked for "
    "than METRICS_RENDERS_PER_S: the last answer again, or 429 when there was none",
)


class CachedMetricsApp:
    """prometheus_client's WSGI app, its answers cached for :data:`METRICS_CACHE_S` by
    request (path, query, Accept, Accept-Encoding) and renders bounded by a token
    bucket, so that scraping faster than that costs the service nothing more."""

    def __init__(
        self,
        app: Callable[..., Any],
        clock: Callable[[], float] = time.monotonic,
        *,
        renders_per_s: float = METRICS_RENDERS_PER_S,
        burst: int = METRICS_RENDER_BURST,
    ) -> None:
        self._app = app
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], tuple[float, str, list[tuple[str, str]], bytes]] = {}
        self._renders = TokenBucket(renders_per_s, burst, clock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        key = tuple(
            str(environ.get(name, ""))
            for name in ("PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING")
        )
        with self._lock:  # one render at a time; the others then find it cached
            now = self._clock()
            cached = self._cache.get(key)
            stale = cached is None or now - cached[0] >= METRICS_CACHE_S
            if stale and not self._renders.take():
                METRICS_THROTTLED.inc()
                if cached is None:
                    start_response(
                        "429 Too Many Requests",
                        [("Content-Type", "text/plain"), ("Retry-After", "1")],
                    )
                    return [b"too many scrapes of /metrics; retry in a second\n"]
            elif stale:
                captured: list[Any] = []

                def capture(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
                    captured[:] = [status, headers]

                body = b"".join(self._app(environ, capture))
                if len(self._cache) >= 16:
                    self._cache.clear()
                cached = (now, captured[0], list(captured[1]), body)
                self._cache[key] = cached
        assert cached is not None  # rendered, or the last answer again
        _, status, headers, body = cached
        start_response(status, headers)
        return [body]


#: ``/healthz`` on the metrics port answers 503 once the event loop has not run its
#: heartbeat (``serving.watch_loop_lag``, every second) for this long.
LIVENESS_STALL_S = 10.0


class LoopHeartbeat:
    """When the service's event loop last ran its heartbeat. ``/healthz`` on the metrics
    port (a thread of its own) says from it whether the loop is alive, apart from the
    public listeners: their limits answer a flood of connections 429, /healthz included,
    and an orchestrator probing there restarted a live gateway (an audit, 2026-12-04)."""

    def __init__(self) -> None:
        self.at = time.monotonic()  # a loop stuck before its first beat is caught too

    def beat(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.at


#: The heartbeat of this process's service (one service per process).
HEARTBEAT = LoopHeartbeat()


class _WithLiveness:
    """``/healthz`` from ``heartbeat``; every other path to ``app``."""

    def __init__(self, app: Callable[..., Any], heartbeat: LoopHeartbeat, stall_s: float):
        self._app = app
        self._heartbeat = heartbeat
        self._stall_s = stall_s

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return list(self._app(environ, start_response))
        age = self._heartbeat.age()
        if age < self._stall_s:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [f"the event loop has not run for {age:.1f} s\n".encode()]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


class BoundedMetricsServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-connection server, bounded. It had no bound and no
    timeout: each connection that never sent its request kept a thread of the service
    forever, so any process that can reach the port (on the host, or in the container
    network) could pile up thousands of threads in a consensus process. Now at most
    :data:`METRICS_MAX_CONNECTIONS` are served at once, at most
    :data:`METRICS_MAX_PER_CLIENT` of them from one address, each for at most
    :data:`METRICS_TIMEOUT_S` of silence. With every slot taken, a client holding at
    least two fewer than the address holding the most is served, and that address's
    oldest connection shut: a few addresses cannot keep a scraper or a liveness probe
    (``/healthz``) out."""

    timeout_s = METRICS_TIMEOUT_S
    max_connections = METRICS_MAX_CONNECTIONS
    max_per_client = METRICS_MAX_PER_CLIENT
    #: socketserver's backlog is 5: connections beyond it wait in the kernel, unseen
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._served = 0
        #: The connections served, oldest first, by client address.
        self._by_client: dict[str, dict[socket.socket, None]] = {}

    def _take(self, client: str, request: socket.socket) -> bool:
        with self._lock:
            held = len(self._by_client.get(client, ()))
            if held >= self.max_per_client:
                return False
            if self._served >= self.max_connections:
                top = holder_to_evict({c: len(r) for c, r in self._by_client.items()}, client)
                if top is None:
                    return False
                victim = next(iter(self._by_client[top]))
                self._release(top, victim)
                METRICS_EVICTED.inc()
                with contextlib.suppress(OSError):  # its thread sees the end and finishes
                    victim.shutdown(socket.SHUT_RDWR)
            self._served += 1
            self._by_client.setdefault(client, {})[request] = None
            return True

    def _release(self, client: str, request: socket.socket) -> None:
        """Give a connection's slot back, once (under the lock)."""
        held = self._by_client.get(client)
        if held is None or request not in held:
            return
        del held[request]
        self._served -= 1
        if not held:
            del self._by_client[client]

    def _give_back(self, client: str, request: socket.socket) -> None:
        with self._lock:
            self._release(client, request)

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        if not self._take(client, request):
            METRICS_REFUSED.inc()
            self.shutdown_request(request)
            return
        try:
            request.settimeout(self.timeout_s)
            super().process_request(request, client_address)  # a thread, which gives back
        except BaseException:
            self._give_back(client, request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_back(str(client_address[0]), request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: not worth a traceback on stderr."""
        log.debug("metrics connection ended", extra={"fields": {"client": str(client_address)}})


def start_metrics(
    bind: str | None,
    registry: CollectorRegistry = REGISTRY,
    *,
    heartbeat: LoopHeartbeat = HEARTBEAT,
    stall_s: float = LIVENESS_STALL_S,
) -> tuple[WSGIServer, threading.Thread] | None:
    """Serve Prometheus ``/metrics`` on ``host:port`` (port 0 picks one), and ``/healthz``
    (200 while ``heartbeat`` beat within ``stall_s``, else 503); None disables."""
    if not bind:
        return None
    host, _, port = bind.rpartition(":")
    addr = host.strip("[]") or "127.0.0.1"
    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(BoundedMetricsServer):
        address_family = family

    server = make_server(
        str(sockaddr[0]),
        int(port),
        _WithLiveness(CachedMetricsApp(make_wsgi_app(registry)), heartbeat, stall_s),
        Server,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier (for envelopes and gRPC metadata)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> object:
    """The trace context a caller (a client, or another service) asks to continue: its W3C
    ``traceparent`` alone, validated, or none. Its ``tracestate`` and ``baggage`` are not
    carried on: every call made for it would repeat them, and a client's 8-KB
    ``tracestate`` once pushed the internal calls of a whole combined submission over
    gRPC's 8-KiB metadata limit (other clients' vertices refused as "overloaded")."""
    span_context = parse_traceparent(carrier.get("traceparent"))
    if span_context is None:
        return otel_context.Context()
    return trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())


#: Clients' requests for a trace (a sampled ``traceparent``) honoured per second by one
#: process beyond ``sampling_ratio``, and at most this many at once after a quiet while.
CLIENT_TRACES_PER_S = 1.0
CLIENT_TRACES_BURST = 10


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held (starts full); not thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


_client_traces = TokenBucket(CLIENT_TRACES_PER_S, CLIENT_TRACES_BURST)
_coin = random.SystemRandom()


def extract_client_context(
    carrier: Mapping[str, str], sampling_ratio: float, honoured: TokenBucket | None = None
) -> object:
    """:func:`extract_context` for a carrier from outside the node (a public API's
    client): its trace is continued (the same trace id), but how many are recorded stays
    this node's choice. A client's "sampled" flag is honoured while ``honoured`` (the
    process's :data:`CLIENT_TRACES_PER_S`, burst :data:`CLIENT_TRACES_BURST`) has a token,
    so that one asking for a trace of a request gets it; beyond, it is kept with
    probability ``sampling_ratio``, by a coin of our own (not the trace id, which the
    client picks). Otherwise any client could have every request traced, some 60-100
    spans each across the cluster, 1/``sampling_ratio`` times the cost tracing was sized
    for. An unsampled flag is kept (a client may ask not to be traced). With
    ``OTEL_TRACES_SAMPLER`` set the operator chose the sampler: the flag is left as sent."""
    context = extract_context(carrier)
    span_context = trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]
    if (
        span_context.is_valid
        and span_context.trace_flags.sampled
        and not os.environ.get("OTEL_TRACES_SAMPLER", "").strip()
        and not (honoured or _client_traces).take()
        and _coin.random() >= sampling_ratio
    ):
        unsampled = SpanContext(
            span_context.trace_id,
            span_context.span_id,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
        return trace.set_span_in_context(NonRecordingSpan(unsampled), otel_context.Context())
    return context


# --- trace context from untrusted carriers ------------------------------------------

#: A carrier with more keys, or a longer key or value, is dropped whole.
CARRIER_MAX_KEYS = 66
CARRIER_MAX_KEY = 16
CARRIER_MAX_VALUE = 256
_HEX = frozenset("0123456789abcdef")


def sanitize_carrier(carrier: Mapping[str, str]) -> dict[str, str]:
    """``carrier`` as a dict, or ``{}`` when it is too large to be an honest one."""
    if len(carrier) > CARRIER_MAX_KEYS:
        return {}
    out = {}
    for key, value in carrier.items():
        if len(key) > CARRIER_MAX_KEY or len(value) > CARRIER_MAX_VALUE:
            return {}
        out[key] = value
    return out


def parse_traceparent(value: str | None) -> SpanContext | None:
    """A remote span context from a W3C ``traceparent`` (version 00), or None if malformed."""
    if value is None or len(value) != 55:
        return None
    parts = value.split("-")
    if [len(p) for p in parts] != [2, 32, 16, 2] or parts[0] != "00":
        return None
    if not all(c in _HEX for c in value.replace("-", "")):
        return None
    trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    if trace_id == 0 or span_id == 0:
        return None
    flags = TraceFlags(int(parts[3], 16) & TraceFlags.SAMPLED)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


def format_traceparent(span_context: SpanContext) -> str:
    """The W3C ``traceparent`` of ``span_context``."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags) & TraceFlags.SAMPLED:02x}"
    )


def remote_parent(carrier: Mapping[str, str]) -> otel_context.Context | None:
    """A context to start spans in, from a peer's carrier; None when it carries none, or
    garbage, or an unsampled trace (nothing to record then)."""
    span_context = parse_traceparent(carrier.get("traceparent"))
    if span_context is None or not span_context.trace_flags.sampled:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))
