"""bench/targets.py: how it judges each target against its floor (on made-up results
shaped as the benchmarks write them), that every option it passes still exists in the
benchmark it runs, and that a benchmark that fails is reported, not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.targets import (
    BELOW_FLOOR,
    MET,
    NOT_MEASURED,
    NOT_MET,
    SHARED_CORES,
    CpuClock,
    Run,
    combine,
    execute,
    judge,
    judge_kept,
    main,
    memory_run,
    plan,
    read,
    run_all,
    shared_runs,
    sharing,
    table,
    verdict,
)
from tests.conftest import REPO


def _row(rows: list[dict[str, Any]], starts: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["target"].startswith(starts)]
    return row


def _step(rate: float, **figures: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"offered_rate": rate, "sustained": True, "latency": {}}
    step.update(figures)
    return step


def test_a_target_the_floor_misses_too_is_below_the_floor() -> None:
    assert verdict(True, False) == MET  # met, whatever the floor
    assert verdict(False, True) == NOT_MET
    assert verdict(False, None) == NOT_MET  # no floor measured: not excused
    assert verdict(False, False) == BELOW_FLOOR
    assert verdict(None, True) == NOT_MEASURED


def test_the_throughput_is_judged_by_the_in_run_share_against_the_saturated_floor() -> None:
    node_max = {
        "steps": [
            _step(
                800,
                verify_bound_ratio_in_run=0.39,
                verify_bound_ratio=0.33,
                finalized_throughput=570.0,
                cpu_ms_per_finalized_vertex_cluster=3.2,
            )
        ]
    }
    floor_max: dict[str, Any] = {
        "targets": {"share_of_verify_bound": 0.45},  # a floor result from before 'in_run'
        "load": {"throughput_per_s": 800.0},
        "cpu": {"cluster_ms_per_vertex": 2.4},
    }
    rows = judge({"node_max": node_max, "floor_max": floor_max})
    share = _row(rows, ">= 40%")
    assert share["verdict"] == NOT_MET
    assert share["node"]["share_of_bound_in_run"] == 0.39
    assert share["floor"] == {
        "share_of_bound_in_run": None,
        "share_of_bound_measured_before": 0.45,
        "vertices_per_s": 800.0,
    }
    # the floor's in-run share, measured as the node's, is the one judged by
    floor_max["targets"]["share_of_verify_bound_in_run"] = 0.38
    assert _row(judge({"node_max": node_max, "floor_max": floor_max}), ">= 40%")["verdict"] == (
        BELOW_FLOOR
    )
    del floor_max["targets"]["share_of_verify_bound_in_run"]
    core = _row(rows, "<= 0.5 core-ms")
    assert core["node"] == {"core_ms_per_vertex_per_node": 0.8}
    assert core["verdict"] == BELOW_FLOOR  # the floor's 0.6 ms misses 0.5 too
    node_max["steps"][0]["verify_bound_ratio_in_run"] = 0.41
    assert _row(judge({"node_max": node_max, "floor_max": None}), ">= 40%")["verdict"] == MET


def test_finality_of_an_unsustained_step_is_not_met_whatever_its_percentiles() -> None:
    node_load = {
        "steps": [
            _step(10, latency={"p50_ms": 20.0, "p99_ms": 60.0}),
            _step(200, latency={"p50_ms": 40.0, "p99_ms": 90.0}, sustained=False),
        ]
    }
    floors = {"load": {"latency": {"p50_ms": 30.0, "p99_ms": 40.0}}}
    rows = judge({"node_load": node_load, "floor_10": floors, "floor_200": floors})
    assert _row(rows, "finality p50 <= 25 ms at 10")["verdict"] == MET
    assert _row(rows, "finality p99 <= 50 ms at 10")["verdict"] == NOT_MET
    at_200 = _row(rows, "finality p99 <= 100 ms at 200")
    assert at_200["node"] == {"p99_ms": 90.0, "sustained": False}
    assert at_200["verdict"] == NOT_MET


def test_overload_failover_storage_and_memory_rows() -> None:
    overload: dict[str, Any] = {
        "finalized_share_of_sustained_max": 1.2,
        "shed_at_once": True,
        "sustained_max": 200.0,
        "offered_rate": 1000,
    }
    node_load = {"steps": [_step(200), {**_step(1000), "overload": overload}]}
    failover = {
        "summary": {
            "kill": {"first_final_s": {"values": [1.3, 1.4]}},
            "stop": {"first_final_s": {"values": [2.0, 3.1]}},
        }
    }
    phase = {"service_over_raw": {"p99": 1.7}, "process_floor_over_raw": {"p99": 0.9}}
    storage = {
        "runs": [
            {"vertices_per_batch": 1, "phases": [{**phase, "phase": "closed_loop"}]},
            {
                "vertices_per_batch": 100,
                "phases": [
                    {**phase, "phase": "closed_loop"},
                    {**phase, "phase": "paced", "service_over_raw": {"p99": 1.1}},
                ],
            },
        ]
    }
    memory = {
        "steps": [
            {
                "nodes": {
                    "node1": {
                        "rss_mb_max": 390.0,
                        "resident_mb_end_distinct": 280,
                        "resident_distinct_trend": {
                            "max_mb": 291.5,
                            "second_half_slope_mb_per_min": 0.4,
                        },
                    }
                }
            }
        ],
        "targets": {"rss_mb_flat_at_half_max": {"met": True}},
    }
    rows = judge(
        {"node_load": node_load, "failover": failover, "storage": storage, "memory": memory}
    )
    assert _row(rows, "5 x the sustained")["verdict"] == MET
    assert _row(rows, "first finalization")["verdict"] == NOT_MET  # one trial took 3.1 s
    stored = _row(rows, "storage commit")
    assert stored["node"] == {"service_over_raw_p99": {"closed_loop": 1.7, "paced": 1.1}}
    assert stored["verdict"] == NOT_MET  # the process floor meets it
    assert _row(rows, "RSS <= 400 MB")["verdict"] == MET
    memory_node = _row(rows, "RSS <= 400 MB")["node"]
    assert memory_node["each_page_once_mb_max_by_node"] == {"node1": 291.5}
    assert memory_node["each_page_once_slope_mb_per_min_by_node"] == {"node1": 0.4}
    overload["shed_at_once"] = False
    assert _row(judge({"node_load": node_load}), "5 x the sustained")["verdict"] == NOT_MET
    # everything finalized, nothing shed: the step did not overload the node
    overload["shed_at_once"] = None
    assert _row(judge({"node_load": node_load}), "5 x the sustained")["verdict"] == NOT_MEASURED


def test_storage_is_judged_against_the_checked_floor_when_the_run_has_it() -> None:
    """The node's storage trusts no caller, so the floor of its shape checks each batch's
    proof before its write: against it, a target the bare process floor meets can be
    below the floor. An older result without the checked floor is judged by the bare one."""
    phase: dict[str, Any] = {
        "service_over_raw": {"p99": 2.2},
        "process_floor_over_raw": {"p99": 1.05},
        "checked_floor_over_raw": {"p99": 1.6},
    }
    phases = [{**phase, "phase": "closed_loop"}, {**phase, "phase": "paced"}]
    storage = {"runs": [{"vertices_per_batch": 100, "phases": phases}]}
    stored = _row(judge({"storage": storage}), "storage commit")
    assert stored["verdict"] == BELOW_FLOOR
    assert stored["floor"]["judged_against"] == "checked_floor"
    assert stored["floor"]["checked_floor_over_raw_p99"] == {"closed_loop": 1.6, "paced": 1.6}
    assert stored["floor"]["process_floor_over_raw_p99"] == {"closed_loop": 1.05, "paced": 1.05}
    phases[1]["checked_floor_over_raw"] = {"p99": 1.1}  # one phase still below it
    assert _row(judge({"storage": storage}), "storage commit")["verdict"] == BELOW_FLOOR
    phases[0]["checked_floor_over_raw"] = {"p99": 1.2}  # the checked floor meets it in both
    assert _row(judge({"storage": storage}), "storage commit")["verdict"] == NOT_MET
    for p in phases:
        del p["checked_floor_over_raw"]
    older = _row(judge({"storage": storage}), "storage commit")
    assert older["verdict"] == NOT_MET and older["floor"]["judged_against"] == "process_floor"


def test_nothing_measured_is_judged_not_measured_and_still_tabled() -> None:
    rows = judge({})
    assert len(rows) == 9
    assert {r["verdict"] for r in rows} == {NOT_MEASURED}
    text = table(rows)
    assert text.count("\n") == 10 and "| — | — | not measured |" in text


def test_a_result_not_shaped_as_its_benchmark_writes_it_is_not_measured_alone() -> None:
    """An edited or damaged file given to --judge, or an older benchmark's: its target is
    not measured, with the reason; the other targets are judged as they are."""
    storage = {"runs": [{"vertices_per_batch": 100, "phases": [{"phase": "closed_loop"}]}]}
    failover = {"summary": {"kill": {"first_final_s": {"values": [1.2, "soon"]}}}}
    node_max = {"steps": [_step(800, verify_bound_ratio_in_run=0.41, finalized_throughput=1)]}
    rows = judge({"storage": storage, "failover": failover, "node_max": node_max})
    assert len(rows) == 9
    stored = _row(rows, "storage commit")
    assert stored["verdict"] == NOT_MEASURED and "KeyError" in stored["error"]
    assert _row(rows, "first finalization")["verdict"] == NOT_MEASURED
    assert _row(rows, ">= 40%")["verdict"] == MET


def test_the_memory_run_is_at_half_the_saturated_rate() -> None:
    args = memory_run(581.0).args
    assert args[args.index("--rates") + 1] == "290"
    assert args[args.index("--duration") + 1] == "600"
    assert args[args.index("--maximum-rate") + 1] == "581"


@pytest.mark.parametrize("run", [*plan(), memory_run(500.0)], ids=lambda r: r.name)
def test_every_option_passed_exists_in_the_benchmark_it_runs(run: Run) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", f"bench.{run.module}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for option in [a for a in run.args if a.startswith("--")] + ["--output"]:
        assert f"{option} " in shown or f"{option}\n" in shown or f"{option}," in shown, option


def test_a_benchmark_that_fails_is_reported_and_not_judged(tmp_path: Path) -> None:
    broken = Run("storage", "storage_commit", ("--no-such-option",), 0.1, 60)
    outcome = execute(broken, tmp_path)
    assert outcome["error"] is not None and "exit status 2" in outcome["error"]
    assert read(outcome) is None
    assert "--no-such-option" in (tmp_path / "storage.log").read_text()
    assert _row(judge({"storage": None}), "storage commit")["verdict"] == NOT_MEASURED


def _round(*verdicts: str) -> list[dict[str, Any]]:
    return [
        {"target": f"t{i}", "node": {"x": i}, "floor": None, "verdict": v}
        for i, v in enumerate(verdicts)
    ]


def test_rounds_are_combined_by_the_verdict_most_of_them_reached() -> None:
    rounds = [
        _round(MET, NOT_MET, MET, NOT_MEASURED),
        _round(NOT_MET, BELOW_FLOOR, MET, NOT_MEASURED),
        _round(MET, NOT_MET, NOT_MEASURED, NOT_MEASURED),
    ]
    rows = combine(rounds)
    assert [r["verdict"] for r in rows] == [MET, NOT_MET, MET, NOT_MEASURED]
    assert rows[0]["verdicts"] == [MET, NOT_MET, MET]
    assert rows[2]["node"] == [{"x": 2}, {"x": 2}]  # the rounds that measured it
    assert rows[2]["verdicts"] == [MET, MET]
    assert rows[3]["node"] is None and rows[3]["verdicts"] == []
    assert "met (met, not met, met)" in table(rows)
    once = combine([_round(MET), _round(NOT_MEASURED)])  # failover: the first round only
    assert once[0]["verdicts"] == [MET] and "| met |" in table(once)
    # a tie goes to the verdict less favourable to the node
    assert combine([_round(MET), _round(NOT_MET)])[0]["verdict"] == NOT_MET
    assert combine([_round(MET), _round(BELOW_FLOOR)])[0]["verdict"] == BELOW_FLOOR
    # one round: its rows as they are
    assert combine([_round(MET)]) == _round(MET)


def test_repeats_are_bounded() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--repeats", "6"])
    assert exited.value.code == 2


def test_kept_results_are_judged_again_without_running_anything(tmp_path: Path) -> None:
    def step(share: float) -> dict[str, Any]:
        return {"steps": [_step(800, verify_bound_ratio_in_run=share, finalized_throughput=500)]}

    one = tmp_path / "one"
    one.mkdir()
    (one / "node_max.json").write_text(json.dumps(step(0.41)))
    (one / "floor_max.json").write_text("not json")  # unreadable: not measured
    rows = judge_kept(one)["rows"]
    assert _row(rows, ">= 40%")["verdict"] == MET
    assert _row(rows, ">= 40%")["floor"] is None
    rounds = tmp_path / "rounds"
    rounds.mkdir()
    for k, share in enumerate((0.38, 0.41, 0.39), start=1):
        (rounds / f"node_max_{k}.json").write_text(json.dumps(step(share)))
    row = _row(judge_kept(rounds)["rows"], ">= 40%")
    assert row["verdicts"] == [NOT_MET, MET, NOT_MET] and row["verdict"] == NOT_MET
    with pytest.raises(FileNotFoundError):
        judge_kept(tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rounds_run_every_benchmark_but_failover_again_for_real(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two rounds of a real (short) storage_commit run and a failover run that fails at
    once: storage runs twice, failover once, each round is judged, and the progress says
    how far it is."""
    short = _args_of("--vertices-per-batch 100 --batches 12 --warmup 2 --rate 100")
    runs = [
        Run("storage", "storage_commit", short, 0.2, 200),
        Run("failover", "failover", ("--bad",), 0.1, 60),
    ]
    done = run_all(runs, tmp_path, memory=False, repeats=2)
    assert set(done["runs"]) == {"storage_1", "failover_1", "storage_2"}
    assert done["runs"]["storage_1"]["error"] is None and done["runs"]["storage_2"]["error"] is None
    assert "exit status 2" in done["runs"]["failover_1"]["error"]
    stored = _row(done["rows"], "storage commit")
    assert stored["verdicts"][0] != NOT_MEASURED and stored["verdicts"][1] != NOT_MEASURED
    assert len(stored["node"]) == 2  # each round's figures
    assert _row(done["rows"], "first finalization")["verdict"] == NOT_MEASURED
    progress = capsys.readouterr().err
    assert "3 runs, about 1 min" in progress and "[3/3] storage_2:" in progress
    # the run's own processes (storage_commit's storage service) are its own, not "other
    # processes", however busy the machine is meanwhile
    storage = done["runs"]["storage_1"]
    assert storage["run_cores"] > 0.1, storage
    # each figure is rounded to 3 places on its own, so the difference may be off by 0.001;
    # and /proc/stat counts in 10-ms ticks while the run's own CPU is exact, so over a
    # short run the machine's busy time may come out a little below the run's (CI: 0.844
    # against 0.847), which leaves no "others" at all
    rounding = 0.0015
    others, busy = storage["other_processes_cores"], storage["machine_busy_cores"]
    assert others <= max(0.0, busy - storage["run_cores"]) + rounding, storage


