"""One way to run a gRPC service: health, reflection, interceptors, metrics, shutdown.

Every service's ``build(cfg)`` returns a :class:`GrpcService` (made with
:meth:`GrpcService.for_node` from the node config), and
:func:`cretoai.entry.run_service` calls :meth:`GrpcService.run`. Startup order:
interceptors, servicers, health, reflection, start, metrics endpoint, *then*
mark SERVING. Shutdown order (on SIGTERM/SIGINT or :meth:`stop`): mark
NOT_SERVING, stop accepting and drain in-flight calls for ``grace`` seconds,
run the service's own cleanup, then flush telemetry.

A servicer reports a failed call by raising a :class:`cretoai.errors.ServiceError`;
the one place that turns it into the call's status is :func:`_call_status`
(every interceptor layer of a call runs it; the innermost one does the work).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import logging
import resource
import signal
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from cretoai import registry
from cretoai.config import NodeConfig
from cretoai.errors import InvalidArgument, ResourceExhausted, ServiceError
from cretoai.fairness import holder_to_evict
from cretoai.telemetry import (
    DEFAULT_SAMPLING_RATIO,
    HEARTBEAT,
    Telemetry,
    extract_client_context,
    extract_context,
    setup_tracing,
    start_metrics,
)
from cretoai.tls import GATEWAY_COMMON_NAME, InternalTls, is_loopback

log = logging.getLogger(__name__)

#: A connection to a service that has not completed its TLS and HTTP/2 handshake this
#: many ms after it opened is closed (the node's own callers take milliseconds).
HANDSHAKE_TIMEOUT_MS = 10_000

RPC_LATENCY = Histogram(
    "cretoai_grpc_server_handling_seconds",
    "Time to handle a gRPC call (to the last message for streams)",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RPC_TOTAL = Counter(
    "cretoai_grpc_server_handled_total", "gRPC calls handled", ["service", "method", "code"]
)
SERVING = Gauge("cretoai_service_serving", "1 while the service reports SERVING", ["service"])
LOOP_LAG = Histogram(
    "cretoai_service_event_loop_lag_seconds",
    "How late the service's event loop wakes a timer: the time it was blocked (a "
    "callback that ran long, a GIL holder) or the process waited for a core",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
#: How often the event loop's lag is observed (LOOP_LAG): a timer this long.
LOOP_LAG_INTERVAL_S = 0.05

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

Registrar = Callable[[grpc.aio.Server], None]
Cleanup = Callable[[], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Servicer:
    """A servicer to mount: its full service name (for health and reflection) and its adder."""

    name: str
    register: Registrar


def _code_of(exc: BaseException | None, context: Any) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if exc is None else "UNKNOWN"


class _ApplicationInterceptor(grpc.aio.ServerInterceptor):
    """Intercepts the application's calls: :meth:`wrap` gets each one's handler; health
    and reflection (:func:`_is_plumbing`) pass untouched."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or _is_plumbing(handler_call_details.method):
            return handler
        return self.wrap(handler, handler_call_details)

    def wrap(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        raise NotImplementedError


class _CallInterceptor(_ApplicationInterceptor):
    """Wraps every application call in ``begin``/``end``.

    Subclasses implement one concern each; ``begin`` runs just before the
    handler and returns a state that ``end`` receives with the status code.
    """

    def wrap(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        metadata = {
            key: value for key, value in details.invocation_metadata or () if isinstance(value, str)
        }
        return _wrap_handler(handler, self, details.method, metadata)

    def begin(self, method: str, metadata: dict[str, str]) -> Any:
        raise NotImplementedError

    def end(self, state: Any, method: str, code: str, exc: BaseException | None) -> None:
        raise NotImplementedError


class TracingInterceptor(_CallInterceptor):
    """A server span per call, child of the caller's trace context (from metadata).

    With ``roots`` False (internal services) a call that carries no trace context
    gets no span: the consensus' own storage writes and streams would otherwise each
    start a trace of their own; calls made on behalf of a vertex carry its context.
    """

    def __init__(self, *, roots: bool = True, client_sampling_ratio: float | None = None) -> None:
        self._tracer = trace.get_tracer("cretoai.serving")
        self._roots = roots
        #: A public server's: callers are clients (:func:`extract_client_context`).
        self._client_ratio = client_sampling_ratio

    def begin(self, method: str, metadata: dict[str, str]) -> Any:
        if not self._roots and "traceparent" not in metadata:
            return None
        parent = (
            extract_context(metadata)
            if self._client_ratio is None
            else extract_client_context(metadata, self._client_ratio)
        )
        span = self._tracer.start_span(
            method,
            context=parent,  # type: ignore[arg-type]
            kind=trace.SpanKind.SERVER,
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    def end(self, state: Any, method: str, code: str, exc: BaseException | None) -> None:
        if state is None:
            return
        span, token = state
        span.set_attribute("rpc.grpc.status_code", code)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            span.record_exception(exc)
        span.end()
        _detach(token)


def _detach(token: Any) -> None:
    """``otel_context.detach``, but quiet when the call ends in another Context than the
    one it began in: a stream's handler is an async generator, which gRPC may close from
    another task (a client's reset), and OpenTelemetry then logged "Failed to detach
    context" with a traceback at error level, which any client could repeat at will. The
    attachment ends with the Context it was made in."""
    if isinstance(token, contextvars.Token):  # OpenTelemetry's default runtime context
        with contextlib.suppress(ValueError, RuntimeError):
            token.var.reset(token)
    else:
        otel_context.detach(token)


class MetricsInterceptor(_CallInterceptor):
    """Call counts by status code and latency histograms, per method."""

    def __init__(self, service: str) -> None:
        self._service = service

    def begin(self, method: str, metadata: dict[str, str]) -> Any:
        return time.perf_counter()

    def end(self, state: Any, method: str, code: str, exc: BaseException | None) -> None:
        RPC_LATENCY.labels(self._service, method).observe(time.perf_counter() - state)
        RPC_TOTAL.labels(self._service, method, code).inc()


class AccessLogInterceptor(_CallInterceptor):
    """One debug line per call; failures other than client-side ones at info."""

    def begin(self, method: str, metadata: dict[str, str]) -> Any:
        return time.perf_counter()

    def end(self, state: Any, method: str, code: str, exc: BaseException | None) -> None:
        fields = {
            "method": method,
            "code": code,
            "ms": round((time.perf_counter() - state) * 1e3, 3),
        }
        level = logging.INFO if code in ("INTERNAL", "UNKNOWN", "DATA_LOSS") else logging.DEBUG
        log.log(level, "rpc", extra={"fields": fields})


async def _call_status(exc: Exception, ctx: Any) -> None:
    """The one place where what a servicer raised becomes the status of its call.

    A :class:`~cretoai.errors.ServiceError` sets its status, details and error code on
    the call, which then ends with them (the handler returns: no response is sent);
    an abort already made (by the servicer, or by an inner layer) goes on as it is;
    anything else is a bug: logged with its traceback, INTERNAL to the caller.

    Setting the status rather than aborting matters under load: grpcio keeps an
    ``AbortError`` in the call's state, and its traceback holds the call's frames,
    which hold that state: a reference cycle per refused call, left to the cyclic
    collector's pauses (see :meth:`ServiceError.settled`).
    """
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, ServiceError):
        exc.settled()
        ctx.set_code(exc.grpc_status)
        ctx.set_details(exc.grpc_details())
        metadata = exc.trailing_metadata()
        if metadata:
            ctx.set_trailing_metadata(metadata)
        return
    log.error("call failed", exc_info=exc)
    await ctx.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


class RequestRefused(Exception):
    """A deserializer's refusal of a request before it builds it (a bound the wire
    already shows exceeded): INVALID_ARGUMENT with this message."""


class _Undecodable:
    """What a request message that is not valid protobuf deserializes to (see _lenient)."""

    __slots__ = ("error", "refused")

    def __init__(self, error: str, *, refused: bool = False) -> None:
        self.error = error
        self.refused = refused


def _lenient(deserializer: Any) -> Any:
    """``deserializer``, returning :class:`_Undecodable` instead of raising.

    grpc.aio deserializes a request before any handler runs, and answers a
    ``DecodeError`` there UNKNOWN with an error log line per call; the handler
    turns the marker into INVALID_ARGUMENT (:func:`_checked`) instead.
    """
    if deserializer is None or getattr(deserializer, "lenient", False):
        return deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except RequestRefused as exc:
            return _Undecodable(str(exc), refused=True)
        except Exception as exc:
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    deserialize.lenient = True  # type: ignore[attr-defined]
    return deserialize


def _refuse(request: _Undecodable) -> NoReturn:
    if request.refused:
        raise InvalidArgument(request.error, error_code="bad_request")
    raise InvalidArgument(
        f"request: not a valid protobuf message for this method ({request.error})",
        error_code="bad_request",
    )


def _checked(request: Any, streaming: bool) -> Any:
    """The request (or, for a client stream, the stream of them) with undecodable
    messages refused as INVALID_ARGUMENT."""
    if not streaming:
        if isinstance(request, _Undecodable):
            _refuse(request)
        return request

    async def messages() -> Any:
        async for item in request:
            if isinstance(item, _Undecodable):
                _refuse(item)
            yield item

    return messages()


def caller_is_gateway(context: Any) -> bool:
    """Whether the caller presented the node's gateway certificate (mutual TLS)."""
    names = context.auth_context().get("x509_common_name") or ()
    return any(name == GATEWAY_COMMON_NAME.encode() for name in names)


class GatewayRoleInterceptor(_ApplicationInterceptor):
    """Lets a caller holding the gateway's certificate call only ``allowed`` (method
    names) and health and reflection; anything else is PERMISSION_DENIED, counted and
    logged like every call. The other services' certificate may call everything."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self._allowed = allowed

    def wrap(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        if method.rpartition("/")[2] in self._allowed:
            return handler

        async def refuse(context: Any) -> None:
            if caller_is_gateway(context):
                raise ServiceError(
                    f"the gateway may not call {method}",
                    status=grpc.StatusCode.PERMISSION_DENIED,
                )

        return _around(handler, refuse)


#: Why a call was ended for another client's (PerClientLimitInterceptor's ``total``).
EVICTED = (
    "every call slot here is taken and this client holds the most; its oldest call "
    "gave way to another client's; retry later"
)


def _around(
    handler: Any,
    enter: Callable[[Any], Awaitable[Any]],
    leave: Callable[[Any], None] | None = None,
    evicted: Callable[[], bool] = lambda: False,
) -> Any:
    """``handler`` run between ``enter(context)`` (which may abort the call) and
    ``leave(what enter returned)``, however the handler ends. A call cancelled while
    ``evicted()`` holds ends RESOURCE_EXHAUSTED (:data:`EVICTED`)."""
    inner = _behaviour(handler)
    # a streaming handler that writes with context.write (grpc's health Watch) is a
    # coroutine, run as a unary one is
    if _streams_responses(handler) and inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Any) -> Any:
            state = await enter(context)
            try:
                async for item in inner(request, context):
                    yield item
            finally:
                if leave is not None:
                    leave(state)

        return _rebuilt(handler, stream, handler.request_deserializer)

    async def coroutine(request: Any, context: Any) -> Any:
        state = await enter(context)
        try:
            return await inner(request, context)
        except asyncio.CancelledError:
            if not evicted():
                raise
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, EVICTED)
        finally:
            if leave is not None:
                leave(state)

    return _rebuilt(handler, coroutine, handler.request_deserializer)


class ArrivalInterceptor(grpc.aio.ServerInterceptor):
    """Runs every call's handler, and the interceptors listed before this one, when the
    call arrives, not once its request message has: a unary request is read as a stream
    of one message, which must come within ``message_timeout_s`` (else
    DEADLINE_EXCEEDED). List it last, so that it turns the service's own handler.

    grpc.aio reads a unary call's whole message before any handler runs, and counts the
    call against ``maximum_concurrent_rpcs`` from its headers: one client address that
    sent headers and never a message held every call slot of the public server, health
    checks included, for as long as it liked, past the idle timeout and uncounted by
    the per-client limit, which runs in the handler (an audit, 2026-12-04). The wire
    is the same: a client cannot tell."""

    def __init__(self, message_timeout_s: float) -> None:
        self._timeout = message_timeout_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        return self._on_arrival(handler)

    async def _message(self, requests: Any, context: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                async for request in requests:
                    return request
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {self._timeout:g} s of its call",
            )
        try:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: no message")
        except grpc.aio.AbortError:
            raise
        except Exception:
            # gRPC had ended the call itself (a message over the size limit: the client
            # got RESOURCE_EXHAUSTED): nothing to answer, and nothing to log as an error
            # per call, which any client could make happen (a review, 2026-12-04)
            raise asyncio.CancelledError from None

    def _on_arrival(self, handler: Any) -> Any:
        inner = handler.unary_unary or handler.unary_stream
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": _passing_bytes(handler.response_serializer),
        }
        if handler.unary_unary is not None or not inspect.isasyncgenfunction(inner):
            # (a streaming handler that writes with context.write is a coroutine)

            async def coroutine(requests: Any, context: Any) -> Any:
                return await inner(await self._message(requests, context), context)

            if handler.unary_unary is not None:
                return grpc.stream_unary_rpc_method_handler(coroutine, **options)
            return grpc.stream_stream_rpc_method_handler(coroutine, **options)

        async def stream(requests: Any, context: Any) -> Any:
            async for item in inner(await self._message(requests, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream, **options)


#: Health and reflection calls in progress from one client, at most (apart from its
#: application calls): a health ``Watch`` stream lasts as long as its client wants.
PLUMBING_PER_CLIENT = 4


class _InProgress:
    """Calls in progress by client; only clients with some are kept."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def take(self, client: str, limit: int) -> bool:
        """Count one more call of ``client``, unless it has ``limit`` already."""
        if self.counts[client] >= limit:
            return False
        self.counts[client] += 1
        return True

    def give_back(self, client: str) -> None:
        self.counts[client] -= 1
        if self.counts[client] <= 0:
            del self.counts[client]


class PerClientLimitInterceptor(_ApplicationInterceptor):
    """At most ``limit`` calls in progress from one client (``client_of(peer)``, the key
    its per-client limits count it by); one more is RESOURCE_EXHAUSTED at once, before its
    handler runs (``on_refused`` is told). Without it one client could hold every call a
    server bounded by ``max_concurrent_rpcs`` takes. Health and reflection calls count
    apart, at most :data:`PLUMBING_PER_CLIENT` at once.

    With ``total``, at most that many application calls are in progress in all, shared
    max-min fairly between clients: with all taken, a call of a client holding at least
    two fewer than the client holding the most ends that client's oldest call
    (RESOURCE_EXHAUSTED, or CANCELLED when it was sending; ``on_evicted`` is told), else
    it is refused (``on_refused_total``). A few client addresses then cannot keep every
    other client out (four did, at 8 calls each). Give the server's
    ``max_concurrent_rpcs`` room above it, for health checks and calls ending."""

    def __init__(
        self,
        limit: int,
        client_of: Callable[[str], str],
        *,
        setting: str,
        on_refused: Callable[[], None] = lambda: None,
        total: int | None = None,
        total_setting: str = "",
        on_refused_total: Callable[[], None] = lambda: None,
        on_evicted: Callable[[], None] = lambda: None,
    ) -> None:
        self._limit = limit
        self._client_of = client_of
        self._refusal = (
            f"this client has {limit} calls in progress ({setting}); wait for one to "
            "finish, or retry later"
        )
        self._on_refused = on_refused
        self._total = total
        self._total_refusal = f"{total} calls are in progress here ({total_setting}); retry later"
        self._on_refused_total = on_refused_total
        self._on_evicted = on_evicted
        self._calls = _InProgress()
        self._plumbing = _InProgress()
        #: Application calls in progress, by client.
        self.in_progress = self._calls.counts
        #: The tasks of those calls, oldest first, by client (when ``total`` is set).
        self._tasks: dict[str, dict[asyncio.Task[Any], None]] = {}
        #: Calls ended for a client holding fewer, until their handlers see it.
        self._evicted: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Health and reflection count apart, at most :data:`PLUMBING_PER_CLIENT` per
        client: a client at its limit can still check health, but uncounted, 40 health
        ``Watch`` streams (which never end by themselves) from one client took every call
        the server allows, and every other client, health checks included, got
        RESOURCE_EXHAUSTED (an audit, 2026-12-04)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if _is_plumbing(handler_call_details.method):
            return _around(handler, self._enter_plumbing, self._plumbing.give_back)
        return self.wrap(handler, handler_call_details)

    async def _enter_plumbing(self, context: Any) -> str:
        client = self._client_of(context.peer())
        if not self._plumbing.take(client, PLUMBING_PER_CLIENT):
            self._on_refused()
            # (plumbing passes no error-mapping interceptor: the status is set here)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client has {PLUMBING_PER_CLIENT} health or reflection calls in "
                "progress; wait for one to finish",
            )
        return client

    def wrap(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        if self._total is None:
            return _around(handler, self._enter, self._calls.give_back)
        return _around(handler, self._enter_shared, self._leave_shared, self._was_evicted)

    async def _enter(self, context: Any) -> str:
        client = self._client_of(context.peer())
        if not self._calls.take(client, self._limit):
            self._on_refused()
            raise ResourceExhausted(self._refusal)
        return client

    async def _enter_shared(self, context: Any) -> tuple[str, asyncio.Task[Any] | None]:
        client = self._client_of(context.peer())
        counts = self._calls.counts
        if counts[client] >= self._limit:
            self._on_refused()
            raise ResourceExhausted(self._refusal)
        assert self._total is not None
        if sum(counts.values()) >= self._total and not self._make_room(client):
            self._on_refused_total()
            raise ResourceExhausted(self._total_refusal)
        self._calls.take(client, self._limit)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.setdefault(client, {})[task] = None
        return client, task

    def _make_room(self, client: str) -> bool:
        """End the oldest call of the client holding the most, if it holds at least two
        more than ``client``."""
        top = holder_to_evict(self._calls.counts, client)
        if top is None or not self._tasks.get(top):
            return False
        tasks = self._tasks[top]
        victim = next(iter(tasks))
        self._leave_shared((top, victim))
        self._evicted.add(victim)
        self._on_evicted()
        victim.cancel()
        return True

    def _leave_shared(self, state: tuple[str, asyncio.Task[Any] | None]) -> None:
        client, task = state
        tasks = self._tasks.get(client)
        if task is not None and (tasks is None or task not in tasks):
            return  # evicted: given back then
        if tasks is not None and task is not None:
            del tasks[task]
            if not tasks:
                del self._tasks[client]
        self._calls.give_back(client)

    def _was_evicted(self) -> bool:
        task = asyncio.current_task()
        return task is not None and task in self._evicted


def _is_plumbing(method: str) -> bool:
    """Health and reflection: open to every caller, outside the interceptors' concerns."""
    return method.startswith(("/grpc.health.v1.", "/grpc.reflection."))


def _behaviour(handler: Any) -> Any:
    """The coroutine or async generator of ``handler``, whatever its kind."""
    return (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )


def _streams_responses(handler: Any) -> bool:
    return bool(handler.unary_stream or handler.stream_stream)


def _passing_bytes(serializer: Any) -> Any:
    """``serializer``, passing on as they are the responses a handler yields already
    encoded (``bytes``): a large message built by concatenation is not parsed into a
    message only to be serialized again (services.transport.servicer's ExchangeBatches)."""
    if serializer is None or getattr(serializer, "passes_bytes", False):
        return serializer

    def serialize(message: Any) -> bytes:
        if type(message) is bytes:
            return message
        encoded: bytes = serializer(message)
        return encoded

    serialize.passes_bytes = True  # type: ignore[attr-defined]
    return serialize


def _rebuilt(handler: Any, behaviour: Any, request_deserializer: Any) -> Any:
    """A handler of ``handler``'s kind (unary or streaming requests and responses) that
    runs ``behaviour``."""
    if handler.unary_unary:
        factory = grpc.unary_unary_rpc_method_handler
    elif handler.stream_unary:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.unary_stream:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.stream_stream_rpc_method_handler
    return factory(
        behaviour,
        request_deserializer=request_deserializer,
        response_serializer=_passing_bytes(handler.response_serializer),
    )


def _wrap_handler(
    handler: Any, icpt: _CallInterceptor, method: str, metadata: dict[str, str]
) -> Any:
    deserializer = _lenient(handler.request_deserializer)
    streaming = bool(handler.stream_unary or handler.stream_stream)
    inner = _behaviour(handler)
    if not _streams_responses(handler):

        async def unary_response(request: Any, ctx: Any) -> Any:
            state = icpt.begin(method, metadata)
            try:
                try:
                    result = await inner(_checked(request, streaming), ctx)
                except Exception as exc:
                    await _call_status(exc, ctx)
                    result = None  # the call ends with the status set
            except BaseException as exc:
                icpt.end(state, method, _code_of(exc, ctx), exc)
                raise
            icpt.end(state, method, _code_of(None, ctx), None)
            return result

        return _rebuilt(handler, unary_response, deserializer)

    async def stream_response(request: Any, ctx: Any) -> Any:
        state = icpt.begin(method, metadata)
        try:
            try:
                async for item in inner(_checked(request, streaming), ctx):
                    yield item
            except Exception as exc:
                await _call_status(exc, ctx)
        except BaseException as exc:
            icpt.end(state, method, _code_of(exc, ctx), exc)
            raise
        icpt.end(state, method, _code_of(None, ctx), None)

    return _rebuilt(handler, stream_response, deserializer)


#: At least this long, after the server stopped, for handlers to finish (cancelled ones
#: to unwind) before cleanup goes on without them.
HANDLER_UNWIND_S = 1.0
#: The coroutine of the task grpc.aio runs a call's handler in.
HANDLER_CORO = "_handle_exceptions"


def _handler_service(task_name: str) -> str:
    """The service of grpc.aio's handler task named ``HandleExceptions[/svc/Method]``."""
    _, _, method = task_name.partition("[/")
    return method.partition("/")[0]


@dataclass(kw_only=True)
class GrpcService:
    """A gRPC server with health, reflection, observability and ordered shutdown.

    ``bind`` is ``host:port`` (port 0 picks a free one; read :attr:`port` after
    :meth:`start`). ``metrics_bind`` serves Prometheus ``/metrics`` (None disables).
    ``cleanup`` coroutines run after the server has drained, before telemetry flushes.
    """

    name: str
    bind: str
    servicers: Sequence[Servicer]
    node: str = ""
    metrics_bind: str | None = None
    otlp_endpoint: str = ""
    sampling_ratio: float = DEFAULT_SAMPLING_RATIO
    grace: float = 5.0
    max_message_bytes: int = 16 * 1024 * 1024
    #: Largest message received (None: ``max_message_bytes``). gRPC reads a request's
    #: whole message before any handler runs, so a public server sets its API's limit.
    max_receive_bytes: int | None = None
    #: RPCs handled at once (streams included); beyond it gRPC answers RESOURCE_EXHAUSTED
    #: before reading the request. Such a bounded server also keeps HTTP/2 stream windows
    #: at their initial 64 KiB (no BDP probing), so a call not yet handled holds at most
    #: that. With ``max_receive_bytes`` it bounds what callers make the server hold.
    #: None: unbounded (internal services: their callers are this node's own).
    max_concurrent_rpcs: int | None = None
    #: Innermost interceptors of this server's own (after tracing, metrics and the
    #: access log, so what they refuse is counted and logged like any call).
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    #: With ``tls``: the methods a caller holding the gateway's certificate may call
    #: (GatewayRoleInterceptor); None: every method.
    gateway_may_call: frozenset[str] | None = None
    #: Connections open at once (gRPC closes one beyond before its handshake); None:
    #: unbounded.
    max_connections: int | None = None
    #: Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS;
    #: gRPC resets those beyond). Without it, one connection opening streams and resetting
    #: each at once ("rapid reset") got every other client's calls CANCELLED. None:
    #: unbounded (internal services).
    max_streams_per_connection: int | None = None
    #: A connection that has not finished its HTTP/2 handshake this long after it
    #: opened, or has had no call for this long, is closed (a client reconnects by
    #: itself); None: the handshake within :data:`HANDSHAKE_TIMEOUT_MS`, idle forever.
    idle_timeout_ms: int | None = None
    cleanup: list[Cleanup] = field(default_factory=list)
    #: Mutual TLS with the node's certificates; None: plain, and then only on loopback
    #: unless ``public`` (the gateway's client API is public by design).
    tls: InternalTls | None = None
    public: bool = False
    port: int = 0
    metrics_port: int | None = None

    @classmethod
    def for_node(
        cls, cfg: NodeConfig, name: str, *, servicers: Sequence[Servicer], **options: Any
    ) -> Self:
        """Service ``name`` of the node of ``cfg``, as every service is built: bound where
        its config section says (:mod:`cretoai.registry`), with the node's name, its
        metrics endpoint, the node's telemetry settings, and the node's internal TLS
        unless its API is public. ``options`` are the other fields (``cleanup``,
        ``max_message_bytes``, a subclass's own fields, ...)."""
        spec = registry.service(name)
        return cls(
            name=name,
            bind=spec.listen(cfg),
            servicers=servicers,
            node=cfg.node.name,
            metrics_bind=spec.metrics(cfg),
            otlp_endpoint=cfg.telemetry.otlp_endpoint,
            sampling_ratio=cfg.telemetry.sampling_ratio,
            tls=None if spec.public else cfg.internal_tls,
            public=spec.public,
            gateway_may_call=spec.gateway_may_call,
            **options,
        )

    def __post_init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._telemetry: Telemetry | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._failed = asyncio.Event()
        self._fail_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        #: Why the service failed (see :meth:`fail`), or None.
        self.failure: str | None = None

    @property
    def health(self) -> health.aio.HealthServicer:
        return self._health

    async def start(self) -> None:
        provider = setup_tracing(
            service=self.name,
            node=self.node,
            otlp_endpoint=self.otlp_endpoint,
            sampling_ratio=self.sampling_ratio,
        )
        self._telemetry = Telemetry(tracer_provider=provider)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_receive_bytes or self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if self.max_concurrent_rpcs is not None:
            options.append(("grpc.http2.bdp_probe", 0))
        if self.max_connections is not None:
            options.append(("grpc.max_allowed_incoming_connections", self.max_connections))
        if self.max_streams_per_connection is not None:
            options.append(("grpc.max_concurrent_streams", self.max_streams_per_connection))
        # gRPC's own default is 120 s: any local process could hold a descriptor of an
        # internal service per connection it opens and never handshakes on
        handshake_ms = (
            HANDSHAKE_TIMEOUT_MS if self.idle_timeout_ms is None else self.idle_timeout_ms
        )
        options.append(("grpc.server_handshake_timeout_ms", handshake_ms))
        if self.idle_timeout_ms is not None:
            options.append(("grpc.max_connection_idle_ms", self.idle_timeout_ms))
        server = grpc.aio.server(
            # Outermost first: the span covers the metrics and the log line.
            interceptors=[
                TracingInterceptor(
                    roots=self.public,
                    client_sampling_ratio=self.sampling_ratio if self.public else None,
                ),
                MetricsInterceptor(self.name),
                AccessLogInterceptor(),
                *(
                    [GatewayRoleInterceptor(self.gateway_may_call)]
                    if self.tls is not None and self.gateway_may_call is not None
                    else []
                ),
                *self.interceptors,
            ],
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            options=options,
        )
        for servicer in self.servicers:
            servicer.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [s.name for s in self.servicers]
        reflection.enable_server_reflection(
            [*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server
        )
        try:
            if self.tls is not None:
                self.port = server.add_secure_port(self.bind, self.tls.server_credentials())
            elif self.public or is_loopback(self.bind):
                self.port = server.add_insecure_port(self.bind)
            else:
                raise OSError(
                    f"{self.name}: refusing to listen on {self.bind} without TLS: an internal "
                    "service listens beyond loopback only with mutual TLS ([tls] in the config)"
                )
        except RuntimeError as exc:
            raise OSError(f"{self.name}: cannot listen on {self.bind}: {exc}") from None
        if self.port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.bind} (address in use?)")
        await server.start()
        self._server = server
        try:
            started = start_metrics(self.metrics_bind)
        except OSError as exc:
            await server.stop(None)
            self._server = None
            raise OSError(
                f"{self.name}: cannot serve metrics on {self.metrics_bind} "
                f"([{self.name}] metrics in the config): {exc.strerror or exc}"
            ) from None
        if started is not None:
            self._telemetry.metrics_server, self._telemetry.metrics_thread = started
            self.metrics_port = self._telemetry.metrics_port
        for name in ("", *names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        SERVING.labels(self.name).set(1)
        self._lag_task = asyncio.create_task(
            watch_loop_lag(self.name), name=f"{self.name}-loop-lag"
        )
        host = self.bind.rpartition(":")[0]
        log.info(
            "serving",
            extra={"fields": {"address": f"{host}:{self.port}", "metrics_port": self.metrics_port}},
        )

    async def stop(self) -> None:
        """Not serving → drain and stop → service cleanup → flush telemetry. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        log.info("shutting down", extra={"fields": {"grace_s": self.grace}})
        await self._health.enter_graceful_shutdown()
        SERVING.labels(self.name).set(0)
        deadline = time.monotonic() + self.grace
        if self._server is not None:
            await self._server.stop(self.grace)
            await self._wait_for_handlers(deadline)
        if self._lag_task is not None:
            self._lag_task.cancel()
        for cleanup in self.cleanup:
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup failed")
        if self._telemetry is not None:
            self._telemetry.shutdown()
        log.info("stopped")
        self._stopped.set()

    async def _wait_for_handlers(self, deadline: float) -> None:
        """Wait (until ``deadline``, or HANDLER_UNWIND_S) for RPC handlers still running
        after the server stopped.

        gRPC's core counts a call finished once its status is sent, so ``server.stop``
        can return while a handler still runs (its ``finally``, or our interceptors'
        bookkeeping after an abort; grpc/grpc#37239). Cleanup must not pull resources
        from under them, and the loop's end would cancel them mid-way (and gRPC, whose
        per-call task awaits the handler's, log the cancellation as an error). gRPC keeps
        those tasks private; a handler's is found by its coroutine, ``_handle_exceptions``,
        and its name, ``HandleExceptions[/<service>/<method>]``, names one of this
        server's services (tests run several servers on one loop).
        """
        services = {s.name for s in self.servicers} | {HEALTH_SERVICE, reflection.SERVICE_NAME}
        running = [
            task
            for task in asyncio.all_tasks()
            if not task.done()
            and getattr(task.get_coro(), "__name__", "") == HANDLER_CORO
            and _handler_service(task.get_name()) in services
        ]
        if running:
            # Calls still running at the grace's end were cancelled: let them unwind.
            timeout = max(HANDLER_UNWIND_S, deadline - time.monotonic())
            _, late = await asyncio.wait(running, timeout=timeout)
            if late:
                log.warning(
                    "handlers still running after the grace period",
                    extra={"fields": {"handlers": len(late)}},
                )
        await asyncio.sleep(0)  # gRPC's per-call tasks collect the finished handlers

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def fail(self, reason: str) -> None:
        """The service cannot go on: NOT_SERVING now, then :meth:`run` stops and raises.

        Safe to call from any task of the event loop; the first reason wins.
        """
        if self.failure is None:
            self.failure = reason
            SERVING.labels(self.name).set(0)
            self._failed.set()
            self._fail_task = asyncio.get_running_loop().create_task(
                self._health.enter_graceful_shutdown()
            )

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT or :meth:`fail`, then stop in order.

        Raises :class:`ServiceFailed` after the stop when the service failed.
        """
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        waits = [
            asyncio.create_task(stop_requested.wait()),
            asyncio.create_task(self._failed.wait()),
        ]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        await self.stop()
        if self.failure is not None:
            raise ServiceFailed(f"{self.name} failed: {self.failure}")


async def watch_loop_lag(service: str, interval: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe, every ``interval``, how late the event loop wakes a timer (LOOP_LAG):
    whatever else the service answers meanwhile (a 429, a health check) waits as long."""
    loop = asyncio.get_running_loop()
    observe = LOOP_LAG.labels(service).observe
    while True:
        HEARTBEAT.beat()  # /healthz on the metrics port: the loop runs
        before = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - before - interval))


class ServiceFailed(Exception):
    """A service stopped because it could not go on (the process exits non-zero)."""


#: Open files every service asks for at start (up to the hard limit): the usual soft
#: limit, 1,024, was used up by as many idle connections to one of its ports.
SERVICE_OPEN_FILES = 65_536


def ensure_open_files(needed: int) -> int:
    """Raise this process's soft limit of open files to ``needed`` (up to the hard
    limit) when it is lower; the limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit", extra={"fields": {"error": str(exc)}})
    return int(soft)
