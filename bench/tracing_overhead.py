"""What tracing costs: ``bench.cluster_load`` with tracing off and on, alternated, side by side.

    .venv/bin/python -m bench.tracing_overhead [--rates 10,100,200] [--duration 12]
                                               [--repeats 3] [--sampling 0.01]

Each repeat runs ``bench.cluster_load`` twice, each time on a fresh 4-node cluster:
``--tracing off`` (sampling ratio 0, no exporter) and ``--tracing on`` (the nodes' default
sampling ratio, or ``--sampling``, exported over OTLP to a ``devkit.otlp_receiver``
process; ``--verify-seconds 0``: the ML-DSA-87 verify bound is not measured), in
alternating order (off/on, on/off, off/on, …) so that a drift of the
machine's speed weighs on both. Reported per offered rate and mode: the medians over the
repeats of finalized throughput, client-observed finality p50/p99, CPU per node (mean of
the nodes), the trace receiver's CPU, and the per-stage p50/p99 of
``cretoai_consensus_stage_seconds`` (over all nodes); then the ratios on/off of those
medians, and the median of the per-repeat (paired) ratios. The machine is shared: read
``other_processes_cores`` and the spread of the repeats before the ratios.

Writes ``bench/results/tracing_overhead.json`` (every run's step summaries included) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cretoai.telemetry import DEFAULT_SAMPLING_RATIO

RESULTS = Path(__file__).resolve().parent / "results"
RESULT = RESULTS / "tracing_overhead.json"
MODES = ("off", "on")


def step_summary(step: dict[str, Any]) -> dict[str, Any]:
    """The figures of one cluster_load step compared here."""
    nodes = step["nodes"].values()
    return {
        "finalized_throughput": step["finalized_throughput"],
        "p50_ms": step["latency"]["p50_ms"],
        "p99_ms": step["latency"]["p99_ms"],
        "cpu_cores_per_node": round(statistics.fmean(n["cpu_cores"] for n in nodes), 3),
        "trace_receiver_cores": step["cpu"].get("trace_receiver_cores", 0.0),
        "other_processes_cores": step["cpu"]["other_processes_cores"],
        "machine_shared": step["machine_shared"],
        "sustained": step["sustained"],
        "http_status": step["http_status"],
        "stages": step.get("stages", {}),
    }


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def ratio(on: float | None, off: float | None) -> float | None:
    return round(on / off, 3) if on is not None and off else None


def compare(runs: list[dict[str, Any]], rates: list[str]) -> dict[str, Any]:
    """Medians per rate and mode, their ratios, and the median of paired ratios."""
    keys = ("finalized_throughput", "p50_ms", "p99_ms", "cpu_cores_per_node")
    table: dict[str, Any] = {}
    for rate in rates:
        per_mode: dict[str, dict[str, Any]] = {}
        for mode in MODES:
            steps = [r["steps"][rate] for r in runs if r["mode"] == mode]
            steps = [s for s in steps if s is not None]
            stage_names = sorted({name for s in steps for name in s["stages"]})
            per_mode[mode] = {
                "repeats": len(steps),
                **{key: median([s[key] for s in steps]) for key in keys},
                "trace_receiver_cores": median([s["trace_receiver_cores"] for s in steps]),
                "other_processes_cores_max": max(
                    (s["other_processes_cores"] for s in steps), default=None
                ),
                "stages": {
                    name: {
                        q: median([s["stages"].get(name, {}).get(q) for s in steps])
                        for q in ("p50_ms", "p99_ms")
                    }
                    for name in stage_names
                },
            }
        paired: dict[str, list[float]] = {key: [] for key in keys}
        for repeat in sorted({r["repeat"] for r in runs}):
            pair = {
                r["mode"]: r["steps"][rate]
                for r in runs
                if r["repeat"] == repeat and r["steps"][rate] is not None
            }
            if set(pair) == set(MODES):
                for key in keys:
                    value = ratio(pair["on"][key], pair["off"][key])
                    if value is not None:
                        paired[key].append(value)
        table[rate] = {
            **per_mode,
            "ratio_on_off_of_medians": {
                key: ratio(per_mode["on"][key], per_mode["off"][key]) for key in keys
            },
            "median_paired_ratio_on_off": {key: median(list(v)) for key, v in paired.items()},
        }
    return table


def cluster_load_argv(args: argparse.Namespace, mode: str, output: Path) -> list[str]:
    """The command of one run. ``--verify-seconds 0``: the ML-DSA-87 verify bound is a
    property of the machine, not of tracing, so the runs do not spend seconds on it each."""
    return [
        sys.executable, "-m", "bench.cluster_load",
        "--tracing", mode, "--sampling", str(args.sampling),
        "--rates", ",".join(f"{r:g}" for r in args.rates),
        "--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}",
        "--idle", "2", "--no-skip", "--max-seconds", str(args.max_seconds_per_run),
        "--verify-seconds", "0",
        "--output", str(output), "--plot", "",
    ]  # fmt: skip


def run_once(args: argparse.Namespace, mode: str, output: Path) -> dict[str, Any]:
    argv = cluster_load_argv(args, mode, output)
    print(f"==> {' '.join(argv[2:])}", file=sys.stderr, flush=True)
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parents[1], timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"bench.cluster_load --tracing {mode} exited {done.returncode}")
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",") if x.strip()],
        default=[10.0, 100.0, 200.0],
    )
    parser.add_argument("--duration", type=float, default=12.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sampling",
        type=float,
        default=DEFAULT_SAMPLING_RATIO,
        help=f"sampling ratio with tracing on (default {DEFAULT_SAMPLING_RATIO:g})",
    )
    parser.add_argument("--max-seconds-per-run", type=float, default=600.0)
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 10 or not 0 <= args.sampling <= 1:
        parser.error("--repeats must be within [1, 10] and --sampling within [0, 1]")
    rates = [f"{r:g}" for r in args.rates]  # as cluster_load writes offered_rate
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cretoai-tracing-overhead-") as tmp:
        for repeat in range(1, args.repeats + 1):
            order = MODES if repeat % 2 else tuple(reversed(MODES))
            for mode in order:
                result = run_once(args, mode, Path(tmp) / f"{repeat}-{mode}.json")
                first = first or result
                by_rate = {str(s["offered_rate"]): step_summary(s) for s in result["steps"]}
                runs.append(
                    {
                        "repeat": repeat,
                        "mode": mode,
                        "when": result["when"],
                        "tracing": result["parameters"]["tracing"],
                        "idle_cluster_cores": result["idle_baseline"]["cluster_cores"],
                        "steps": {key: by_rate.get(key) for key in rates},
                    }
                )
    comparison = compare(runs, rates)
    out = {
        "benchmark": "tracing_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": first.get("machine"),
        "parameters": {
            "rates": rates,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "sampling_on": args.sampling,
            "order": "alternating: off,on then on,off, ...; a fresh cluster per run",
            "settings": first.get("parameters", {}).get("settings"),
        },
        "comparison": comparison,
        "runs": runs,
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    for rate, row in comparison.items():
        for mode in MODES:
            m = row[mode]
            print(
                json.dumps(
                    {
                        "rate": rate,
                        "tracing": mode,
                        "finalized/s": m["finalized_throughput"],
                        "p50": m["p50_ms"],
                        "p99": m["p99_ms"],
                        "cpu/node": m["cpu_cores_per_node"],
                        "receiver": m["trace_receiver_cores"],
                    }
                )
            )
        print(json.dumps({"rate": rate, "paired_ratio_on_off": row["median_paired_ratio_on_off"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
