"""The simulator's command line: many seeds with a machine-readable summary, or one replayed.

    python -m services.consensus.sim --nodes 4 --seeds 2000 [--jobs 2] [--json]
    python -m services.consensus.sim --nodes 4 --replay 17 --verbose

Exit status: 0 when every seed kept every invariant, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.consensus.sim.runner import SeedResult, run_seed
from services.consensus.sim.scenario import LIVENESS_BOUND


@dataclass(slots=True)
class Summary:
    nodes: int
    crypto: str
    first_seed: int
    seeds: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    liveness_failures: list[dict[str, Any]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    attacks: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    batches: int = 0
    messages: int = 0
    max_view: int = 0
    rejected: int = 0
    duplicates: int = 0
    recovery: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, r: SeedResult) -> None:
        self.seeds += 1
        if r.violation is not None:
            self.violations.append({"seed": r.seed, "violation": r.violation})
        if r.liveness_failure is not None:
            self.liveness_failures.append({"seed": r.seed, "liveness": r.liveness_failure})
        self.faults.update(r.faults)
        self.attacks.update(r.attacks)
        self.requests += r.requests
        self.batches += r.executed_batches
        self.messages += r.messages
        self.max_view = max(self.max_view, r.max_view)
        self.rejected += r.rejected
        self.duplicates += r.duplicates
        if r.recovery_ticks is not None:
            self.recovery.append(r.recovery_ticks)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.liveness_failures

    def as_dict(self) -> dict[str, Any]:
        recovery = sorted(self.recovery)
        return {
            "nodes": self.nodes,
            "crypto": self.crypto,
            "first_seed": self.first_seed,
            "seeds": self.seeds,
            "ok": self.ok,
            "violations": len(self.violations),
            "liveness_failures": len(self.liveness_failures),
            "failed_seeds": (self.violations + self.liveness_failures)[:20],
            "fault_counts": dict(sorted(self.faults.items())),
            "forger_attacks": dict(sorted(self.attacks.items())),
            "requests": self.requests,
            "batches": self.batches,
            "messages": self.messages,
            "max_view": self.max_view,
            "rejected_at_execution": self.rejected,
            "repeats_skipped_at_execution": self.duplicates,
            "liveness_bound_ticks": LIVENESS_BOUND,
            "recovery_ticks_max": recovery[-1] if recovery else None,
            "recovery_ticks_p99": recovery[(len(recovery) * 99) // 100] if recovery else None,
            "elapsed_seconds": round(self.elapsed, 2),
        }


def _run_compact(job: tuple[int, int, str]) -> SeedResult:
    seed, nodes, crypto = job
    return run_seed(seed, nodes, crypto=crypto)


def run_seeds(nodes: int, seeds: Iterable[int], *, jobs: int = 1, crypto: str = "fast") -> Summary:
    """Run every seed (in ``jobs`` processes) and summarize."""
    seed_list = list(seeds)
    summary = Summary(nodes=nodes, crypto=crypto, first_seed=seed_list[0] if seed_list else 0)
    start = time.perf_counter()
    work = [(seed, nodes, crypto) for seed in seed_list]
    if jobs > 1 and len(work) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(jobs) as pool:
            for result in pool.imap(_run_compact, work, chunksize=8):
                summary.add(result)
    else:
        for job in work:
            summary.add(_run_compact(job))
    summary.elapsed = time.perf_counter() - start
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cretoai-node sim",
        description="Deterministic PBFT simulation: seeded network faults, crashes and "
        "Byzantine replicas, with agreement, validity, certificate and liveness checks.",
    )
    p.add_argument("--nodes", type=int, default=4, help="replicas per cluster (default 4)")
    p.add_argument("--seeds", type=int, default=200, help="how many seeds to run (default 200)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--crypto",
        choices=("fast", "ml-dsa"),
        default="fast",
        help="signatures: a keyed-BLAKE2b stand-in (default) or real ML-DSA-87",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--replay", type=int, metavar="SEED", help="run one seed and report it")
    p.add_argument("--verbose", action="store_true", help="with --replay: print the event trace")
    return p


def _print_summary(s: Summary, as_json: bool) -> None:
    d = s.as_dict()
    if as_json:
        print(json.dumps(d, indent=2))
        return
    print(
        f"{d['seeds']} seeds, n={d['nodes']} ({d['crypto']} signatures) in "
        f"{d['elapsed_seconds']}s: {d['violations']} violations, "
        f"{d['liveness_failures']} liveness failures"
    )
    print("faults (seeds): " + ", ".join(f"{k}={v}" for k, v in d["fault_counts"].items()))
    if d["forger_attacks"]:
        print("forger attacks: " + ", ".join(f"{k}={v}" for k, v in d["forger_attacks"].items()))
    print(
        f"requests={d['requests']} batches={d['batches']} messages={d['messages']} "
        f"max_view={d['max_view']} recovery_ticks max={d['recovery_ticks_max']} "
        f"p99={d['recovery_ticks_p99']} (bound {d['liveness_bound_ticks']})"
    )
    for failure in d["failed_seeds"]:
        print(f"FAILED {failure}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nodes < 1 or args.seeds < 0 or args.jobs < 1:
        print("error: --nodes and --jobs must be >= 1, --seeds >= 0", file=sys.stderr)
        return 2
    if args.replay is not None:
        start = time.perf_counter()
        result = run_seed(args.replay, args.nodes, crypto=args.crypto, trace=args.verbose)
        for line in result.trace:
            print(line)
        summary = Summary(nodes=args.nodes, crypto=args.crypto, first_seed=args.replay)
        summary.add(result)
        summary.elapsed = time.perf_counter() - start
        _print_summary(summary, args.json)
        return 0 if summary.ok else 1
    summary = run_seeds(
        args.nodes, range(args.start, args.start + args.seeds), jobs=args.jobs, crypto=args.crypto
    )
    _print_summary(summary, args.json)
    return 0 if summary.ok else 1