def _args_of(line: str) -> tuple[str, ...]:
    return tuple(line.split())


def test_an_older_result_in_the_kept_directory_is_not_taken_for_this_run(tmp_path: Path) -> None:
    """--keep into a directory of an earlier run: a benchmark that exits 0 without writing
    its result (here, one asked for --help) leaves nothing to judge, not the old file."""
    (tmp_path / "storage.json").write_text(json.dumps({"runs": []}))
    outcome = execute(Run("storage", "targets", ("--help",), 0.1, 60), tmp_path)
    assert outcome["error"] is not None and "wrote no storage.json" in outcome["error"]
    assert read(outcome) is None


HOG = """
import time
print("burning", flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    pass
"""


def test_a_run_while_another_process_takes_a_core_is_flagged_shared(tmp_path: Path) -> None:
    """A process outside the run's tree burning a core meanwhile: the run says so, and the
    line under the table names it."""
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline() == "burning\n"
        outcome = execute(Run("storage", "targets", ("--help",), 0.1, 60), tmp_path)
    finally:
        hog.kill()
        hog.wait()
    assert outcome["machine_shared"] is True, outcome
    assert outcome["other_processes_cores"] > SHARED_CORES, outcome
    line = shared_runs({"storage": outcome, "failover": {"machine_shared": False}})
    assert line is not None and "storage (" in line and "failover" not in line
    assert shared_runs({"failover": {"machine_shared": False}}) is None


