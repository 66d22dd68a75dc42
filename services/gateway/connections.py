"""The HTTP listener, bounded in connections: what a flood of idle or slow ones can hold.

aiohttp keeps a connection that never completes a request head for its keep-alive
timeout (an hour by default), and accepts connections until the process runs
out of file descriptors; then nobody gets in, the gateway's own calls to its
node included. :class:`LimitedSite` listens like ``web.TCPSite`` but answers
429 ``overloaded`` and closes a connection beyond ``max_connections`` in all,
or beyond ``max_per_client`` from one client address (so that one client
cannot take every slot; when all are taken, a client holding at least two fewer
connections than the address holding the most is admitted and that address's oldest
connection closed, so that a few addresses cannot keep everyone else out), and the
runner's keep-alive timeout
(``gateway.idle_timeout_ms``) closes a connection that has not sent a whole
request head that long after it opened or after its last answer. A connection whose
client takes none of what the gateway sends it for that long too is aborted (the
write deadline): aiohttp waits for a client to take its answer without a bound, and
closing a connection waits for its unsent bytes, so a client that never reads held
its connection, and its slot of ``max_connections``, for as long as it liked.

Each connection's aiohttp handler is a :class:`JsonErrorHandler`: what aiohttp answers
itself, before the application (a request it cannot parse), is the API's JSON error too.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import sys
import termios
import time
import weakref

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from cretoai.fairness import holder_to_evict
from services.gateway import metrics
from services.gateway.codec import dumps_bytes
from services.gateway.errors import ApiError

log = logging.getLogger(__name__)

#: How long a refused connection may take to read its answer before it is aborted, and
#: how many may do so at once (more are aborted at once, unanswered).
REFUSAL_LINGER_S = 1.0
MAX_LINGERING_REFUSALS = 64
#: File descriptors the gateway keeps beside its public connections: its channels to
#: the node's services, the listeners, logs, metrics scrapes, lingering refusals.
RESERVED_FDS = 256 + MAX_LINGERING_REFUSALS
#: How often a connection with unsent bytes is checked against its write deadline, at
#: most (a quarter of the deadline when that is shorter).
WRITE_CHECK_INTERVAL_S = 1.0
#: Connections aborted for their write deadline are logged at most this often.
WRITE_TIMEOUT_LOG_INTERVAL_S = 60.0


def _answer_429(message: str) -> bytes:
    body = dumps_bytes(ApiError("overloaded", message).body())
    head = (
        "HTTP/1.1 429 Too Many Requests\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refuse(asyncio.Protocol):
    """Answers 429 at once, then closes: sends its FIN after the answer and discards
    what the client sends until it closes (closing with unread input would reset the
    connection, and the client might lose the answer), for at most REFUSAL_LINGER_S."""

    def __init__(self, answer: bytes, lingering: set[_Refuse]) -> None:
        self._answer = answer
        self._lingering = lingering
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self._lingering) >= MAX_LINGERING_REFUSALS:  # a flood: no answer, no linger
            transport.abort()
            return
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._lingering.add(self)
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the refused request: not read

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lingering.discard(self)
        if self._timer is not None:
            self._timer.cancel()


#: An IPv6 client is counted by its network of this prefix length: a single host
#: commonly holds a whole /64 and can pick a new address in it for every connection.
IPV6_CLIENT_PREFIX = 64


def client_key(host: str) -> str:
    """What per-client limits count by: an IPv4 client's address (also when it arrives
    on a dual-stack listener, as ``::ffff:127.0.0.2``), an IPv6 client's /64 network
    (:data:`IPV6_CLIENT_PREFIX`); anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))


#: The API's error codes for what aiohttp's parser refuses, by status (else bad_request).
PARSER_ERROR_CODES = {413: "body_too_large", 431: "headers_too_large"}
#: The longest parser message an answer repeats (it may quote the client's bytes).
PARSER_MESSAGE_CHARS = 200


def _head_too_large(exc: BaseException | None) -> bool:
    """Whether aiohttp refused a request for its head's size (it answers those 400)."""
    if isinstance(exc, LineTooLong):
        return True
    return isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message)


