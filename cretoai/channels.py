"""Client channels between the services of a node.

Every outgoing call carries the caller's trace context as gRPC metadata
(``traceparent``), so that a vertex's trace continues across services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from cretoai.telemetry import inject_context


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


def service_channel(target: str, *, max_message_bytes: int = 16 * 1024 * 1024) -> grpc.aio.Channel:
    """An insecure (localhost) channel to another service of this node, trace-propagating."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[_TraceContextInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            # A sibling service that restarts is back within a second or two: reconnect
            # quickly instead of gRPC's default backoff (1 s doubling to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )
