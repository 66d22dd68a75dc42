"""A flooding peer cannot fill the disk with log lines: faults are logged sparsely."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from services.consensus.driver import Driver


def test_a_peer_charged_a_thousand_times_gets_ten_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = SimpleNamespace(
        _faults_seen=Counter(),
        names=("node1", "node2"),
        _where=lambda: {"view": 3, "seq": 17},
    )
    with caplog.at_level(logging.WARNING, logger="services.consensus.driver"):
        for _ in range(1000):
            Driver._log_fault(driver, 1, "bad_signature")  # type: ignore[arg-type]
        Driver._log_fault(driver, 0, "malformed")  # type: ignore[arg-type]
    lines = [r for r in caplog.records if r.getMessage() == "fault charged to peer"]
    fields = [r.fields for r in lines]  # type: ignore[attr-defined]
    assert [f["count"] for f in fields if f["peer"] == "node2"] == [2**k for k in range(10)]
    assert fields[-1] == {"view": 3, "seq": 17, "peer": "node1", "kind": "malformed", "count": 1}
