"""The HTTP API of a node: REST, the WebSocket stream, probes, and the OpenAPI document.

Two middlewares wrap every request: :func:`observe` (outermost: a server span
continuing the caller's ``traceparent``, request metrics, a debug log line)
and :func:`errors` (every failure becomes ``{"error": {"code", "message"}}``
with its status; an unexpected exception is logged and answered 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import HttpVersion11, WSCloseCode, hdrs, web
from opentelemetry import context as otel_context
from opentelemetry import trace

from cretoai.telemetry import DEFAULT_SAMPLING_RATIO, extract_client_context
from services.gateway import metrics
from services.gateway.bounds import check_json_objects, check_json_size
from services.gateway.budget import Reservation
from services.gateway.codec import (
    batch_json,
    decode_hash,
    dumps_bytes,
    parse_batch,
    parse_bool,
    parse_json,
    parse_seq,
    parse_submission,
    record_json,
    refused_json,
    status_json,
    submitted_json,
)
from services.gateway.connections import LimitedSite, client_key
from services.gateway.core import MAX_BATCH_VERTICES, MAX_PAGE, PAGE_BYTES, Gateway, Refused
from services.gateway.errors import ApiError
from services.gateway.finality import SlowConsumer, Stream
from services.gateway.ratelimit import retry_after_header

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: A request head's bounds: its request line and each header field at most this many
#: bytes, and at most this many fields (trace context, auth and the usual client
#: headers fit; the whole head is then at most 128 KiB).
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 32

#: Close code sent to a WebSocket subscriber that fell too far behind (it may resume by seq).
WS_SLOW_CONSUMER = 4008
#: How long a closing WebSocket may take before its connection is aborted.
WS_CLOSE_TIMEOUT_S = 5.0
WS_HEARTBEAT_S = 20.0
#: Subscribers send nothing meaningful; bound what they may send.
WS_MAX_CLIENT_MESSAGE = 4096
#: In-flight HTTP requests get this long to finish at shutdown.
SHUTDOWN_TIMEOUT_S = 5.0
WS_CLOSE_CODES = {
    "shutting_down": WSCloseCode.GOING_AWAY,
    "storage_unavailable": WSCloseCode.TRY_AGAIN_LATER,
    "consensus_unavailable": WSCloseCode.TRY_AGAIN_LATER,
    "overloaded": WSCloseCode.TRY_AGAIN_LATER,  # evicted for a client holding fewer streams
}
#: What a 429 ``overloaded`` answer asks clients to wait before retrying (seconds).
RETRY_AFTER_S = "1"
#: A batch body may be this many times ``gateway.max_body_bytes``, up to BATCH_BODY_MAX.
BATCH_BODY_FACTOR = 4
BATCH_BODY_MAX = 8 * 1024 * 1024
_AIOHTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def _query(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once (a repeated one is ambiguous: 400)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError("bad_request", f"{name}: given {len(values)} times; give it once")
    return values[0] if values else None


def _resource(name: str) -> bytes:
    return importlib.resources.files("services.gateway").joinpath(name).read_bytes()


#: What answering a page of finalized batches may hold at its peak, reserved before it is
#: read: the page (about PAGE_BYTES), its JSON objects and its encoding (base64 makes
#: each about a third larger than the page).
PAGE_ANSWER_BYTES = 4 * PAGE_BYTES


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=dumps_bytes(data), status=status, content_type="application/json", charset="utf-8"
    )


#: Set on a request whose client stopped reading, or went away, mid-answer.
CLIENT_GONE = web.RequestKey("cretoai.client_gone", str)


async def _send(
    request: web.Request,
    response: web.Response,
    held: Reservation,
    fetched: int,
    *,
    timeout_s: float,
) -> web.Response:
    """Send a read's answer while its bytes are still reserved (a client that reads
    slowly keeps them held); ``fetched`` is what it was built from.

    A client that has not taken the whole answer within ``timeout_s`` loses its
    connection: a few that never read held the answer budget, and every other
    client's pages were refused (429) for as long as they kept their sockets open.
    One that resets the connection mid-answer is a client gone (logged as 499), not
    a failure of the gateway (it was logged as an error with a traceback, as a 500).
    """
    assert isinstance(response.body, bytes)  # json_response's
    held.resize(fetched + len(response.body))  # what it was built from, and the answer
    try:
        async with asyncio.timeout(timeout_s):
            await response.prepare(request)
            await response.write_eof()
    except (TimeoutError, ConnectionError) as exc:
        if request.transport is not None:
            request.transport.abort()  # the rest of the answer is not sent
        request[CLIENT_GONE] = type(exc).__name__  # (aiohttp's own write then fails quietly)
        log.debug("client gone mid-answer", extra={"fields": {"how": request[CLIENT_GONE]}})
    return response


def _abort_later(transport: asyncio.Transport | None) -> asyncio.TimerHandle | None:
    """Aborts ``transport`` WS_CLOSE_TIMEOUT_S from now (if still open then)."""
    if transport is None:
        return None
    return asyncio.get_running_loop().call_later(WS_CLOSE_TIMEOUT_S, transport.abort)


async def expect_continue(request: web.Request) -> web.Response | None:
    """``Expect: 100-continue`` is answered 100 Continue, as aiohttp does; any other
    expectation gets the API's JSON error (417). aiohttp's own answer was a plain-text
    ``Unknown Expect: ...``, before any middleware (an audit, 2026-12-04)."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no expectations
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp does
        return None
    metrics.HTTP_REQUESTS.labels(route_of(request), request.method, "417").inc()
    response = error_response(
        ApiError(
            "expectation_failed",
            f"Expect: {expect[:40]!r} is not supported (only 100-continue)",
        )
    )
    response.force_close()  # its body, if any, is not read
    return response


