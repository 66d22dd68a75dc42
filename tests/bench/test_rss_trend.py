"""The memory target of bench.cluster_load (no cluster): RSS at most 400 MB per node and
flat over the second half of a >= 10-minute step at half the maximum rate."""

from __future__ import annotations

from typing import Any

import pytest

from bench.cluster_load import (
    DISTINCT_EVERY_S,
    RSS_FLAT_MB_PER_MIN,
    distinct_trend,
    rss_flat_at_half_max,
    rss_trend,
)

NODES = ("node1", "node2")


def series(seconds: int, mb_at: dict[str, Any]) -> list[dict[str, Any]]:
    """The sampler's rows, one a second: each node's RSS from ``mb_at[node](t)``; every
    17th second node2's scrape failed (None), as a starved metrics endpoint does."""
    rows = []
    for t in range(seconds):
        row: dict[str, Any] = {"t": t + 0.1}
        for node in NODES:
            mb = mb_at[node](t)
            # the consensus holds all the growth beyond 200 MB; storage stays at 200
            services = {"storage": 200.0, "consensus": mb - 200.0}
            row[node] = (
                None
                if node == "node2" and t % 17 == 0
                else {"rss_mb": mb, "rss_mb_by_service": services}
            )
        rows.append(row)
    return rows


def step(rows: list[dict[str, Any]], warmup: float, window: float, finalized: float) -> Any:
    return {
        "offered_rate": round(finalized),
        "finalized_throughput": finalized,
        "window_s": window,
        "warmup_s": warmup,
        "nodes": {n: {"rss_trend": rss_trend(rows, n, warmup, warmup + window)} for n in NODES},
    }


def test_a_flat_node_and_a_growing_one() -> None:
    # node1 grows 30 MB in the first minutes, then holds (a cache filling to its cap);
    # node2 grows 2 MB a minute all along
    rows = series(
        630,
        {"node1": lambda t: 300 + min(t, 120) / 4, "node2": lambda t: 310 + 2 * t / 60},
    )
    flat = rss_trend(rows, "node1", 30, 630)
    growing = rss_trend(rows, "node2", 30, 630)
    assert flat is not None and growing is not None
    assert flat["max_mb"] == 330.0 and flat["second_half_slope_mb_per_min"] == 0.0
    assert flat["second_half_growth_mb"] == 0.0
    assert growing["second_half_slope_mb_per_min"] == pytest.approx(2.0, abs=0.01)
    # from the median of minute 5-6 of the window to that of its last minute: 4 minutes
    assert growing["second_half_growth_mb"] == pytest.approx(8.0, abs=0.1)
    assert growing["max_mb"] == pytest.approx(310 + 2 * 629 / 60, abs=0.1)
    by_service = growing["second_half_slope_mb_per_min_by_service"]
    assert by_service["storage"] == 0.0
    assert by_service["consensus"] == pytest.approx(2.0, abs=0.01)
    # the peak is at the window's last sample, where the consensus holds all above 200 MB
    assert growing["at_max_t"] == pytest.approx(599, abs=1)
    assert growing["at_max_by_service"] == {
        "storage": 200.0,
        "consensus": round(growing["max_mb"] - 200, 1),
    }
    assert growing["max_mb_by_service"] == growing["at_max_by_service"]
    # warm-up samples are not the window's: a spike before it does not count
    spiky = series(630, {"node1": lambda t: 900 if t < 30 else 300, "node2": lambda t: 300})
    trend = rss_trend(spiky, "node1", 30, 630)
    assert trend is not None and trend["max_mb"] == 300.0


def test_too_few_samples_is_no_trend() -> None:
    rows = series(40, {"node1": lambda t: 300, "node2": lambda t: 300})
    assert rss_trend(rows, "node1", 0, 18) is None  # 9 samples in the second half
    assert rss_trend(rows, "node1", 0, 20) is not None  # 10
    # node2's failed scrapes leave 9 of its 10 samples in [10, 20)
    assert rss_trend(rows, "node2", 0, 20) is None


