"""bench.tracing_overhead's cluster_load command (no cluster)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.tracing_overhead import cluster_load_argv


def test_runs_skip_the_verify_bound() -> None:
    args = argparse.Namespace(
        sampling=0.01, rates=[10.0, 100.0], duration=12.0, warmup=3.0, max_seconds_per_run=600
    )
    argv = cluster_load_argv(args, "on", Path("/tmp/x.json"))
    assert argv[argv.index("--verify-seconds") + 1] == "0"
    assert argv[argv.index("--tracing") + 1] == "on"
    assert argv[argv.index("--rates") + 1] == "10,100"
