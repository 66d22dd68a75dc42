"""Failover benchmark: how long a local 4-node cluster stops finalizing when its primary's
consensus process is killed (SIGKILL) or stops answering (SIGSTOP), under a steady load.

    .venv/bin/python -m bench.failover [--modes kill,stop] [--repeats 3] [--rate 20]
                                       [--before 5] [--after 20] [--threshold-ms 200]

Each trial starts a **fresh** cluster as ``bench.cluster_load`` does (its ``Cluster``,
``Signer``, ``submit`` and helpers; default settings, ``--set SECTION.FIELD=VALUE`` to
change one), submits the anchors, finds the primary (every gateway's ``/v1/status``: the
view's primary replica index, mapped to the node that reports that index as its own; the
primary of view *v* is replica *v mod n*), then runs an open-loop load of ``--rate``
pre-signed 1 KB ML-DSA-87 client-signed vertices per second (``POST ?wait=true``),
round-robin over the gateways of the *other* nodes. After ``--before`` seconds it sends
the fault to the primary's consensus process:

* ``kill`` — SIGKILL, as a crash: the node's supervisor notices and restarts the process
  (after its backoff); when that happened is reported (``restart``);
* ``stop`` — SIGSTOP: the process holds its sockets but answers nothing, as a hung
  primary; SIGCONT once the trial's load is over, so that it can stop cleanly.

Measured from the fault (``perf_counter`` right after the signal was sent), per trial:

* ``first_final_s`` — until the first 200 answer for a vertex **submitted after** the fault;
* ``latency_recovered_s`` — until client-observed latency is back under ``--threshold-ms``:
  the due time of the first vertex after the fault that starts a run of ``--stable``
  consecutive submissions all finalized within the threshold (latency from the due time,
  as in ``cluster_load``), and ``baseline_recovered_s``, the same with the trial's own
  pre-fault p99 as the threshold when it is higher (on a busy machine the 200 ms may not
  hold even before the fault: ``before_fault.share_within_threshold`` says);
* ``view_change_s`` — until every other node reports a higher view
  (``cretoai_consensus_view``), the new view and its primary;
* ``restart`` (kill) — when the supervisor's new process appeared and when it served
  (gRPC health), and the supervisor's own events, relative to the fault;
* what happened to the vertices in flight at the fault and to those submitted after it
  (statuses, latency), and a per-second timeline.

A trial observes at most ``--after`` seconds after the fault and stops earlier, ``--tail``
seconds after both figures are known. ``--repeats`` trials per mode (kill, stop, kill, stop,
…), each on a fresh cluster; medians per mode. Target: first finalization ≤ 3 s after the
primary is killed or stops answering. Bounded in time (``--max-seconds``: a trial that
would not fit is not started) and count; loopback only. Writes
``bench/results/failover.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster_load import (
    TERMINATED_EXIT,
    Cluster,
    Outcomes,
    Signer,
    anchors,
    machine,
    parse_overrides,
    percentile,
    raise_priority,
    run_until_terminated,
    scrape,
    submit,
    summary_ms,
    total,
    wait_ready,
)
from node.supervisor import check_health, health_target

RESULTS = Path(__file__).resolve().parent / "results"
RESULT = RESULTS / "failover.json"
MODES = ("kill", "stop")
SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
TARGET_FIRST_FINAL_S = 3.0
#: Seconds a trial needs besides its load: cluster start, anchors, signing, drain, stop.
TRIAL_OVERHEAD_S = 60.0


# -- analysis (pure) -----------------------------------------------------------------------


def first_stable_run(
    due: Sequence[float],
    latency: Sequence[float | None],
    *,
    threshold_s: float,
    stable: int,
) -> int | None:
    """Index (in ``due`` order, ascending) of the first of ``stable`` consecutive
    submissions that were all finalized within ``threshold_s``; None if there is none.
    ``latency[i]`` is None when submission ``i`` was not finalized."""
    run = 0
    for i in range(len(due)):
        value = latency[i]
        if value is not None and value <= threshold_s:
            run += 1
            if run >= stable:
                return i - stable + 1
        else:
            run = 0
    return None


def analyse(
    out: Outcomes,
    fault_at: float,
    *,
    threshold_s: float,
    stable: int,
    before_s: float,
) -> dict[str, Any]:
    """What the client saw around the fault at ``fault_at`` (perf_counter seconds)."""
    count = len(out.due)

    def latency(i: int) -> float | None:
        return out.done[i] - out.due[i] if out.outcome[i] == "finalized" else None

    sent = [i for i in range(count) if not math.isnan(out.sent[i])]
    # baseline: the second half of the pre-fault load (the first is the cluster warming up),
    # the submissions answered before the fault (the others waited for the fault too)
    baseline = [i for i in sent if fault_at - before_s / 2 <= out.due[i] and out.done[i] < fault_at]
    base_lat = [v for v in (latency(i) for i in baseline) if v is not None]
    before = {
        "submitted": len(baseline),
        "latency_ms": summary_ms(base_lat),
        "outcomes": dict(Counter(out.outcome[i] for i in baseline)),
        "share_within_threshold": round(sum(v <= threshold_s for v in base_lat) / len(baseline), 3)
        if baseline
        else None,
    }
    after = [i for i in sent if out.due[i] >= fault_at]
    finals_after = [i for i in after if out.outcome[i] == "finalized"]
    first = min(finals_after, key=lambda i: out.done[i], default=None)
    answers = [
        out.done[i] for i in sent if out.outcome[i] == "finalized" and out.done[i] >= fault_at
    ]
    in_flight = [
        i for i in sent if out.sent[i] < fault_at and not (out.done[i] < fault_at)
    ]  # NaN done: never answered
    ordered = sorted(after, key=lambda i: out.due[i])
    lat_after = [latency(i) for i in ordered]
    due_after = [out.due[i] for i in ordered]

    def recovered(threshold: float) -> float | None:
        j = first_stable_run(due_after, lat_after, threshold_s=threshold, stable=stable)
        return None if j is None else round(due_after[j] - fault_at, 3)

    base_p99 = percentile(base_lat, 99) if base_lat else None
    baseline_threshold = max(threshold_s, base_p99) if base_p99 is not None else threshold_s
    timeline = []
    if sent:
        lo = math.floor(min(out.due[i] for i in sent) - fault_at)
        hi = math.ceil(max(out.due[i] for i in sent) - fault_at)
        for second in range(lo, hi + 1):
            here = [i for i in sent if second <= out.due[i] - fault_at < second + 1]
            lats = [v for v in (latency(i) for i in here) if v is not None]
            if not here:
                continue
            timeline.append(
                {
                    "t": second,
                    "submitted": len(here),
                    "finalized": len(lats),
                    "p50_ms": round(percentile(lats, 50) * 1e3, 1) if lats else None,
                    "max_ms": round(max(lats) * 1e3, 1) if lats else None,
                }
            )
    return {
        "first_final_s": None if first is None else round(out.done[first] - fault_at, 3),
        "first_final_submitted_s": None if first is None else round(out.sent[first] - fault_at, 3),
        "first_answer_after_fault_s": round(min(answers) - fault_at, 3) if answers else None,
        "latency_recovered_s": recovered(threshold_s),
        "baseline_recovered_s": recovered(baseline_threshold),
        "baseline_threshold_ms": round(baseline_threshold * 1e3, 1),
        "before_fault": before,
        "after_fault": {
            "submitted": len(after),
            "finalized": len(finals_after),
            "latency_ms": summary_ms([v for v in lat_after if v is not None]),
            "http_status": dict(sorted(Counter(str(out.status[i]) for i in after).items())),
            "outcomes": dict(sorted(Counter(out.outcome[i] for i in after).items())),
        },
        "in_flight_at_fault": {
            "count": len(in_flight),
            "outcomes": dict(sorted(Counter(out.outcome[i] for i in in_flight).items())),
            "latency_ms": summary_ms([v for v in (latency(i) for i in in_flight) if v is not None]),
        },
        "timeline_per_s": timeline,
    }


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def summarise(trials: list[dict[str, Any]], target_s: float) -> dict[str, Any]:
    """Per mode: medians (and every value) over the trials, and the target."""
    out: dict[str, Any] = {}
    for mode in MODES:
        runs = [t for t in trials if t["mode"] == mode and "error" not in t]
        if not runs:
            continue

        def values(*path: str, runs: list[dict[str, Any]] = runs) -> list[float | None]:
            got: list[float | None] = []
            for run in runs:
                node: Any = run
                for key in path:
                    node = node.get(key) if isinstance(node, dict) else None
                got.append(node)
            return got

        first = values("first_final_s")
        row = {
            "trials": len(runs),
            "first_final_s": {"median": median(first), "values": first},
            "latency_recovered_s": {
                "median": median(values("latency_recovered_s")),
                "values": values("latency_recovered_s"),
            },
            "baseline_recovered_s": {
                "median": median(values("baseline_recovered_s")),
                "values": values("baseline_recovered_s"),
            },
            "view_change_s": {
                "median": median(values("view_change", "seconds")),
                "values": values("view_change", "seconds"),
            },
            "target": {
                "target": f"first finalization <= {target_s:g} s after the fault",
                "met_every_trial": all(v is not None and v <= target_s for v in first),
                "met_by_median": (m := median(first)) is not None and m <= target_s,
            },
        }
        if mode == "kill":
            row["restart_serving_s"] = {
                "median": median(values("restart", "serving_s")),
                "values": values("restart", "serving_s"),
            }
        out[mode] = row
    return out


def relative_events(events: Sequence[str], fault_wall: float) -> list[str]:
    """The supervisor's events (``"<epoch s> message"``) with times relative to the fault."""
    out = []
    for line in events:
        stamp, _, message = line.partition(" ")
        try:
            out.append(f"{float(stamp) - fault_wall:+.1f}s {message}")
        except ValueError:
            out.append(line)
    return out