def test_the_target_is_judged_only_at_half_the_maximum() -> None:
    level = series(630, {"node1": lambda t: 350, "node2": lambda t: 360})
    rising = series(630, {"node1": lambda t: 350, "node2": lambda t: 300 + 1.5 * t / 60})
    high = series(630, {"node1": lambda t: 350, "node2": lambda t: 401})
    at_half_flat = step(level, 30, 600, 135.0)
    at_half_rising = step(rising, 30, 600, 135.0)
    at_half_high = step(high, 30, 600, 135.0)

    verdict = rss_flat_at_half_max([at_half_flat], 270.0)
    assert verdict["met"] is True and verdict["maximum_rate"] == 270.0
    (measured,) = verdict["measured"]
    assert measured["max_mb"] == 360.0 and measured["flat_and_under"] is True
    rising_verdict = rss_flat_at_half_max([at_half_rising], 270.0)
    assert rising_verdict["met"] is False
    assert rising_verdict["measured"][0]["slope_mb_per_min"] > RSS_FLAT_MB_PER_MIN
    assert rss_flat_at_half_max([at_half_high], 270.0)["met"] is False
    # one long step at half the maximum that fails is enough to fail
    assert rss_flat_at_half_max([at_half_flat, at_half_rising], 270.0)["met"] is False

    # not judged: a long step far from half the maximum, no maximum, or only short steps
    far = rss_flat_at_half_max([at_half_rising], 600.0)
    assert far["met"] is None and "300/s" in far["note"] and far["measured"]
    assert rss_flat_at_half_max([at_half_flat], None)["met"] is None
    short = step(series(130, {"node1": lambda t: 350, "node2": lambda t: 999}), 10, 120, 135.0)
    unjudged = rss_flat_at_half_max([short], 270.0)
    assert unjudged["met"] is None and unjudged["measured"] is None


def test_the_node_memory_each_page_once_is_reported_not_judged() -> None:
    rows = series(630, {"node1": lambda t: 350, "node2": lambda t: 420})
    over = step(rows, 30, 600, 135.0)
    # unreadable frame numbers (not root): nothing reported
    assert rss_flat_at_half_max([over], 270.0)["measured"][0]["end_mb_each_page_once"] is None
    over["nodes"]["node1"]["resident_mb_end_distinct"] = 240.5
    over["nodes"]["node2"]["resident_mb_end_distinct"] = 290.0
    verdict = rss_flat_at_half_max([over], 270.0)
    assert verdict["measured"][0]["end_mb_each_page_once"] == 290.0
    # the sum of RSS is what is judged: 420 MB fails though each page once is under 400
    assert verdict["met"] is False


def distinct_series(seconds: int, mb_at: dict[str, Any]) -> list[dict[str, Any]]:
    """The sampler's ``distinct`` rows, one every DISTINCT_EVERY_S; node2's frame numbers
    unreadable (None) in every third."""
    rows = []
    for i in range(int(seconds / DISTINCT_EVERY_S)):
        t = i * DISTINCT_EVERY_S + 0.3
        row: dict[str, Any] = {"t": t}
        for node in NODES:
            row[node] = None if node == "node2" and i % 3 == 0 else mb_at[node](t)
        rows.append(row)
    return rows


def test_each_page_once_is_sampled_over_the_window_and_judged_beside() -> None:
    # node1: a cache filling then flat; node2: 3 MB a minute, with a spike before the window
    rows = distinct_series(
        630,
        {
            "node1": lambda t: 250 + min(t, 120) / 4,
            "node2": lambda t: 900 if t < 30 else 260 + 3 * t / 60,
        },
    )
    flat, rising = distinct_trend(rows, "node1", 30, 630), distinct_trend(rows, "node2", 30, 630)
    assert flat is not None and rising is not None
    assert flat["max_mb"] == 280.0 and flat["second_half_slope_mb_per_min"] == 0.0
    assert rising["second_half_slope_mb_per_min"] == pytest.approx(3.0, abs=0.01)
    assert rising["max_mb"] < 300  # the warm-up's 900 is not the window's
    assert distinct_trend(rows, "node1", 0, 80) is None  # 4 samples in the second half

    level = series(630, {"node1": lambda t: 420, "node2": lambda t: 380})
    over = step(level, 30, 600, 135.0)
    over["nodes"]["node1"]["resident_distinct_trend"] = flat
    over["nodes"]["node2"]["resident_distinct_trend"] = rising
    (measured,) = rss_flat_at_half_max([over], 270.0)["measured"]
    assert measured["max_mb_each_page_once"] == rising["max_mb"]
    assert measured["slope_mb_per_min_each_page_once"] == rising["second_half_slope_mb_per_min"]
    assert measured["flat_and_under_each_page_once"] is False  # node2 grows
    over["nodes"]["node2"]["resident_distinct_trend"] = flat
    verdict = rss_flat_at_half_max([over], 270.0)
    assert verdict["measured"][0]["flat_and_under_each_page_once"] is True
    assert verdict["met"] is False  # the sum (420 MB) is still what is judged
    del over["nodes"]["node2"]["resident_distinct_trend"]  # a node unreadable: not reported
    (measured,) = rss_flat_at_half_max([over], 270.0)["measured"]
    assert measured["max_mb_each_page_once"] is None
    assert "flat_and_under_each_page_once" not in measured
