"""bench/cluster_load: a --client-batch that did not batch is said so, with the linger
that would have filled a request (the 2026-12-01 reading of --client-batch 16 missed it)."""

from __future__ import annotations

from bench.cluster_load import client_batch_warning


def step(vertices_per_request: float | None) -> dict[str, object]:
    return {"generator": {"vertices_per_request": vertices_per_request}}


def test_a_linger_shorter_than_the_gap_is_named_with_the_one_that_would_fill() -> None:
    # 100/s over 4 gateways: one vertex per gateway every 40 ms
    warning = client_batch_warning(16, 20, 100, 4, step(1.02))
    assert warning is not None
    assert "--client-batch 16 sent 1.02 vertices per request" in warning
    assert "every 40 ms" in warning and "20-ms linger" in warning
    assert "about 640 ms would" in warning


def test_no_warning_when_requests_were_filled_or_batching_was_off() -> None:
    assert client_batch_warning(16, 600, 100, 4, step(16.0)) is None
    assert client_batch_warning(16, 300, 100, 4, step(8.0)) is None  # half full is enough
    assert client_batch_warning(1, 20, 100, 4, step(1.0)) is None
    assert client_batch_warning(16, 20, 100, 4, {}) is None  # an older result
