"""bench/speed.py: the machine's speed probe, and bench.targets recording it beside a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.targets
from bench import speed
from bench.targets import Run
from cretoai.crypto import get_backend


def test_the_probe_times_real_hashing_verification_and_python() -> None:
    probe = speed.probe()
    # an ML-DSA-87 verification (a few hundred µs) costs far more than a SHA3 of 8.3 KB
    # (tens of µs): a stubbed or failing verification would not
    assert 0 < probe["sha3_8k_us"] < probe["verify_us"], probe
    assert probe["python_us"] > 0, probe


def test_a_verification_that_fails_is_not_timed_as_if_it_were_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing:
        name = "refusing"

        def __init__(self, real: Any) -> None:
            self.private_key_from_seed = real.private_key_from_seed

        def verify(self, *args: Any, **kwargs: Any) -> bool:
            return False

    real = get_backend()
    monkeypatch.setattr(speed, "get_backend", lambda: Refusing(real))
    with pytest.raises(RuntimeError, match="does not verify"):
        speed.probe()


def test_drift_names_each_figure_that_changed_by_more_than_a_fifth() -> None:
    before = {"sha3_8k_us": 15.0, "verify_us": 220.0, "python_us": 40.0}
    assert speed.drift(before, dict(before)) is None
    assert speed.drift(before, {**before, "verify_us": 260.0}) is None  # +18 %
    line = speed.drift(before, {**before, "sha3_8k_us": 31.0, "python_us": 30.0})
    assert line is not None
    assert "sha3_8k_us 15 -> 31" in line and "python_us 40 -> 30" in line
    assert "verify_us" not in line
    assert speed.drift(None, before) is None and speed.drift(before, {}) is None


def test_the_cpu_is_named_with_the_flags_that_change_native_costs() -> None:
    cpu = speed.cpu()
    assert isinstance(cpu["model"], str)
    assert set(cpu["flags"]) <= set(speed.FLAGS)


def test_a_targets_run_records_the_speed_before_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run probes before its first benchmark and after its last; judging kept results
    again probes nothing (it would describe this hour, not theirs)."""
    probes = iter(
        [
            {"sha3_8k_us": 15.0, "verify_us": 220.0, "python_us": 40.0},
            {"sha3_8k_us": 31.0, "verify_us": 225.0, "python_us": 41.0},
        ]
    )
    monkeypatch.setattr(speed, "probe", lambda: next(probes))
    monkeypatch.setattr(
        bench.targets, "plan", lambda: [Run("storage", "targets", ("--help",), 0.1, 60)]
    )
    out = tmp_path / "targets.json"
    # ``--help`` writes no result, so the run counts as failed (exit 1): the speed is
    # recorded all the same
    assert bench.targets.main(["--keep", str(tmp_path / "keep"), "--output", str(out)]) == 1
    measured = json.loads(out.read_text())["speed"]
    assert measured["before"]["sha3_8k_us"] == 15.0 and measured["after"]["sha3_8k_us"] == 31.0
    printed = capsys.readouterr().out
    assert "before, speed: sha3_8k_us 15" in printed
    assert "the machine's speed changed during the run: sha3_8k_us 15 -> 31" in printed

    monkeypatch.setattr(speed, "probe", lambda: pytest.fail("--judge must not probe"))
    again = tmp_path / "again.json"
    (tmp_path / "keep" / "node_max.json").write_text("{}")
    assert bench.targets.main(["--judge", str(tmp_path / "keep"), "--output", str(again)]) == 0
    judged = json.loads(again.read_text())["speed"]
    assert "before" not in judged and "model" in judged["cpu"]
