"""The public listeners against connections that are idle, slow or too many (slowloris).

Each test holds raw sockets or gRPC channels of its own against a real gateway and
fails when its bound is missing: aiohttp keeps a connection that never completes
its request head for an hour, waits for a body forever, and accepts connections
until the process runs out of file descriptors; gRPC waits 120 s for a handshake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import grpc
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import REGISTRY

from cretoai.config import NodeConfig
from cretoai.v1 import consensus_pb2, gateway_pb2_grpc
from services.gateway import rest
from services.gateway.rest import MAX_HEADER_BYTES, MAX_HEADERS, client_of
from tests.conftest import REPO
from tests.gateway.support import TIMEOUT, Node, raw_vertex, start_node


async def _connect(
    port: int, source: str = "127.0.0.1", *, rcvbuf: int | None = None
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting: it sets the window the client offers
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    sock.bind((source, 0))  # another loopback address: another client
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


async def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a kept-alive connection and read its whole answer."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    received = b""
    async with asyncio.timeout(TIMEOUT):
        while b"\r\n\r\n" not in received:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, f"closed before an answer: {received!r}"
            received += chunk
        status, headers, body = _parse(received)
        while len(body) < int(headers["content-length"]):
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "closed in the middle of an answer"
            body += chunk
    return status, headers, body


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _until(check: Callable[[], bool]) -> None:
    """Until ``check()`` holds (a metric the gateway sets as it goes; bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not check():
        assert loop.time() < deadline, "the gateway's metric did not get there"
        await asyncio.sleep(0.01)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


async def test_a_connection_that_never_completes_its_head_is_closed(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """Half a request head, then nothing: closed once ``gateway.idle_timeout_ms`` has
    passed, and so is a kept-alive connection idle that long after its answer; one
    that sends its next request in time is served."""
    async with start_node(make_config(idle_timeout_ms=600)) as node:
        loop = asyncio.get_running_loop()
        slow = await _connect(node.gateway.http_port)
        sockets.append(slow)
        await loop.sock_sendall(slow, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        idle = await _connect(node.gateway.http_port)
        sockets.append(idle)
        assert (await _exchange(idle, HEALTH))[0] == 200
        busy = await _connect(node.gateway.http_port)
        sockets.append(busy)
        started = loop.time()
        for _ in range(4):  # 1.2 s in all, each request within the idle timeout
            assert (await _exchange(busy, HEALTH))[0] == 200
            await asyncio.sleep(0.3)
        assert await _read_until_closed(slow) == b""
        assert await _read_until_closed(idle) == b""
        assert loop.time() - started >= 0.3  # closed by the timeout, not at once
        assert (await _exchange(busy, HEALTH))[0] == 200


async def test_a_body_that_does_not_arrive_in_time_gets_408(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """A submission that declares 100 KB and sends 1: 408 ``request_timeout`` after
    ``gateway.body_timeout_ms``, the connection closed, its bytes no longer held."""
    async with start_node(make_config(body_timeout_ms=500)) as node:
        loop = asyncio.get_running_loop()
        timeouts = _sample("cretoai_gateway_request_timeouts_total")
        sock = await _connect(node.gateway.http_port)
        sockets.append(sock)
        head = (
            "POST /v1/vertices HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{"
        )
        started = loop.time()
        await loop.sock_sendall(sock, head.encode())
        # held: what it sent, in a first reservation of 64 KiB (not the 100 KB declared)
        await _until(lambda: _sample("cretoai_gateway_request_bytes_in_progress") == 65_536)
        status, headers, body = _parse(await _read_until_closed(sock))
        assert loop.time() - started >= 0.45
        assert status == 408
        assert headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and "body_timeout_ms" in error["message"]
        assert _sample("cretoai_gateway_request_timeouts_total") == timeouts + 1
        assert _sample("cretoai_gateway_request_bytes_in_progress") == 0


async def test_http_connections_beyond_the_limit_get_429_and_are_closed(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """With ``gateway.max_connections`` kept-alive connections open, another gets 429
    ``overloaded`` and is closed; once one of them is gone, a new one is served."""
    async with start_node(make_config(max_connections=3)) as node:
        refused = _sample("cretoai_gateway_connections_refused_total", api="http", limit="total")
        for _ in range(3):
            sockets.append(await _connect(node.gateway.http_port))
            assert (await _exchange(sockets[-1], HEALTH))[0] == 200
        assert _sample("cretoai_gateway_http_connections") == 3
        extra = await _connect(node.gateway.http_port)
        sockets.append(extra)
        await asyncio.get_running_loop().sock_sendall(extra, HEALTH)
        status, headers, body = _parse(await _read_until_closed(extra))
        assert status == 429 and headers["retry-after"] == "1"
        error = json.loads(body)["error"]
        assert error["code"] == "overloaded" and "max_connections" in error["message"]
        assert (
            _sample("cretoai_gateway_connections_refused_total", api="http", limit="total")
            == refused + 1
        )
        sockets.pop(0).close()
        await _until(lambda: _sample("cretoai_gateway_http_connections") == 2)
        sockets.append(await _connect(node.gateway.http_port))
        assert (await _exchange(sockets[-1], HEALTH))[0] == 200


async def test_a_burst_of_connections_cannot_overshoot_the_limit(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """20 connections at once against ``gateway.max_connections`` 3: asyncio accepts
    several in one turn of its loop, before aiohttp counts any; 3 are served."""
    async with start_node(make_config(max_connections=3)) as node:
        burst = await asyncio.gather(*[_connect(node.gateway.http_port) for _ in range(20)])
        sockets.extend(burst)

        async def status(sock: socket.socket) -> int:
            try:
                return (await _exchange(sock, HEALTH))[0]
            except (AssertionError, ConnectionError):
                return 0  # closed unanswered

        statuses = await asyncio.gather(*[status(sock) for sock in burst])
        assert statuses.count(200) == 3
        assert set(statuses) <= {200, 429, 0}


async def test_one_client_cannot_take_every_http_connection(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """With ``gateway.max_connections_per_client`` connections open from one address,
    another from it gets 429 and is closed, while another client is still served."""
    async with start_node(make_config(max_connections=10, max_connections_per_client=2)) as node:
        port = node.gateway.http_port
        refused = _sample(
            "cretoai_gateway_connections_refused_total", api="http", limit="per_client"
        )
        for _ in range(2):
            sockets.append(await _connect(port))
            assert (await _exchange(sockets[-1], HEALTH))[0] == 200
        extra = await _connect(port)
        sockets.append(extra)
        await asyncio.get_running_loop().sock_sendall(extra, HEALTH)
        status, _, body = _parse(await _read_until_closed(extra))
        assert status == 429
        assert "max_connections_per_client" in json.loads(body)["error"]["message"]
        assert (
            _sample("cretoai_gateway_connections_refused_total", api="http", limit="per_client")
            == refused + 1
        )
        sockets.append(await _connect(port, source="127.0.0.2"))
        assert (await _exchange(sockets[-1], HEALTH))[0] == 200
        sockets.pop(0).close()  # its slot comes back to the first client
        await _until(lambda: _sample("cretoai_gateway_http_connections") == 2)
        sockets.append(await _connect(port))
        assert (await _exchange(sockets[-1], HEALTH))[0] == 200


async def test_grpc_connections_are_bounded_and_must_handshake_in_time(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """A TCP connection that never starts HTTP/2 is closed after
    ``gateway.idle_timeout_ms``; with ``gateway.max_connections`` channels connected,
    another cannot call until one of them is gone."""
    async with start_node(make_config(max_connections=2, idle_timeout_ms=1000)) as node:
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent = await _connect(node.gateway.port)
        sockets.append(silent)
        await _read_until_closed(silent)  # gRPC may say why first (a GOAWAY frame)
        assert loop.time() - started >= 0.9
        sockets.remove(silent)
        silent.close()

        target = f"127.0.0.1:{node.gateway.port}"
        # a connection each (channels of one process share connections by default)
        own = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(target, options=own) for _ in range(3)]
        try:
            for channel in channels[:2]:
                status = await gateway_pb2_grpc.GatewayStub(channel).GetStatus(
                    consensus_pb2.GetStatusRequest(), timeout=TIMEOUT
                )
                assert status.node_id
            third = gateway_pb2_grpc.GatewayStub(channels[2])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third.GetStatus(consensus_pb2.GetStatusRequest(), timeout=1.0)
            assert refused.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            await channels[0].close()
            status = await third.GetStatus(
                consensus_pb2.GetStatusRequest(), timeout=TIMEOUT, wait_for_ready=True
            )
            assert status.node_id
        finally:
            for channel in channels:
                await channel.close()


#: 200 pipelined requests for the 40-KB OpenAPI document: 8 MB of answers, more than the
#: kernel buffers of a loopback connection hold.
PIPELINED = b"GET /openapi.json HTTP/1.1\r\nHost: gateway\r\n\r\n" * 200
OPENAPI = (REPO / "services" / "gateway" / "openapi.json").read_bytes()
UPGRADE = (
    b"GET /v1/stream?from_seq=1 HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
CONNECTIONS = "cretoai_gateway_http_connections"
WRITE_TIMEOUTS = "cretoai_gateway_http_write_timeouts_total"


async def _held_then_dropped(before: float) -> float:
    """Until the gateway counts one connection more than ``before``, then until it
    counts ``before`` again; how long the second wait took (bounded)."""
    loop = asyncio.get_running_loop()
    await _until(lambda: _sample(CONNECTIONS) == before + 1)
    started = loop.time()
    await _until(lambda: _sample(CONNECTIONS) == before)
    return loop.time() - started


async def test_a_client_that_never_reads_its_answers_is_cut(
    make_config: Callable[..., NodeConfig],
    sockets: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pipelined requests from a client that never reads (a 4-KB receive buffer): aiohttp
    waited for it to take the answers without a bound, and the idle timeout only runs
    between requests, so the connection stayed open, and counted, for as long as the
    client liked (audit, 2026-12-04). Now aborted once it has taken nothing for
    ``gateway.idle_timeout_ms``, counted and no longer held."""
    async with start_node(make_config(idle_timeout_ms=1000)) as node:
        loop = asyncio.get_running_loop()
        before, timeouts = _sample(CONNECTIONS), _sample(WRITE_TIMEOUTS)
        sock = await _connect(node.gateway.http_port, rcvbuf=4096)
        sockets.append(sock)
        await loop.sock_sendall(sock, PIPELINED)
        assert await _held_then_dropped(before) >= 0.9  # by the deadline, not at once
        assert _sample(WRITE_TIMEOUTS) == timeouts + 1
        assert "http: connections aborted" in caplog.text
        received = await _read_until_closed(sock)  # what the kernel had taken, then the end
        assert received.count(b"HTTP/1.1 200 OK\r\n") < 200
        fresh = await _connect(node.gateway.http_port)
        sockets.append(fresh)
        assert (await _exchange(fresh, HEALTH))[0] == 200


async def test_a_client_that_reads_slowly_is_not_cut(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """The write deadline is on no progress, not on the whole answer: a client reading
    4 KiB every 0.2 s, far slower than the gateway sends, through four deadlines (the
    socket takes none of the gateway's next answer that long: the kernel's buffer of
    MBs drains by a third first), keeps its connection and gets every answer."""
    async with start_node(make_config(idle_timeout_ms=1000)) as node:
        loop = asyncio.get_running_loop()
        timeouts = _sample(WRITE_TIMEOUTS)
        sock = await _connect(node.gateway.http_port, rcvbuf=4096)
        sockets.append(sock)
        await loop.sock_sendall(sock, PIPELINED)
        received = b""
        for _ in range(20):  # a slow reader: 4 s
            await asyncio.sleep(0.2)
            received += await asyncio.wait_for(loop.sock_recv(sock, 4096), TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # then the rest, fast
        async with asyncio.timeout(TIMEOUT):
            while not received.endswith(OPENAPI) or received.count(b" 200 OK\r\n") < 200:
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, "the connection was closed before the last answer"
                received += chunk
        assert _sample(WRITE_TIMEOUTS) == timeouts


async def _finalize_history(node: Node, batches: int) -> None:
    """``batches`` finalized batches of 200 KB (about 270 KB each as JSON)."""
    for _ in range(batches):
        await node.consensus.finalize([raw_vertex(os.urandom(200_000))])


async def _subscriber_that_never_reads(node: Node, sockets: list[socket.socket]) -> socket.socket:
    """A WebSocket subscriber from seq 1 of 40 batches of history, with a 4-KB window,
    that never reads."""
    await _finalize_history(node, 40)
    sock = await _connect(node.gateway.http_port, rcvbuf=4096)
    sockets.append(sock)
    await asyncio.get_running_loop().sock_sendall(sock, UPGRADE)
    return sock


async def test_a_websocket_subscriber_that_never_reads_is_cut(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """A subscriber from seq 1 of 10 MB of history that never reads: aiohttp's heartbeat
    freed its stream slot after about 30 s, but its connection stayed open, and counted,
    for as long as the client liked (audit, 2026-12-04). Now aborted once it has taken
    nothing for ``gateway.idle_timeout_ms``; its slot is free again."""
    async with start_node(make_config(idle_timeout_ms=1000)) as node:
        before, timeouts = _sample(CONNECTIONS), _sample(WRITE_TIMEOUTS)
        sock = await _subscriber_that_never_reads(node, sockets)
        assert await _held_then_dropped(before) >= 0.9
        assert _sample(WRITE_TIMEOUTS) == timeouts + 1
        await _until(lambda: _sample("cretoai_gateway_stream_subscribers", api="websocket") == 0)
        assert (await _read_until_closed(sock)).startswith(b"HTTP/1.1 101 ")


async def test_a_websocket_whose_heartbeat_failed_is_aborted(
    make_config: Callable[..., NodeConfig],
    sockets: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However a stream ends, its connection is aborted WS_CLOSE_TIMEOUT_S later: when
    aiohttp's heartbeat gave up on a subscriber that never reads, it only closed the
    connection, which waits for the unsent bytes, for ever (only the gateway's own 4008
    close was followed by an abort). The write deadline is far off here."""
    monkeypatch.setattr(rest, "WS_HEARTBEAT_S", 0.4)
    monkeypatch.setattr(rest, "WS_CLOSE_TIMEOUT_S", 0.5)
    async with start_node(make_config(idle_timeout_ms=60_000)) as node:
        before, timeouts = _sample(CONNECTIONS), _sample(WRITE_TIMEOUTS)
        sock = await _subscriber_that_never_reads(node, sockets)
        await _held_then_dropped(before)
        assert _sample(WRITE_TIMEOUTS) == timeouts  # not the write deadline
        assert (await _read_until_closed(sock)).startswith(b"HTTP/1.1 101 ")


def test_the_open_files_limit_is_raised_to_what_the_bounds_need() -> None:
    """In a process whose soft limit is 256 (hard 4096): raised to the 1,000 needed;
    capped at the hard limit when more is needed (the gateway then warns at start)."""
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
        "from cretoai.serving import ensure_open_files\n"
        "print(ensure_open_files(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "print(ensure_open_files(100000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    assert out[0] == "1000 1000"
    assert out[1] == "4096 4096"


MALFORMED = {
    "a request line that is not HTTP": b"HELLO\r\n\r\n",
    "a bad method": b"G\x01T / HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "a header line too long": b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "a bad chunked body": b"POST /v1/vertices HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "two content lengths": b"POST /v1/vertices HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
}


@pytest.mark.parametrize("what", MALFORMED)
async def test_a_request_aiohttp_cannot_parse_gets_the_apis_json_error(
    make_config: Callable[..., NodeConfig],
    sockets: list[socket.socket],
    what: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp answers what its parser refuses itself, before the application's error
    middleware: it used to be ``text/plain`` ("400, message: ..."), unlike every other
    error of the API. Now the same ``{"error": {"code", "message"}}`` JSON, and the
    connection is closed; the gateway goes on serving."""
    async with start_node(make_config()) as node:
        before = {s: _sample("cretoai_gateway_http_unparsable_requests_total", status=s)
                  for s in ("400", "431")}  # fmt: skip
        caplog.clear()  # what the node logged as it started
        sock = await _connect(node.gateway.http_port)
        sockets.append(sock)
        await asyncio.get_running_loop().sock_sendall(sock, MALFORMED[what])
        raw = await _read_until_closed(sock)
        status, headers, body = _parse(raw)
        assert 400 <= status < 500, raw[:300]
        assert headers["content-type"].startswith("application/json"), raw[:300]
        error = json.loads(body)["error"]
        assert error["code"] == ("headers_too_large" if status == 431 else "bad_request")
        assert error["message"] and len(error["message"]) <= 300
        counted = _sample("cretoai_gateway_http_unparsable_requests_total", status=str(status))
        assert counted == before.get(str(status), 0.0) + 1
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        fresh = await _connect(node.gateway.http_port)
        sockets.append(fresh)
        assert (await _exchange(fresh, HEALTH))[0] == 200


@pytest.mark.parametrize(
    ("fields", "size", "status"),
    [(MAX_HEADERS - 2, MAX_HEADER_BYTES - 16, 200), (MAX_HEADERS, 16, 431), (1, 5000, 431)],
    ids=["at_the_bounds", "too_many_fields", "a_field_too_long"],
)
async def test_a_request_head_is_bounded(
    node: Node, sockets: list[socket.socket], fields: int, size: int, status: int
) -> None:
    """aiohttp's defaults took heads of 128 fields of 8 KiB: 1,024 connections each
    holding a 1-MB head grew the gateway from 131 MB to 2 GB (audit, 2026-12-04). Now
    at most 32 fields (Host among them) of at most 4 KiB; beyond, a JSON 431 and the
    connection closed."""
    extra = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * size) for i in range(fields))
    sock = await _connect(node.gateway.http_port)
    sockets.append(sock)
    request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + extra + b"\r\n"
    got, _, body = await _exchange(sock, request)
    assert got == status, body
    if status != 200:
        assert json.loads(body)["error"]["code"] == "headers_too_large"
        assert await _read_until_closed(sock) == b""


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:127.0.0.3", "127.0.0.3"),
    ],
)
def test_rest_limits_count_a_client_as_connections_and_grpc_do(peer: str, client: str) -> None:
    """The byte budgets and the submission slots counted a REST client by its exact
    address, while connections and the gRPC API count an IPv6 one by its /64: a client
    holding a /64 was that many clients to them."""

    class Transport:
        def get_extra_info(self, name: str, default: object = None) -> object:
            return (peer, 5000) if name == "peername" else default

    request = make_mocked_request("POST", "/v1/vertices", transport=Transport())
    assert client_of(request) == client


async def test_a_client_holding_fewer_connections_is_admitted_when_all_are_taken(
    make_config: Callable[..., NodeConfig], sockets: list[socket.socket]
) -> None:
    """``max_connections`` filled from a few addresses (8 of 128 each by default) kept every
    other client out. Now, with every slot taken, a client holding at least two fewer
    connections than the address holding the most is served, and that address's oldest
    connection is closed; the holder is not served again for it, and slots end up
    shared."""
    async with start_node(make_config(max_connections=4, max_connections_per_client=4)) as node:
        port = node.gateway.http_port
        evicted = _sample("cretoai_gateway_connections_evicted_total")
        held = []
        for _ in range(4):
            held.append(await _connect(port, source="127.0.0.2"))
            assert (await _exchange(held[-1], HEALTH))[0] == 200
        sockets.extend(held)
        newcomer = await _connect(port)
        sockets.append(newcomer)
        assert (await _exchange(newcomer, HEALTH))[0] == 200
        assert await _read_until_closed(held[0]) == b""  # the holder's oldest, closed
        assert _sample("cretoai_gateway_connections_evicted_total") == evicted + 1
        for sock in held[1:]:  # the others are still served
            assert (await _exchange(sock, HEALTH))[0] == 200
        again = await _connect(port, source="127.0.0.2")
        sockets.append(again)
        await asyncio.get_running_loop().sock_sendall(again, HEALTH)
        status, _, body = _parse(await _read_until_closed(again))
        assert status == 429 and "gateway.max_connections" in body.decode()
        second = await _connect(port)  # 1 against 3: room is made again
        sockets.append(second)
        assert (await _exchange(second, HEALTH))[0] == 200
        third = await _connect(port)  # 2 against 2: fair; refused
        sockets.append(third)
        await asyncio.get_running_loop().sock_sendall(third, HEALTH)
        assert _parse(await _read_until_closed(third))[0] == 429
        assert _sample("cretoai_gateway_connections_evicted_total") == evicted + 2
