"""bench/verify_dispatch.py, a short real run: every way verifies real ML-DSA-87
signatures and the figures are CPU per verification with their ratio to inline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import verify_dispatch


def test_short_run_reports_each_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "verify_dispatch.json"
    assert verify_dispatch.main(["--vertices", "6", "--repeats", "2", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out) == result
    medians = result["cpu_us_per_verification_median"]
    assert set(medians) == set(verify_dispatch.WAYS)
    # an ML-DSA-87 verification costs tens of µs at the very least on any machine
    assert all(30 < v < 100_000 for v in medians.values()), medians
    assert result["ratio_to_inline"]["inline"] == 1.0
    assert all(len(runs) == 2 for runs in result["runs_cpu_us"].values())