class JsonErrorHandler(RequestHandler):
    """aiohttp's handler of one connection, but what aiohttp answers on its own (a request
    it cannot parse, a handler that fails outside the application) is the API's
    ``{"error": {"code", "message"}}`` JSON instead of aiohttp's text, and a request it
    cannot parse is counted and logged at debug level, not with a traceback at error
    level (any client could flood the log with those). The connection is closed."""

    __slots__ = ()

    @classmethod
    def of(cls, server: web.Server) -> JsonErrorHandler:
        """The handler ``server()`` would make (aiohttp builds it from the server's
        arguments, which it keeps as ``_kwargs``)."""
        return cls(server, loop=asyncio.get_running_loop(), **server._kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, too late
            raise ConnectionError("an answer was sent already, cannot send an error")
        if status >= 500:
            log.error("http: aiohttp failed a request", exc_info=exc)
            code, text = ("timeout", "the request timed out") if status == 504 else (
                "internal", "internal error")  # fmt: skip
        else:
            if status == 400 and _head_too_large(exc):
                status = 431
            code = PARSER_ERROR_CODES.get(status, "bad_request")
            text = " ".join((message or "").split())[:PARSER_MESSAGE_CHARS] or "bad request"
            metrics.HTTP_UNPARSABLE.labels(str(status)).inc()
            fields = {"status": status, "error": text}
            log.debug("http: unparsable request", extra={"fields": fields})
        response = web.Response(
            body=dumps_bytes({"error": {"code": code, "message": text}}),
            status=status,
            content_type="application/json",
            charset="utf-8",
        )
        response.force_close()
        return response


def _unacknowledged(transport: asyncio.Transport) -> int:
    """Bytes sent on the connection that its client has not acknowledged yet: what the
    kernel holds of them (Linux's SIOCOUTQ); 0 where it cannot tell."""
    sock = transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError):
        return 0
    return int.from_bytes(raw, sys.byteorder)


class _Admission(asyncio.Protocol):
    """One connection: once its client's address is known, aiohttp's handler for it
    (counted against that client) or a refusal; then every event goes to that one.

    An admitted connection is checked every so often against the write deadline
    (``write_timeout_s``): while the gateway has bytes for it that the socket does not
    take, what its client has not acknowledged must shrink within that time, else the
    connection is aborted. A slow reader makes progress and is not cut; one that reads
    nothing at all is."""

    def __init__(self, site: LimitedSite) -> None:
        self._site = site
        self._inner: asyncio.Protocol | None = None
        self._client: str | None = None
        self._transport: asyncio.Transport | None = None
        self._check: asyncio.TimerHandle | None = None
        #: Bytes waiting for the client at the last check (0: none), and since when
        #: none of them has been taken.
        self._waiting = 0
        self._stalled_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        site = self._site
        site.arriving.discard(self)
        peer = transport.get_extra_info("peername")
        client = client_key(str(peer[0])) if peer else ""
        if len(site.by_client.get(client, ())) >= site.max_per_client:
            metrics.CONNECTIONS_REFUSED.labels(api="http", limit="per_client").inc()
            self._inner = _Refuse(site.per_client_answer, site.lingering)
        elif site.full() and not site.make_room(client):
            metrics.CONNECTIONS_REFUSED.labels(api="http", limit="total").inc()
            self._inner = _Refuse(site.total_answer, site.lingering)
        else:
            site.by_client.setdefault(client, {})[self] = None
            self._client = client
            self._inner = JsonErrorHandler.of(site.runner_server())
            assert isinstance(transport, asyncio.Transport)
            self._transport = transport
            self._schedule_check()
        self._inner.connection_made(transport)

    def _schedule_check(self) -> None:
        interval = min(WRITE_CHECK_INTERVAL_S, self._site.write_timeout_s / 4)
        self._check = asyncio.get_running_loop().call_later(interval, self._check_writes)

    def _check_writes(self) -> None:
        """Aborts the connection if its client has taken nothing for the write deadline."""
        transport = self._transport
        assert transport is not None
        now = time.monotonic()
        unsent = transport.get_write_buffer_size()  # what the socket did not take
        if unsent == 0:
            self._waiting = 0
        else:
            waiting = unsent + _unacknowledged(transport)
            if self._waiting == 0 or waiting < self._waiting:  # it began, or moved
                self._stalled_since = now
            self._waiting = waiting
            if now - self._stalled_since >= self._site.write_timeout_s:
                self._site.write_timed_out(self._client or "", waiting)
                transport.abort()  # connection_lost follows, soon
                return
        self._schedule_check()

    def data_received(self, data: bytes) -> None:
        assert self._inner is not None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert self._inner is not None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        assert self._inner is not None
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        assert self._inner is not None
        self._inner.resume_writing()

    def evict(self) -> None:
        """Close the connection at once for a client holding fewer (its slot is free now)."""
        self._release()
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, soon

    def _release(self) -> None:
        """Give the connection's slot back (once)."""
        client = self._client
        if client is None:
            return
        self._client = None
        site = self._site
        held = site.by_client.get(client)
        if held is not None:
            held.pop(self, None)
            if not held:
                del site.by_client[client]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self._transport = None
        self._release()
        if self._inner is not None:
            self._inner.connection_lost(exc)


