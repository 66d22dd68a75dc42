"""A cluster benchmark ended by SIGTERM stops its cluster: the run is a session leader and
its services run in sessions of their own, so the default action of the signal left all
of them running (found 2026-12-04)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster_load import TERMINATED_EXIT
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(300)]


def services_under(root: Path) -> list[int]:
    """Pids of the processes whose command line names a path under ``root``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(str(root).encode() in arg for arg in argv):
            out.append(int(entry.name))
    return out


def test_sigterm_while_the_cluster_starts_leaves_no_service_running(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "bench.cluster_load", "--rates", "10", "--duration", "5",
        "--verify-seconds", "0", "--output", str(tmp_path / "out.json"), "--plot", "",
    ]  # fmt: skip
    bench = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(services_under(tmp_path)) < 4:  # some of the 16 services started
            assert bench.poll() is None, bench.stderr.read() if bench.stderr else ""
            assert time.monotonic() < deadline, "no service started within 120 s"
            time.sleep(0.1)
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == TERMINATED_EXIT, stderr[-3000:]
    assert "terminated" in stderr
    assert services_under(tmp_path) == []
    assert not (tmp_path / "out.json").exists()
