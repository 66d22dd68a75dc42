"""The HTTP listener, bounded in connections: what a flood of idle or slow ones can hold.

aiohttp keeps a connection that never completes a request head for its keep-alive
timeout (an hour by default), and accepts connections until the process runs
out of file descriptors; then nobody gets in, the gateway's own calls to its
node included. :class:`LimitedSite` listens like ``web.TCPSite`` but answers a
connection beyond ``max_connections`` with 429 ``overloaded`` and closes it,
and the runner's keep-alive timeout (``gateway.idle_timeout_ms``) closes a
connection that has not sent a whole request head that long after it opened or
after its last answer.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from aiohttp import web

from services.gateway import metrics
from services.gateway.codec import dumps_bytes
from services.gateway.errors import ApiError

log = logging.getLogger(__name__)

#: How long a refused connection may take to read its answer before it is aborted.
REFUSAL_LINGER_S = 1.0
#: File descriptors the gateway keeps beside its public connections: its channels to
#: the node's services, the listeners, logs, metrics scrapes.
RESERVED_FDS = 256


def _refusal(max_connections: int) -> bytes:
    exc = ApiError(
        "overloaded",
        f"the gateway holds gateway.max_connections ({max_connections}) HTTP connections; "
        "retry with backoff",
    )
    body = dumps_bytes(exc.body())
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
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._lingering.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the refused request: not read

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lingering.discard(self)
        if self._timer is not None:
            self._timer.cancel()


class LimitedSite(web.BaseSite):
    """A TCP listener for ``runner`` holding at most ``max_connections`` connections."""

    __slots__ = ("_answer", "_host", "_lingering", "_max", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max = max_connections
        self._answer = _refusal(max_connections)
        self._lingering: set[_Refuse] = set()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) < self._max:
            return server()
        metrics.CONNECTIONS_REFUSED.labels(api="http").inc()
        if len(self._lingering) >= self._max:  # a flood of refusals: no answer, no linger
            return _Abort()
        return _Refuse(self._answer, self._lingering)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port)


class _Abort(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


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