def test_kept_results_made_hours_apart_are_said_to_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def kept(name: str, when: str | None) -> None:
        step = _step(800, verify_bound_ratio_in_run=0.41, finalized_throughput=600)
        result: dict[str, Any] = {"steps": [step]}
        if when is not None:
            result["when"] = when
        (tmp_path / f"{name}.json").write_text(json.dumps(result))

    kept("node_max", "2026-12-06T15:49:07Z")
    kept("floor_max", "2026-12-06T16:20:00+00:00")
    output = tmp_path / "judged.json"
    assert main(["--judge", str(tmp_path), "--output", str(output)]) == 0
    assert "apart" not in capsys.readouterr().out  # within the hour: nothing to say
    assert json.loads(output.read_text())["made"]["hours_apart"] == 0.51

    kept("floor_max", "2026-12-06T18:49:07Z")
    kept("storage", None)
    assert main(["--judge", str(tmp_path), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "made 3 h apart" in out and "results without a time: storage" in out
    made = json.loads(output.read_text())["made"]
    assert made["first"].startswith("2026-12-06T15:49:07") and made["undated"] == ["storage"]


@pytest.mark.parametrize("when", ["yesterday", 1733500000, "2026-12-06T15:49:07", None, ["x"]])
def test_a_kept_result_with_a_damaged_time_is_undated_not_a_crash(
    tmp_path: Path, when: Any
) -> None:
    """A hand-edited or damaged ``when`` (not ISO, not a string, no time zone) makes that
    result undated; the others still give the hours between them."""
    step = _step(800, verify_bound_ratio_in_run=0.41, finalized_throughput=600)
    (tmp_path / "node_max.json").write_text(json.dumps({"steps": [step], "when": when}))
    (tmp_path / "floor_max.json").write_text(json.dumps({"when": "2026-12-06T16:00:00Z"}))
    made = judge_kept(tmp_path)["made"]
    assert made["undated"] == ["node_max"] and made["hours_apart"] == 0.0, made


def test_every_pbft_floor_runs_with_what_the_nodes_safety_needs() -> None:
    """A floor is of the node's shape only with what the node cannot drop: mutual TLS on
    its internal hops, the execution's synced write, the signing mark synced before each
    signature. Without them the floor would judge the node against a shape it may not take."""
    floors = [r for r in plan() if r.module == "latency_floor"]
    assert [r.name for r in floors] == ["floor_10", "floor_200", "floor_max"]
    for run in floors:
        assert {"--tls", "--execute-write", "--mark-sync"} <= set(run.args), run
    storage = next(r for r in plan() if r.name == "storage")
    assert storage.module == "storage_commit"  # whose judged floor checks each proof


def test_sharing_of_a_run_that_took_no_measurable_time_is_not_a_division_by_zero() -> None:
    before = CpuClock(busy_s=10.0, steal_s=1.0, children_s=2.0)
    after = CpuClock(busy_s=10.5, steal_s=1.0, children_s=2.5)
    shared = sharing(before, after, 0.0)
    assert shared["other_processes_cores"] == 0.0
    assert shared["machine_shared"] is False
    # and a real interval still gives cores
    assert sharing(before, after, 1.0)["run_cores"] == 0.5
