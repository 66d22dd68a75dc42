"""The deterministic simulator: thousands of seeds, every fault kind, zero violations.

The heavy runs are marked slow (they fan out over two processes). The
mutation test proves the checker can fail: with a quorum of f+1 it finds an
agreement violation within a bounded number of seeds.
"""

from __future__ import annotations

import json

import pytest

from services.consensus.core import quorum
from services.consensus.core.replica import Replica
from services.consensus.execution import Verdicts
from services.consensus.sim.actors import ATTACKS
from services.consensus.sim.cli import main, run_seeds
from services.consensus.sim.runner import run_seed
from services.consensus.sim.scenario import BYZANTINE_KINDS, make_scenario

FAULTS = {
    "drop",
    "duplicate",
    "delay_reorder",
    "partition_heal",
    "crash_restart",
    "byzantine_client",
    "storage_rollback",
    *(f"byzantine_{kind}" for kind in BYZANTINE_KINDS),
}


def assert_clean(summary_dict: dict[str, object]) -> None:
    assert summary_dict["violations"] == 0, summary_dict["failed_seeds"]
    assert summary_dict["liveness_failures"] == 0, summary_dict["failed_seeds"]


@pytest.mark.slow
def test_two_thousand_seeds_at_n4() -> None:
    summary = run_seeds(4, range(2000), jobs=2).as_dict()
    assert summary["seeds"] == 2000
    assert_clean(summary)
    counts = summary["fault_counts"]
    assert isinstance(counts, dict)
    assert set(counts) == FAULTS
    assert min(counts.values()) >= 100, counts
    attacks = summary["forger_attacks"]
    assert isinstance(attacks, dict) and set(attacks) == set(ATTACKS)


@pytest.mark.slow
def test_three_hundred_seeds_at_n7() -> None:
    summary = run_seeds(7, range(300), jobs=2).as_dict()
    assert summary["seeds"] == 300
    assert_clean(summary)
    counts = summary["fault_counts"]
    assert isinstance(counts, dict) and set(counts) == FAULTS


@pytest.mark.slow
def test_seeds_with_real_ml_dsa_87() -> None:
    summary = run_seeds(4, range(16), jobs=2, crypto="ml-dsa").as_dict()
    assert summary["seeds"] == 16
    assert_clean(summary)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_other_cluster_sizes(n: int) -> None:
    summary = run_seeds(n, range(12)).as_dict()
    assert_clean(summary)


def test_a_quorum_of_f_plus_1_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: with q = f+1 two quorums need not share an honest replica."""
    monkeypatch.setattr(quorum, "quorum_size", lambda n: quorum.max_faulty(n) + 1)
    for seed in range(100):
        result = run_seed(seed, 4)
        if result.violation is not None:
            assert result.violation.startswith("agreement"), result.violation
            break
    else:
        pytest.fail("no seed out of 100 caught a wrong quorum size")
    # The command line reports it and fails.
    assert main(["--nodes", "4", "--seeds", "1", "--start", str(seed), "--json"]) == 1


def test_a_verdict_cache_keyed_by_content_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: signature verdicts cached by content let one copy decide another's.

    The Byzantine client sends a badly signed copy to one replica and the valid copy
    to another; with the mutation the first replica rejects what the others finalize.
    """
    monkeypatch.setattr(Verdicts, "key", staticmethod(lambda request_hash, content: content))
    caught = []
    for seed in range(60):
        result = run_seed(seed, 4)
        if result.violation is not None:
            caught.append(result.violation)
    assert any(v.startswith("agreement") and "outcomes" in v for v in caught), caught


def test_the_byzantine_client_is_exercised_and_harmless() -> None:
    """Without the mutation, the same seeds are clean, and split copies were sent."""
    split = 0
    for seed in range(60):
        result = run_seed(seed, 4)
        assert result.ok, (seed, result.violation, result.liveness_failure)
        split += "byzantine_client" in result.faults
    assert split >= 10


def _rollback_seeds(count: int) -> list[int]:
    return [s for s in range(400) if make_scenario(s, 4).rollbacks][:count]


def test_restoring_an_old_backup_is_safe_with_the_signing_floor() -> None:
    for seed in _rollback_seeds(30):
        result = run_seed(seed, 4)
        assert result.ok, (seed, result.violation, result.liveness_failure)


def test_a_rollback_without_the_signing_floor_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: ignore the floor, and let a restarted primary propose in the view it
    recovered (either alone keeps these seeds safe), and a restored replica signs what
    conflicts."""
    monkeypatch.setattr(Replica, "_forbidden", lambda self, msg: False)
    monkeypatch.setattr(Replica, "_leave_a_recovered_view", lambda self: None)
    violations = [run_seed(seed, 4).violation for seed in _rollback_seeds(30)]
    assert any(v and v.startswith("durability") for v in violations), violations


def test_a_seed_replays_exactly() -> None:
    first = run_seed(11, 4, trace=True)
    again = run_seed(11, 4, trace=True)
    assert first.trace and first.trace == again.trace
    assert (first.messages, first.executed_batches) == (again.messages, again.executed_batches)


def test_command_line_summary_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "4", "--seeds", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] == 3 and summary["ok"] is True
    for key in ("violations", "liveness_failures", "fault_counts", "elapsed_seconds"):
        assert key in summary


def test_command_line_replays_one_seed_verbosely(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "4", "--replay", "5", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "submit request 0" in out and "execute seq=1" in out
    assert "1 seeds, n=4" in out


def test_command_line_rejects_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "0"]) == 2
    assert "error" in capsys.readouterr().err


def test_mounted_as_cretoai_node_sim(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main as cretoai_main

    assert cretoai_main(["sim", "--nodes", "4", "--seeds", "2"]) == 0
    assert "2 seeds, n=4" in capsys.readouterr().out