class LimitedSite(web.BaseSite):
    """A TCP listener for ``runner`` holding at most ``max_connections`` connections,
    and at most ``max_per_client`` from one client address; one whose client takes
    nothing the gateway sends it for ``write_timeout_s`` is aborted."""

    __slots__ = (
        "_host",
        "_max",
        "_port",
        "_unlogged_write_timeouts",
        "_write_timeouts_logged_at",
        "arriving",
        "by_client",
        "lingering",
        "max_per_client",
        "per_client_answer",
        "total_answer",
        "write_timeout_s",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        max_per_client: int,
        write_timeout_s: float,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max = max_connections
        self.max_per_client = max_per_client
        self.write_timeout_s = write_timeout_s
        self._unlogged_write_timeouts = 0
        self._write_timeouts_logged_at = -WRITE_TIMEOUT_LOG_INTERVAL_S
        self.total_answer = _answer_429(
            f"the gateway holds gateway.max_connections ({max_connections}) HTTP "
            "connections; retry with backoff"
        )
        self.per_client_answer = _answer_429(
            f"this client holds gateway.max_connections_per_client ({max_per_client}) HTTP "
            "connections; close one, or retry with backoff"
        )
        #: Open connections (those handed to aiohttp), oldest first, by client address.
        self.by_client: dict[str, dict[_Admission, None]] = {}
        self.lingering: set[_Refuse] = set()
        #: Connections accepted and not yet handed to aiohttp (asyncio accepts several
        #: in one turn of the loop, and tells each protocol of its connection later);
        #: weak, so that one whose transport failed to start is not counted for ever.
        self.arriving: weakref.WeakSet[_Admission] = weakref.WeakSet()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def write_timed_out(self, client: str, waiting: int) -> None:
        """Counts a connection aborted for its write deadline; logs at most once every
        WRITE_TIMEOUT_LOG_INTERVAL_S (any client can make the gateway abort them)."""
        metrics.HTTP_WRITE_TIMEOUTS.inc()
        self._unlogged_write_timeouts += 1
        now = time.monotonic()
        if now - self._write_timeouts_logged_at < WRITE_TIMEOUT_LOG_INTERVAL_S:
            return
        fields = {
            "aborted": self._unlogged_write_timeouts,  # since the last such line
            "last_client": client,
            "last_waiting_bytes": waiting,
        }
        log.warning(
            "http: connections aborted: their clients took nothing sent to them for "
            f"gateway.idle_timeout_ms ({self.write_timeout_s:g} s)",
            extra={"fields": fields},
        )
        self._unlogged_write_timeouts = 0
        self._write_timeouts_logged_at = now

    def runner_server(self) -> web.Server:
        server = self._runner.server
        assert server is not None
        return server

    def full(self) -> bool:
        """Whether every one of ``max_connections`` is held (evicted ones not counted)."""
        return sum(map(len, self.by_client.values())) >= self._max

    def make_room(self, client: str) -> bool:
        """Close the oldest connection of the client holding the most, if it holds at
        least two more than ``client`` (max-min fairness between client addresses)."""
        top = holder_to_evict({c: len(held) for c, held in self.by_client.items()}, client)
        if top is None:
            return False
        victim = next(iter(self.by_client[top]))
        metrics.CONNECTIONS_EVICTED.inc()
        victim.evict()
        return True

    def _protocol(self) -> asyncio.Protocol:
        # who the client is is known only once connected (_Admission decides then); here
        # only a flood beyond what lingering refusals may add is turned away unanswered
        if len(self.runner_server().connections) + len(self.arriving) >= (
            self._max + MAX_LINGERING_REFUSALS
        ):
            metrics.CONNECTIONS_REFUSED.labels(api="http", limit="total").inc()
            return _Refuse(self.total_answer, self.lingering)
        admission = _Admission(self)
        self.arriving.add(admission)
        return admission

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port)