# -- one trial -----------------------------------------------------------------------------


@dataclass
class Fault:
    at: float | None = None  # perf_counter right after the signal
    wall: float | None = None
    pid: int | None = None


@dataclass
class Watch:
    """What the monitor saw after the fault (seconds relative to it)."""

    view_at_fault: int | None = None
    view_change_s: float | None = None
    new_view: int | None = None
    new_pid: int | None = None
    spawned_s: float | None = None
    serving_s: float | None = None
    views: list[dict[str, Any]] = field(default_factory=list)


async def statuses(cluster: Cluster, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async def one(i: int) -> dict[str, Any]:
        try:
            async with session.get(
                cluster.gateway(i) + "/v1/status", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                result: dict[str, Any] = await resp.json()
                return result
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}

    return list(await asyncio.gather(*(one(i) for i in range(cluster.nodes))))


def primary_of(found: list[dict[str, Any]], names: list[str]) -> tuple[int, int, dict[int, str]]:
    """(view, primary replica index, replica index -> node name) from the gateways' status:
    the most common view among the nodes; each node reports its own replica index."""
    views = Counter(s["view"] for s in found if "view" in s)
    if not views:
        raise RuntimeError("no gateway answered /v1/status")
    view = views.most_common(1)[0][0]
    replicas = {s["replica"]: s["node_name"] for s in found if "replica" in s}
    for index, name in enumerate(names):  # the cluster's order, for any that did not answer
        replicas.setdefault(index, name)
    n = next(s["n"] for s in found if "n" in s)
    return view, view % n, replicas


async def monitor(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    victim: str,
    fault: Fault,
    watch: Watch,
    stop: asyncio.Event,
) -> None:
    """Every 0.1 s: the victim's consensus process (a new pid: restarted; then its health);
    every 0.25 s: the other nodes' views."""
    assert cluster.supervisor is not None
    child = next(
        c for c in cluster.supervisor.children if c.node == victim and c.service == "consensus"
    )
    cfg = next(c for c in cluster.configs if c.node.name == victim)
    others = {
        name: urls["consensus"] for name, urls in cluster.metrics_urls().items() if name != victim
    }
    last_views = 0.0
    while not stop.is_set():
        now = time.perf_counter()
        if fault.at is not None:
            since = now - fault.at
            pid = child.process.pid if child.process is not None else None
            if watch.spawned_s is None and pid is not None and pid != fault.pid:
                watch.spawned_s, watch.new_pid = round(since, 3), pid
            if (
                watch.spawned_s is not None
                and watch.serving_s is None
                and await check_health(health_target(cfg, "consensus"), timeout=0.5)
            ):
                watch.serving_s = round(time.perf_counter() - fault.at, 3)
            if watch.view_change_s is None and now - last_views >= 0.25:
                last_views = now
                scrapes = await asyncio.gather(
                    *(asyncio.wait_for(scrape(session, url), 2.0) for url in others.values()),
                    return_exceptions=True,
                )
                views = {
                    name: int(total(s, "cretoai_consensus_view"))
                    if isinstance(s, dict) and s
                    else None
                    for name, s in zip(others, scrapes, strict=True)
                }
                watch.views.append({"t": round(time.perf_counter() - fault.at, 2), **views})
                known = [v for v in views.values() if v is not None]
                base = watch.view_at_fault or 0
                if len(known) == len(others) and all(v > base for v in known):
                    watch.view_change_s = round(time.perf_counter() - fault.at, 3)
                    watch.new_view = min(known)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def trial(
    args: argparse.Namespace,
    mode: str,
    repeat: int,
    root: Path,
    signer: Signer,
    extra: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    started = time.perf_counter()
    sig = SIGNALS[mode]
    result: dict[str, Any] = {"mode": mode, "repeat": repeat, "signal": sig.name}
    keep = args.keep_logs / f"{mode}{repeat}" if args.keep_logs is not None else None
    async with Cluster(root / f"{mode}{repeat}", args.nodes, extra, keep) as cluster:
        result["startup_s"] = round(time.perf_counter() - started, 1)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        wait_s = cluster.configs[0].gateway.wait_timeout_ms / 1000
        timeout = aiohttp.ClientTimeout(total=wait_s + 10, connect=10)
        fault = Fault()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await wait_ready(cluster, session, timeout=60)
            parents, anchor_info = await anchors(cluster, session, signer)
            result["anchors"] = anchor_info
            view, primary, replicas = primary_of(await statuses(cluster, session), cluster.names)
            victim = replicas[primary]
            targets = [i for i, name in enumerate(cluster.names) if name != victim]
            result.update(
                view_at_start=view,
                primary_replica=primary,
                victim=victim,
                replicas={str(k): v for k, v in sorted(replicas.items())},
                load_to=[cluster.names[i] for i in targets],
            )
            count = math.ceil(args.rate * (args.before + args.after))
            signed = await signer.sign(count, len(targets), parents)
            urls = [cluster.gateway(i) + "/v1/vertices?wait=true" for i in targets]
            await asyncio.sleep(1.0)  # let the machine settle after signing
            t0 = time.perf_counter() + 0.2
            out = Outcomes(due=[t0 + i / args.rate for i in range(count)])
            watch = Watch(view_at_fault=view)
            stop = asyncio.Event()
            watcher = asyncio.create_task(monitor(cluster, session, victim, fault, watch, stop))
            pids = cluster.pids()

            async def inject() -> None:
                await asyncio.sleep(max(0.0, t0 + args.before - time.perf_counter()))
                fault.pid = pids[victim]["consensus"]
                fault.wall = time.time()
                os.kill(fault.pid, sig)
                fault.at = time.perf_counter()

            injector = asyncio.create_task(inject())
            tasks: set[asyncio.Task[None]] = set()
            lag: list[float] = []
            ended_early = False
            try:
                for index, (body, _) in enumerate(signed):
                    delay = out.due[index] - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if fault.at is not None and index % 10 == 0 and done_early(out, fault, args):
                        ended_early = True
                        break
                    lag.append(time.perf_counter() - out.due[index])
                    task = asyncio.create_task(
                        submit(session, urls[index % len(urls)], body, index, out)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await injector
                load_end = time.perf_counter()
                if tasks:
                    _, still = await asyncio.wait(set(tasks), timeout=wait_s + 5)
                    for task in still:
                        task.cancel()
                    await asyncio.gather(*still, return_exceptions=True)
                out.outcome = ["no_answer_in_drain" if o == "in_flight" else o for o in out.outcome]
            finally:
                injector.cancel()
                if mode == "stop" and fault.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(fault.pid, signal.SIGCONT)
                    if fault.at is not None:
                        result["resumed_s"] = round(time.perf_counter() - fault.at, 2)
                stop.set()
                await watcher
            assert fault.at is not None and fault.wall is not None
            result.update(
                analyse(
                    out,
                    fault.at,
                    threshold_s=args.threshold_ms / 1000,
                    stable=args.stable,
                    before_s=args.before,
                )
            )
            result["observed_after_fault_s"] = round(load_end - fault.at, 2)
            result["ended_early"] = ended_early
            result["view_change"] = {
                "seconds": watch.view_change_s,
                "new_view": watch.new_view,
                "new_primary": replicas.get(watch.new_view % args.nodes)
                if watch.new_view is not None
                else None,
                "views_per_0_25_s": watch.views[:80],
            }
            if mode == "kill":
                result["restart"] = {
                    "old_pid": fault.pid,
                    "new_pid": watch.new_pid,
                    "spawned_s": watch.spawned_s,
                    "serving_s": watch.serving_s,
                }
            result["generator_send_lag_ms"] = summary_ms(lag)
            result["restarts"] = cluster.restarts()
            result["supervisor_events"] = relative_events(cluster.events, fault.wall)
    result["service_logs"] = {k: v for k, v in cluster.logs.items() if v}
    result["trial_s"] = round(time.perf_counter() - started, 1)
    return result


def done_early(out: Outcomes, fault: Fault, args: argparse.Namespace) -> bool:
    """Both figures known and ``--tail`` seconds of load past them: the trial may end."""
    assert fault.at is not None
    now = time.perf_counter()
    if now - fault.at < args.min_after:
        return False
    figures = analyse(
        out,
        fault.at,
        threshold_s=args.threshold_ms / 1000,
        stable=args.stable,
        before_s=args.before,
    )
    first, recovered = figures["first_final_s"], figures["baseline_recovered_s"]
    if first is None or recovered is None:
        return False
    return bool(now - fault.at > max(float(first), float(recovered)) + args.tail)


# -- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    deadline = started + args.max_seconds
    load_start = os.getloadavg()
    extra = parse_overrides(args.set)
    signer = Signer(args.sign_workers, keys=args.nodes)
    trials: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    priority: dict[str, Any] | None = None
    order = [m for _ in range(args.repeats) for m in args.modes]
    needed = args.before + args.after + TRIAL_OVERHEAD_S
    try:
        with tempfile.TemporaryDirectory(prefix="cretoai-failover-") as tmp:
            for number, mode in enumerate(order):
                repeat = number // len(args.modes) + 1
                if time.perf_counter() + needed > deadline:
                    skipped.append({"mode": mode, "repeat": repeat, "reason": "time budget"})
                    continue
                print(f"{mode} #{repeat} …", file=sys.stderr, flush=True)
                try:
                    result = await trial(args, mode, repeat, Path(tmp), signer, extra)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    result = {"mode": mode, "repeat": repeat, "error": repr(exc)}
                trials.append(result)
                if priority is None:
                    # after the first cluster ran, so that it started at the default
                    priority = raise_priority(args.generator_priority)
                print(
                    f"  victim {result.get('victim')}: first final "
                    f"{result.get('first_final_s')} s, latency < {args.threshold_ms:g} ms "
                    f"after {result.get('latency_recovered_s')} s (baseline "
                    f"{result.get('baseline_recovered_s')} s), view change "
                    f"{(result.get('view_change') or {}).get('seconds')} s"
                    + (
                        f", restarted (serving) {result['restart']['serving_s']} s"
                        if result.get("restart")
                        else ""
                    )
                    + (f"; error {result['error']}" if "error" in result else ""),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        signer.close()
    return {
        "benchmark": "failover",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            **machine(),
            "load_average_at_start": [round(x, 2) for x in load_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "parameters": {
            "nodes": args.nodes,
            "modes": list(args.modes),
            "repeats": args.repeats,
            "rate": args.rate,
            "before_s": args.before,
            "after_s": args.after,
            "tail_s": args.tail,
            "threshold_ms": args.threshold_ms,
            "stable": args.stable,
            "overrides": extra,
            "generator_priority": priority,
            "client": "aiohttp, POST /v1/vertices?wait=true, open loop, round-robin over the "
            "gateways of every node but the victim; 1 KB payload, ML-DSA-87 client-signed, "
            "pre-signed",
        },
        "definitions": {
            "fault": "kill: SIGKILL to the primary's consensus process (the supervisor "
            "restarts it); stop: SIGSTOP to it, SIGCONT after the trial's load",
            "first_final_s": "fault -> first 200 answer for a vertex submitted after the fault",
            "latency_recovered_s": "fault -> due time of the first vertex starting a run of "
            "`stable` consecutive submissions all finalized within threshold_ms (latency from "
            "the due time)",
            "baseline_recovered_s": "the same with max(threshold, the trial's pre-fault p99)",
            "before_fault": "submissions due in the second half of the pre-fault load and "
            "answered before the fault",
            "view_change.seconds": "fault -> every other node reports a higher "
            "cretoai_consensus_view (sampled every 0.25 s)",
            "restart": "fault -> the supervisor's new consensus process seen (spawned_s), "
            "and answering its gRPC health check (serving_s); sampled every 0.1 s",
        },
        "trials": trials,
        "skipped": skipped,
        "summary": summarise(trials, TARGET_FIRST_FINAL_S),
        "total_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--modes",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        default=list(MODES),
        help="kill, stop or both (default kill,stop)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="trials per mode (3)")
    parser.add_argument("--rate", type=float, default=20.0, help="offered vertices/s (20)")
    parser.add_argument("--before", type=float, default=5.0, help="s of load before the fault")
    parser.add_argument(
        "--after", type=float, default=20.0, help="s of load after the fault, at most (20)"
    )
    parser.add_argument(
        "--min-after", type=float, default=3.0, help="s of load after the fault, at least (3)"
    )
    parser.add_argument(
        "--tail", type=float, default=2.0, help="s of load after both figures are known (2)"
    )
    parser.add_argument("--threshold-ms", type=float, default=200.0, help="latency bound (200)")
    parser.add_argument(
        "--stable", type=int, default=10, help="consecutive submissions within it (10)"
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--sign-workers", type=int, default=2)
    parser.add_argument(
        "--generator-priority",
        type=int,
        default=15,
        help="lower the generator's nice value by this much (as cluster_load; 0: off)",
    )
    parser.add_argument("--max-seconds", type=float, default=900.0, help="budget for the run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="a node setting for every node (repeatable)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, metavar="DIR", help="copy the services' logs here"
    )
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error("--modes: kill, stop or kill,stop")
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be within [1, 20]")
    if not 1 <= args.rate <= 200:
        parser.error("--rate must be within [1, 200]")
    if not 1 <= args.before <= 60 or not 1 <= args.after <= 120:
        parser.error("--before must be within [1, 60] and --after within [1, 120]")
    if not 0 <= args.min_after <= args.after or not 0 <= args.tail <= 30:
        parser.error("--min-after must be within [0, --after] and --tail within [0, 30]")
    if not 1 <= args.threshold_ms <= 10_000 or not 1 <= args.stable <= 1000:
        parser.error("--threshold-ms must be within [1, 10000] and --stable within [1, 1000]")
    if not 4 <= args.nodes <= 7:
        parser.error("--nodes must be within [4, 7] (a primary to lose and a quorum left)")
    if not 1 <= args.sign_workers <= 16 or not 0 <= args.generator_priority <= 19:
        parser.error("--sign-workers within [1, 16], --generator-priority within [0, 19]")
    if not 30 <= args.max_seconds <= 7200:
        parser.error("--max-seconds must be within [30, 7200]")
    try:
        parse_overrides(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(OSError):
        os.setsid()  # an autogroup of its own (see cluster_load.raise_priority)
    result = run_until_terminated(run(args))
    if result is None:
        return TERMINATED_EXIT
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    tmp.replace(args.output)
    for mode, row in result["summary"].items():
        print(
            json.dumps(
                {
                    "mode": mode,
                    "trials": row["trials"],
                    "first_final_s": row["first_final_s"],
                    "latency_recovered_s": row["latency_recovered_s"]["median"],
                    "baseline_recovered_s": row["baseline_recovered_s"]["median"],
                    "view_change_s": row["view_change_s"]["median"],
                    **(
                        {"restart_serving_s": row["restart_serving_s"]["median"]}
                        if "restart_serving_s" in row
                        else {}
                    ),
                    "target_met_every_trial": row["target"]["met_every_trial"],
                }
            )
        )
    errors = [t for t in result["trials"] if "error" in t]
    return 1 if errors or not result["trials"] else 0


if __name__ == "__main__":
    sys.exit(main())
