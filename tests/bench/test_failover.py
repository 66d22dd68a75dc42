"""bench/failover.py: its arithmetic on a made-up trial (no cluster), and a smoke run of one
trial per mode on real 4-node clusters (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cluster_load import Outcomes
from bench.failover import (
    analyse,
    first_stable_run,
    primary_of,
    relative_events,
    summarise,
)
from tests.conftest import REPO


def test_the_first_stable_run() -> None:
    due = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    latency = [0.1, None, 0.1, 0.3, 0.1, 0.1]
    assert first_stable_run(due, latency, threshold_s=0.2, stable=2) == 4
    assert first_stable_run(due, latency, threshold_s=0.5, stable=4) == 2
    assert first_stable_run(due, latency, threshold_s=0.05, stable=1) is None
    assert first_stable_run([], [], threshold_s=1, stable=1) is None


def made_up_trial() -> Outcomes:
    """20 per s from t=0; the fault at t=5; nothing finalized for submissions due in
    [5, 7), which are answered at 7.5; 100 ms answers before and from t=8 on, 600 ms
    from t=7 to 8; one 429 at t=6."""
    out = Outcomes(due=[i / 20 for i in range(240)])
    for i, due in enumerate(out.due):
        out.sent[i] = due + 0.001
        if 5 <= due < 7:
            out.done[i], out.outcome[i], out.status[i] = 7.5, "finalized", 200
        elif 7 <= due < 8:
            out.done[i], out.outcome[i], out.status[i] = due + 0.6, "finalized", 200
        else:
            out.done[i], out.outcome[i], out.status[i] = due + 0.1, "finalized", 200
    six = out.due.index(6.0)
    out.done[six], out.outcome[six], out.status[six] = 6.01, "overloaded", 429
    return out


def test_the_analysis_of_a_trial() -> None:
    out = made_up_trial()
    fault = 4.98  # between two submissions
    figures = analyse(out, fault, threshold_s=0.2, stable=10, before_s=5)
    assert figures["first_final_s"] == pytest.approx(2.52)  # due at 5.0, answered at 7.5
    assert figures["first_final_submitted_s"] == pytest.approx(0.021)
    # the vertex due at 4.9 was answered at 5.0, after the fault
    assert figures["first_answer_after_fault_s"] == pytest.approx(0.02)
    assert figures["latency_recovered_s"] == pytest.approx(3.02)  # due at 8.0
    # the baseline: the second half of the pre-fault load, answered before the fault
    before = figures["before_fault"]
    assert before["submitted"] == 48  # due at 2.5 .. 4.85
    assert before["share_within_threshold"] == 1.0
    assert figures["baseline_threshold_ms"] == 200.0
    assert figures["baseline_recovered_s"] == pytest.approx(3.02)
    after = figures["after_fault"]
    assert after["submitted"] == 140 and after["finalized"] == 139
    assert after["http_status"] == {"200": 139, "429": 1}
    assert figures["in_flight_at_fault"]["count"] == 2  # due at 4.9 and 4.95
    by_t = {row["t"]: row for row in figures["timeline_per_s"]}
    assert by_t[-1]["finalized"] == 20 and by_t[1]["finalized"] == 19
    assert by_t[0]["max_ms"] == pytest.approx(2500, abs=1)


def test_a_trial_that_never_recovers() -> None:
    out = made_up_trial()
    for i, due in enumerate(out.due):
        if due >= 5:
            out.done[i], out.outcome[i], out.status[i] = float("nan"), "client_timeout", 0
    figures = analyse(out, 4.98, threshold_s=0.2, stable=10, before_s=5)
    assert figures["first_final_s"] is None
    assert figures["latency_recovered_s"] is None and figures["baseline_recovered_s"] is None


def test_the_summary_takes_medians_per_mode() -> None:
    trials: list[dict[str, Any]] = [
        {"mode": "kill", "first_final_s": 2.0, "restart": {"serving_s": 1.5}},
        {"mode": "kill", "first_final_s": 4.0, "restart": {"serving_s": 1.7}},
        {"mode": "kill", "first_final_s": 2.5, "restart": {"serving_s": 1.6}},
        {"mode": "stop", "first_final_s": 3.0, "view_change": {"seconds": 2.0}},
        {"mode": "stop", "error": "RuntimeError()"},
    ]
    summary = summarise(trials, 3.0)
    kill, stop = summary["kill"], summary["stop"]
    assert kill["first_final_s"] == {"median": 2.5, "values": [2.0, 4.0, 2.5]}
    assert kill["target"] == {
        "target": "first finalization <= 3 s after the fault",
        "met_every_trial": False,
        "met_by_median": True,
    }
    assert kill["restart_serving_s"]["median"] == 1.6
    assert kill["view_change_s"]["median"] is None
    assert stop["trials"] == 1 and stop["target"]["met_every_trial"] is True
    assert stop["view_change_s"]["median"] == 2.0 and "restart_serving_s" not in stop


def test_the_primary_is_found_by_replica_index() -> None:
    found = [
        {"view": 5, "n": 4, "replica": 0, "node_name": "node1"},
        {"view": 5, "n": 4, "replica": 1, "node_name": "node2"},
        {},  # did not answer: the cluster's order fills in
        {"view": 4, "n": 4, "replica": 3, "node_name": "node4"},  # behind
    ]
    view, primary, replicas = primary_of(found, ["node1", "node2", "node3", "node4"])
    assert (view, primary) == (5, 1) and replicas[primary] == "node2"
    assert replicas[2] == "node3"
    with pytest.raises(RuntimeError):
        primary_of([{}, {}], ["node1", "node2"])


def test_supervisor_events_relative_to_the_fault() -> None:
    events = ["1000.0 gateway serving", "1012.3 node1/consensus exited", "odd line"]
    assert relative_events(events, 1010.0) == [
        "-10.0s gateway serving",
        "+2.3s node1/consensus exited",
        "odd line",
    ]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_failover_smoke(tmp_path: Path) -> None:
    output = tmp_path / "failover.json"
    argv = [
        sys.executable, "-m", "bench.failover", "--repeats", "1", "--before", "3",
        "--after", "12", "--max-seconds", "240", "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(output.read_text())
    assert [t["mode"] for t in result["trials"]] == ["kill", "stop"]
    for trial in result["trials"]:
        assert trial["victim"] == trial["replicas"][str(trial["primary_replica"])]
        assert trial["victim"] not in trial["load_to"] and len(trial["load_to"]) == 3
        assert trial["before_fault"]["latency_ms"]["count"] > 0
        # the cluster finalized again after the fault, within the observation
        assert 0 < trial["first_final_s"] <= trial["observed_after_fault_s"] + 15
        assert trial["after_fault"]["finalized"] > 0
    kill, stop = result["trials"]
    # the supervisor restarted the killed consensus; the stopped one was resumed
    assert kill["restarts"][kill["victim"]] >= 1
    assert kill["restart"]["new_pid"] != kill["restart"]["old_pid"]
    assert 0 < kill["restart"]["spawned_s"] <= kill["restart"]["serving_s"]
    assert any("exited with code -9" in e for e in kill["supervisor_events"])
    assert stop["restarts"][stop["victim"]] == 0 and stop["resumed_s"] > 0
    assert set(result["summary"]) == {"kill", "stop"}