#: Requests a web page must not make in a visitor's name (submissions, stream
#: subscriptions): refused when their ``Origin`` is not in ``gateway.allowed_origins``.
_GUARDED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def origin_guard(allowed: tuple[str, ...]) -> Any:
    """The middleware refusing submissions and stream subscriptions from web pages of
    other origins than ``allowed`` (403 ``origin_not_allowed``)."""
    permitted = frozenset(origin.lower().rstrip("/") for origin in allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        guarded = request.method in _GUARDED_METHODS or (
            request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        )
        if origin is not None and guarded and origin.lower() not in permitted:
            return error_response(
                ApiError(
                    "origin_not_allowed",
                    f"a web page of origin {origin[:100]!r} may not submit or subscribe "
                    "here; gateway.allowed_origins lists the origins that may",
                )
            )
        return await handler(request)

    return middleware


def client_of(request: web.Request) -> str:
    """What per-client limits count a request by: its address, an IPv6 one by its /64
    (:func:`client_key`, as connections and the gRPC API count them)."""
    return client_key(request.remote or "")


def error_response(exc: ApiError, **extra: Any) -> web.Response:
    response = json_response({**exc.body(), **extra}, exc.http_status)
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = retry_after_header(exc.retry_after_s)
    elif exc.code == "overloaded":
        response.headers["Retry-After"] = RETRY_AFTER_S
    elif exc.code == "request_timeout":
        response.force_close()  # the rest of a slow body is not waited for
    return response


def route_of(request: web.Request) -> str:
    """The route template (bounded label cardinality), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observing(sampling_ratio: float) -> Any:
    """The :func:`observe` middleware of a gateway tracing ``sampling_ratio`` of requests."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await observe(request, handler, sampling_ratio=sampling_ratio)

    return middleware


#: The methods metrics and logs name; any other a client sends (the HTTP parser takes
#: dozens) is ``other``: an anonymous client added about 885 series, one per method and
#: route (an audit, 2026-12-04).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


async def observe(
    request: web.Request, handler: Handler, *, sampling_ratio: float
) -> web.StreamResponse:
    route = route_of(request)
    carrier = {key.lower(): value for key, value in request.headers.items()}
    span = trace.get_tracer("cretoai.gateway").start_span(
        f"{request.method} {route}",
        context=extract_client_context(carrier, sampling_ratio),  # type: ignore[arg-type]
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    started = time.perf_counter()
    status = 499  # the client went away before an answer
    try:
        response = await handler(request)
        status = 499 if CLIENT_GONE in request else response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        span.end()
        otel_context.detach(token)
        method = request.method if request.method in HTTP_METHODS else "other"
        metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
        if route != "/v1/stream":  # a stream lasts as long as its subscriber
            metrics.HTTP_LATENCY.labels(route, method).observe(elapsed)
        fields = {"method": method, "route": route, "status": status}
        log.log(
            logging.INFO if status >= 500 else logging.DEBUG,
            "http",
            extra={"fields": {**fields, "ms": round(elapsed * 1e3, 3)}},
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.settled())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _AIOHTTP_CODES.get(exc.status, "bad_request")
        message = exc.reason
        if exc.status == 404:
            message = f"no route {request.method} {request.path}"
        return json_response({"error": {"code": code, "message": message}}, exc.status)
    except Exception:
        log.exception("request failed", extra={"fields": {"path": request.path}})
        return error_response(ApiError("internal", "internal error"))


@dataclass(frozen=True)
class Closing:
    """How the gateway closes a WebSocket: code, reason text, and the metric label."""

    code: int
    reason: str
    label: str

    @classmethod
    def of(cls, exc: ApiError) -> Closing:
        code = WS_CLOSE_CODES.get(exc.code, WSCloseCode.INTERNAL_ERROR)
        return cls(code, f"{exc.code}: {exc.message}", exc.code)


#: What a submission's body reservation starts at; it grows as the body arrives.
FIRST_BODY_RESERVATION = 64 * 1024


class RestApi:
    """The aiohttp application of one gateway and its listening site."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        max_body_bytes: int,
        max_connections: int,
        max_connections_per_client: int,
        idle_timeout_s: float,
        body_timeout_s: float,
        sampling_ratio: float = DEFAULT_SAMPLING_RATIO,
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self._gw = gateway
        self._max_body = max_body_bytes
        self._max_connections = max_connections
        self._max_per_client = max_connections_per_client
        self._idle_timeout_s = idle_timeout_s
        self._body_timeout_s = body_timeout_s
        #: A batch's body limit (its vertices, binary, then fit one call to consensus).
        self.max_batch_body = max(
            max_body_bytes, min(BATCH_BODY_FACTOR * max_body_bytes, BATCH_BODY_MAX)
        )
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._openapi = _resource("openapi.json")
        self._docs = _resource("docs.html")
        app = web.Application(
            middlewares=[observing(sampling_ratio), errors, origin_guard(allowed_origins)],
            client_max_size=self.max_batch_body,
        )
        post = functools.partial(app.router.add_post, expect_handler=expect_continue)
        get = functools.partial(app.router.add_get, expect_handler=expect_continue)
        post("/v1/vertices", self.submit)
        post("/v1/vertices:batch", self.submit_batch)
        get("/v1/vertices/{hash}", self.vertex)
        get("/v1/finalized", self.finalized)
        get("/v1/status", self.status)
        # a WebSocket upgrade is a GET (RFC 6455), never a HEAD
        get("/v1/stream", self.stream, allow_head=False)
        get("/healthz", self.healthz)
        get("/readyz", self.readyz)
        get("/openapi.json", self.openapi)
        get("/docs", self.docs)
        self.app = app

    async def start(self, bind: str) -> None:
        host, _, port = bind.rpartition(":")
        runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            handle_signals=False,
            # closes a connection waiting for a whole request head this long after it
            # opened or after its last answer (aiohttp's default: an hour)
            keepalive_timeout=self._idle_timeout_s,
            # bodies are read as sent: a compressed one is refused (415), never inflated
            auto_decompress=False,
            # a head of at most 32 fields of 4 KiB (aiohttp's defaults, 128 of 8 KiB,
            # let 1,024 connections each hold a 1-MB head: 2 GB of gateway memory)
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        site = LimitedSite(
            runner,
            host.strip("[]"),
            int(port),
            max_connections=self._max_connections,
            max_per_client=self._max_per_client,
            # a connection whose client takes nothing sent to it for as long is aborted
            write_timeout_s=self._idle_timeout_s,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"gateway: cannot listen on {bind}: {exc.strerror}") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        server = runner.server
        assert server is not None
        metrics.HTTP_CONNECTIONS.set_function(lambda: len(server.connections))
        log.info("http serving", extra={"fields": {"address": f"{host}:{self.port}"}})

    async def stop(self) -> None:
        """Stop listening, then let in-flight requests finish (bounded)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ REST

    def _reserve(
        self, request: web.Request, limit: int
    ) -> contextlib.AbstractContextManager[Reservation]:
        """Hold a submission's body against ``gateway.max_request_bytes_in_progress``
        (:meth:`Gateway.hold_request_bytes`) before reading it: what it declares, up to
        FIRST_BODY_RESERVATION; :meth:`_body` holds more as more arrives.

        The whole declared size was held from the start until an audit (2026-12-04):
        uploads that declared 4 MiB and sent nothing, from 4 addresses at their share
        each, held the whole budget, and every submission on the node got 429 for as
        long as they were renewed. Now a silent upload holds 64 KiB: filling the budget
        takes every connection 8 addresses may open, or sending the bytes."""
        declared = request.content_length
        size = min(limit, FIRST_BODY_RESERVATION, declared if declared is not None else limit)
        return self._gw.hold_request_bytes(size, api="http", client=client_of(request))

    async def _body(self, request: web.Request, limit: int, reservation: Reservation) -> bytes:
        """The request body, at most ``limit`` bytes (413 ``body_too_large`` beyond),
        whole within ``gateway.body_timeout_ms`` (408 ``request_timeout``: a client that
        sends its body slowly, or not at all, holds its reservation no longer); the
        reservation grows ahead of what arrives (429 when the budget has no room)."""
        # every Content-Encoding header, every coding in each: one saying identity
        # beside another saying gzip was read as identity
        codings = [
            coding.strip().lower()
            for header in request.headers.getall(hdrs.CONTENT_ENCODING, ())
            for coding in header.split(",")
        ]
        encoding = next((c for c in codings if c != "identity"), "identity")
        if encoding != "identity":
            # aiohttp would inflate it while the reservation counts the compressed bytes
            raise ApiError(
                "unsupported_encoding",
                f"Content-Encoding {encoding[:40]!r}: send the body uncompressed",
            )
        too_large = ApiError("body_too_large", f"the body exceeds {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        declared = limit if request.content_length is None else request.content_length
        chunks = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout_s):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    if size > reservation.size:  # doubling: a few resizes per body
                        more = min(declared, max(size, 2 * reservation.size))
                        self._gw.grow_request_bytes(reservation, more, api="http")
                    chunks.append(chunk)
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except (ConnectionResetError, web.RequestPayloadError) as exc:
            # the client went away or broke off its body: its fault, not a 500
            raise ApiError("incomplete_body", f"the body ended after {size} bytes: {exc}") from None
        except TimeoutError:
            metrics.REQUEST_TIMEOUTS.inc()
            raise ApiError(
                "request_timeout",
                f"the body did not arrive within {self._body_timeout_s:g} s "
                f"(gateway.body_timeout_ms; {size} bytes came)",
            ) from None
        return b"".join(chunks)

    async def submit(self, request: web.Request) -> web.Response:
        wait = parse_bool(_query(request, "wait"), "wait")
        self._gw.refuse_if_shedding("http")  # before reading the body: shedding is cheap
        with self._reserve(request, self._max_body) as reservation:
            raw = await self._body(request, self._max_body, reservation)
            check_json_objects(raw)
            draft = parse_submission(parse_json(raw))
            result = await self._gw.submit(draft, wait=wait, api="http", client=client_of(request))
            if result.record is not None:
                return json_response(record_json(result.record))
            return json_response(submitted_json(result.hash, result.status, result.duplicate), 202)

    async def submit_batch(self, request: web.Request) -> web.Response:
        """Up to MAX_BATCH_VERTICES vertices: ``200 {"results": [...]}``, one per vertex in
        order, each what ``POST /v1/vertices`` would answer in its body.

        While the gateway sheds load the whole batch gets the 429 before its body is read
        (up to 64 vertices of hex JSON, ~1 MB, to parse for nothing), counted once."""
        wait = parse_bool(_query(request, "wait"), "wait")
        self._gw.refuse_if_shedding("http")
        with self._reserve(request, self.max_batch_body) as reservation:
            raw = await self._body(request, self.max_batch_body, reservation)
            check_json_size(raw, vertices=MAX_BATCH_VERTICES)
            drafts = parse_batch(parse_json(raw), max_vertices=MAX_BATCH_VERTICES)
            del raw
            answers = await self._gw.submit_batch(
                drafts, wait=wait, api="http", client=client_of(request)
            )
            results = []
            certificates: dict[bytes, Any] = {}  # shared by the vertices of a PBFT batch
            for answer in answers:
                if isinstance(answer, Refused):
                    results.append(refused_json(answer.hash, answer.error.body()))
                elif answer.record is not None:
                    results.append(record_json(answer.record, certificates))
                else:
                    results.append(submitted_json(answer.hash, answer.status, answer.duplicate))
            return json_response({"results": results})

    async def vertex(self, request: web.Request) -> web.Response:
        h = decode_hash(request.match_info["hash"], "hash")
        with self._gw.hold_answer_bytes(
            self._gw.vertex_answer_bytes, client=client_of(request)
        ) as held:
            record = await self._gw.vertex(h)
            response = json_response(record_json(record))
            return await _send(
                request, response, held, record.ByteSize(), timeout_s=self._body_timeout_s
            )

    async def finalized(self, request: web.Request) -> web.Response:
        from_seq = parse_seq(_query(request, "from_seq"), "from_seq", default=1)
        limit = parse_seq(_query(request, "limit"), "limit", default=MAX_PAGE)
        assert from_seq is not None and limit is not None
        with self._gw.hold_answer_bytes(PAGE_ANSWER_BYTES, client=client_of(request)) as held:
            entries = await self._gw.finalized(from_seq, limit)
            next_seq = entries[-1].batch.seq + 1 if entries else max(from_seq, 1)
            response = json_response(
                {"batches": [batch_json(e) for e in entries], "next_from_seq": next_seq}
            )
            fetched = sum(e.ByteSize() for e in entries)
            del entries
            return await _send(request, response, held, fetched, timeout_s=self._body_timeout_s)

    async def status(self, request: web.Request) -> web.Response:
        services = asyncio.ensure_future(self._gw.services())
        try:
            status = await self._gw.status()
        except ApiError as exc:
            return error_response(exc, services=await services)
        return json_response(status_json(status, await services))

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, checks = await self._gw.readiness()
        if ready:
            return json_response({"ready": True, "checks": checks})
        problems = ", ".join(f"{name} {state}" for name, state in checks.items())
        return error_response(ApiError("not_ready", problems), ready=False, checks=checks)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(body=self._docs, content_type="text/html", charset="utf-8")

    # ------------------------------------------------------------------ WebSocket

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Finalized batches as JSON text messages, from ``from_seq`` (else live ones)."""
        from_seq = parse_seq(_query(request, "from_seq"), "from_seq", default=None)
        ws = web.WebSocketResponse(
            heartbeat=WS_HEARTBEAT_S,
            max_msg_size=WS_MAX_CLIENT_MESSAGE,
            compress=False,
            timeout=WS_CLOSE_TIMEOUT_S,
        )
        if not ws.can_prepare(request).ok:
            raise ApiError("bad_request", "/v1/stream is a WebSocket: send an Upgrade request")
        stream = self._gw.hub.open_stream(from_seq, api="websocket", client=client_of(request))
        # However the stream ends (closed by the gateway, aiohttp's heartbeat, the
        # client), its connection is aborted WS_CLOSE_TIMEOUT_S later: closing it waits
        # for the bytes its client has not taken, and one that reads nothing (not even
        # its close frame) kept its connection for ever.
        transport = request.transport
        abort: asyncio.TimerHandle | None = None
        try:
            await ws.prepare(request)
            reader = asyncio.create_task(self._read_until_closed(ws))
            try:
                closing = await self._pump_until_ended(ws, stream, reader)
                if closing is not None and not ws.closed:
                    metrics.STREAM_CLOSED.labels(closing.label).inc()
                    abort = _abort_later(transport)  # sending the close frame may block
                    await ws.close(
                        code=closing.code, message=closing.reason.encode()[:123], drain=False
                    )
            finally:
                reader.cancel()
                await asyncio.wait((reader,))
        finally:
            stream.close()
            if abort is None:
                _abort_later(transport)
        return ws

    @staticmethod
    async def _read_until_closed(ws: web.WebSocketResponse) -> None:
        """Reading answers pings and the client's close; subscribers' messages are ignored."""
        async for _message in ws:
            pass

    async def _pump_until_ended(
        self, ws: web.WebSocketResponse, stream: Stream, reader: asyncio.Task[None]
    ) -> Closing | None:
        """Send until the client leaves (None) or the stream ends (how to close it)."""
        pump = asyncio.create_task(self._pump(ws, stream))
        ended = asyncio.create_task(stream.ended.wait())
        try:
            await asyncio.wait((reader, pump, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, ended):
                task.cancel()
            await asyncio.wait((pump, ended))
        if reader.done():
            return None
        if stream.overflowed:
            reason = f"slow consumer; resume with from_seq={stream.next_seq}"
            return Closing(WS_SLOW_CONSUMER, reason, "slow_consumer")
        if stream.end_error is not None:
            return Closing.of(stream.end_error)
        if not pump.cancelled():
            return pump.result()
        return Closing.of(ApiError("shutting_down", "the gateway is shutting down"))

    @staticmethod
    async def _pump(ws: web.WebSocketResponse, stream: Stream) -> Closing | None:
        try:
            async with contextlib.aclosing(stream.entries()) as entries:
                async for entry in entries:
                    await ws.send_str(entry.text())
        except SlowConsumer as exc:
            return Closing(WS_SLOW_CONSUMER, str(exc), "slow_consumer")
        except ApiError as exc:
            return Closing.of(exc)
        except ConnectionError:  # a reset, or aiohttp's "Connection lost" while blocked
            return None  # the client is gone
        except Exception:
            log.exception("finalized stream failed")
            return Closing(WSCloseCode.INTERNAL_ERROR, "internal error", "internal")
        return None
