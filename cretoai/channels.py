"""Client channels between the services of a node.

Every outgoing call carries the caller's trace context as gRPC metadata
(``traceparent``), so that a vertex's trace continues across services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from cretoai import registry
from cretoai.config import NodeConfig
from cretoai.telemetry import inject_context
from cretoai.tls import InternalTls


class _TraceContextInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def _with_context(self, details: Any) -> Any:
        carrier = inject_context()
        if not carrier:
            return details
        metadata = list(details.metadata or ()) + list(carrier.items())
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._with_context(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._with_context(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_context(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_context(client_call_details), request_iterator)


def service_channel(
    target: str,
    *,
    tls: InternalTls | None = None,
    max_message_bytes: int = 16 * 1024 * 1024,
) -> grpc.aio.Channel:
    """A channel to another service of this node, trace-propagating.

    With ``tls`` (the node's internal TLS) it presents the node's certificate and
    accepts only a server certified by the node's CA; without, it is plaintext
    (loopback only: services refuse other addresses without TLS).
    """
    options = _options(max_message_bytes)
    if tls is not None:
        return grpc.aio.secure_channel(
            target,
            tls.channel_credentials(),
            interceptors=[_TraceContextInterceptor()],
            options=options + tls.channel_options(),
        )
    return grpc.aio.insecure_channel(
        target, interceptors=[_TraceContextInterceptor()], options=options
    )


def blocking_channel(target: str, *, tls: InternalTls | None = None) -> grpc.Channel:
    """A synchronous channel (command-line tools) to a service of this node."""
    if tls is not None:
        return grpc.secure_channel(target, tls.channel_credentials(), tls.channel_options())
    return grpc.insecure_channel(target)


def _options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        # A sibling service that restarts is back within a second or two: reconnect
        # quickly instead of gRPC's default backoff (1 s doubling to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def service_endpoint(cfg: NodeConfig, service: str) -> tuple[str, InternalTls | None]:
    """Where a service of the node of ``cfg`` is reached, and the TLS to reach it with.

    The gateway's gRPC API is public (plaintext); the internal services use the
    node's mutual TLS when it is configured.
    """
    spec = registry.service(service)
    return spec.target(cfg), None if spec.public else cfg.internal_tls


def internal_channel(
    cfg: NodeConfig, service: str, *, tls: InternalTls | None = None
) -> grpc.aio.Channel:
    """A channel to another service of the node of ``cfg`` (see :func:`service_endpoint`),
    presenting ``tls`` (e.g. the gateway's certificate) instead of the services' own.

    With ``tls``, the services' key is never read: a gateway is given only its own
    certificate (Kubernetes mounts it alone, compose copies it alone), and reading the
    services' key stopped it at start."""
    spec = registry.service(service)
    if spec.public:
        return service_channel(spec.target(cfg), tls=None)
    return service_channel(spec.target(cfg), tls=tls if tls is not None else cfg.internal_tls)
