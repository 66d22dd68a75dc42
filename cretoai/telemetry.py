"""OpenTelemetry tracing and the Prometheus endpoint shared by every service.

Tracing exports over OTLP/gRPC when an endpoint is configured (the
``[telemetry] otlp_endpoint`` setting, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``); otherwise spans are created but dropped.
Sampling is a parent-based ratio, so a trace started by a sampled client stays
sampled across services and nodes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

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


def setup_tracing(
    *, service: str, node: str, otlp_endpoint: str = "", sampling_ratio: float = 1.0
) -> TracerProvider:
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    resource = Resource.create({"service.name": f"cretoai-{service}", "service.instance.id": node})
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(sampling_ratio))
    )
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


def start_metrics(
    bind: str | None, registry: CollectorRegistry = REGISTRY
) -> tuple[WSGIServer, threading.Thread] | None:
    """Serve Prometheus ``/metrics`` on ``host:port`` (port 0 picks one); None disables."""
    if not bind:
        return None
    host, _, port = bind.rpartition(":")
    addr = host.strip("[]") or "127.0.0.1"
    server, thread = start_http_server(int(port), addr=addr, registry=registry)
    return server, thread


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier (for envelopes and gRPC metadata)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> object:
    return propagate.extract(dict(carrier))
