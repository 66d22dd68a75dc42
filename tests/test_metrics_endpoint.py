"""The /metrics endpoint every service serves (cretoai/telemetry.py: start_metrics) is
bounded: prometheus_client's server gave each connection a thread of the service, with
no limit and no timeout."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator

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


def idle_connection(port: int) -> socket.socket:
    """A client that connects, starts a request and never finishes it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    return sock


def test_idle_connections_hold_a_bounded_number_of_threads_and_are_closed(
    endpoint: int,
) -> None:
    assert "cretoai_test_up 1.0" in scrape(endpoint)
    threads_before = threading.active_count()
    refused_before = telemetry.METRICS_REFUSED._value.get()
    idle = [idle_connection(endpoint) for _ in range(3 * telemetry.METRICS_MAX_CONNECTIONS)]
    try:
        # each held connection has a thread; the others are closed unanswered, at once
        closed_at_once = 0
        for sock in idle[telemetry.METRICS_MAX_CONNECTIONS :]:
            closed_at_once += sock.recv(1) == b""
        assert closed_at_once == 2 * telemetry.METRICS_MAX_CONNECTIONS
        assert threading.active_count() - threads_before <= telemetry.METRICS_MAX_CONNECTIONS
        assert telemetry.METRICS_REFUSED._value.get() - refused_before == closed_at_once
        # the held ones are closed by the server once silent for timeout_s
        for sock in idle[: telemetry.METRICS_MAX_CONNECTIONS]:
            assert sock.recv(1) == b""  # EOF, not our own 10-s socket timeout
    finally:
        for sock in idle:
            sock.close()
    assert "cretoai_test_up 1.0" in scrape(endpoint)  # served again
