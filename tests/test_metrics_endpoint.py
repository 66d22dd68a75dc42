"""The /metrics endpoint every service serves (cretoai/telemetry.py: start_metrics) is
bounded: prometheus_client's server gave each connection a thread of the service, with
no limit and no timeout."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from cretoai import telemetry


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A real metrics server on a free loopback port, idle connections closed after 1 s."""
    monkeypatch.setattr(telemetry.BoundedMetricsServer, "timeout_s", 1.0)
    registry = CollectorRegistry()
    Gauge("cretoai_test_up", "a gauge to scrape", registry=registry).set(1)
    started = telemetry.start_metrics("127.0.0.1:0", registry)
    assert started is not None
    server, thread = started
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def idle_connection(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A client at ``source`` (any loopback address) that connects, starts a request and
    never finishes it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    return sock


def scrape_from(port: int, source: str) -> bytes:
    """A whole scrape from ``source``: the answer's first bytes (b"" when refused)."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(64)


def test_idle_connections_hold_a_bounded_number_of_threads_and_are_closed(
    endpoint: int,
) -> None:
    """48 idle connections, METRICS_MAX_PER_CLIENT from each of 12 addresses in turn:
    16 are held, each with a thread, and shared between the addresses (each holds one or
    two: a newcomer holding two fewer than the largest holder takes that holder's oldest
    slot); the other 32 end at once, refused or evicted; the held ones are closed by
    the server once silent for timeout_s."""
    assert "cretoai_test_up 1.0" in scrape(endpoint)
    threads_before = threading.active_count()
    refused_before = telemetry.METRICS_REFUSED._value.get()
    evicted_before = telemetry.METRICS_EVICTED._value.get()
    addresses = 3 * telemetry.METRICS_MAX_CONNECTIONS // telemetry.METRICS_MAX_PER_CLIENT
    idle = [
        (source, idle_connection(endpoint, source))
        for source in (f"127.0.0.{2 + i}" for i in range(addresses))
        for _ in range(telemetry.METRICS_MAX_PER_CLIENT)
    ]
    try:

        def ended() -> float:
            refused = telemetry.METRICS_REFUSED._value.get() - refused_before
            return float(refused + telemetry.METRICS_EVICTED._value.get() - evicted_before)

        deadline = time.monotonic() + 10
        while ended() < 2 * telemetry.METRICS_MAX_CONNECTIONS:  # the server accepts them
            assert time.monotonic() < deadline, f"only {ended()} ended"
            time.sleep(0.02)
        assert ended() == 2 * telemetry.METRICS_MAX_CONNECTIONS
        assert telemetry.METRICS_EVICTED._value.get() > evicted_before
        ready, _, _ = select.select([sock for _, sock in idle], [], [], 0.5)
        assert all(sock.recv(1) == b"" for sock in ready)  # closed unanswered
        held = [source for source, sock in idle if sock not in ready]
        assert len(held) == telemetry.METRICS_MAX_CONNECTIONS
        assert set(Counter(held).values()) <= {1, 2} and len(set(held)) == addresses
        deadline = time.monotonic() + 10
        while threading.active_count() - threads_before > telemetry.METRICS_MAX_CONNECTIONS:
            assert time.monotonic() < deadline, "the evicted connections' threads stay"
            time.sleep(0.02)
        # the held ones are closed by the server once silent for timeout_s
        for _, sock in idle:
            if sock not in ready:
                assert sock.recv(1) == b""  # EOF, not our own 10-s socket timeout
    finally:
        for _, sock in idle:
            sock.close()
    assert "cretoai_test_up 1.0" in scrape(endpoint)  # served again


def test_one_client_cannot_take_every_slot(endpoint: int) -> None:
    """A client holding METRICS_MAX_PER_CLIENT idle connections gets no more, while a
    scraper at another address is served; once they end, the client is served again."""
    refused_before = telemetry.METRICS_REFUSED._value.get()
    held = [idle_connection(endpoint, "127.0.0.7") for _ in range(telemetry.METRICS_MAX_PER_CLIENT)]
    try:
        extra = [idle_connection(endpoint, "127.0.0.7") for _ in range(3)]
        try:
            assert [sock.recv(1) for sock in extra] == [b"", b"", b""]  # closed unanswered
        finally:
            for sock in extra:
                sock.close()
        assert telemetry.METRICS_REFUSED._value.get() - refused_before == 3
        assert scrape_from(endpoint, "127.0.0.8").startswith(b"HTTP/1.0 200")
    finally:
        for sock in held:
            sock.close()

    def served_again() -> bool:
        return scrape_from(endpoint, "127.0.0.7").startswith(b"HTTP/1.0 200")

    deadline = time.monotonic() + 10
    while not served_again():  # the server notices the closed connections in its threads
        assert time.monotonic() < deadline, "127.0.0.7 not served after its connections ended"
        time.sleep(0.05)


def test_scraping_faster_than_the_renders_allow_costs_no_more_renders() -> None:
    """An audit (2026-12-04): one local process scraping consensus's /metrics 120 times
    a second took 69 % of a core from it (a render costs a few ms under the GIL). Now an
    answer is served again for METRICS_CACHE_S and renders are bounded by a token
    bucket (the last answer again beyond it): 200 scrapes in a tight loop render at most
    the burst plus the rate over their time, every one answered with the metrics; and
    a scrape after the cache time sees a new value."""
    renders = []

    class Counting:
        def collect(self) -> Iterator[Any]:
            renders.append(time.monotonic())
            yield from gauge.collect()

    registry = CollectorRegistry()
    gauge = Gauge("cretoai_test_value", "a value", registry=None)
    gauge.set(1)
    registry.register(Counting())
    started = telemetry.start_metrics("127.0.0.1:0", registry)
    assert started is not None
    server, thread = started
    try:
        began = time.monotonic()
        answers = [scrape(server.server_port) for _ in range(200)]
        elapsed = time.monotonic() - began
        assert all("cretoai_test_value 1.0" in answer for answer in answers)
        most = telemetry.METRICS_RENDER_BURST + telemetry.METRICS_RENDERS_PER_S * elapsed + 1
        assert len(renders) <= most, (len(renders), elapsed)
        gauge.set(2)
        deadline = time.monotonic() + 10
        while "cretoai_test_value 2.0" not in scrape(server.server_port):
            assert time.monotonic() < deadline, "a new value never showed"
            time.sleep(telemetry.METRICS_CACHE_S / 2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthz_on_the_metrics_port_says_whether_the_event_loop_runs() -> None:
    """/healthz beside /metrics: 200 while the loop's heartbeat is recent, 503 once it is
    older than the stall limit (a stuck loop), apart from the public listeners, whose
    own limits answered a connection flood 429, /healthz included (an audit, 2026-12-04:
    an orchestrator probing there would restart a live gateway)."""
    heartbeat = telemetry.LoopHeartbeat()
    started = telemetry.start_metrics(
        "127.0.0.1:0", CollectorRegistry(), heartbeat=heartbeat, stall_s=5.0
    )
    assert started is not None
    server, thread = started
    url = f"http://127.0.0.1:{server.server_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        heartbeat.at -= 6.0  # the loop has not beaten for 6 s
        with pytest.raises(urllib.error.HTTPError) as stalled:
            urllib.request.urlopen(url, timeout=10)
        assert stalled.value.code == 503
        assert b"has not run for 6." in stalled.value.read()
        heartbeat.beat()
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_running_service_beats_its_heartbeat() -> None:
    """The services' loop-lag watcher is the heartbeat: a stall is what it measures."""
    import asyncio

    from cretoai.serving import watch_loop_lag

    telemetry.HEARTBEAT.at -= 60.0
    task = asyncio.create_task(watch_loop_lag("test", interval=0.01))
    try:
        await asyncio.sleep(0)  # one turn of the loop: the watcher's first beat
        assert telemetry.HEARTBEAT.age() < 1.0
    finally:
        task.cancel()
