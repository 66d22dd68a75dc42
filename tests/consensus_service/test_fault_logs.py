"""A flooding peer cannot fill the disk with log lines: faults are logged sparsely."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from services.consensus.core.reputation import FaultKind
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
            Driver._log_fault(driver, 1, FaultKind.INVALID_SIGNATURE)  # type: ignore[arg-type]
        Driver._log_fault(driver, 0, FaultKind.MALFORMED)  # type: ignore[arg-type]
    lines = [r for r in caplog.records if r.getMessage() == "fault charged to peer"]
    fields = [r.fields for r in lines]  # type: ignore[attr-defined]
    assert [f["count"] for f in fields if f["peer"] == "node2"] == [2**k for k in range(10)]
    assert fields[-1] == {"view": 3, "seq": 17, "peer": "node1", "kind": "malformed", "count": 1}


def test_free_faults_are_logged_at_info_and_costly_ones_as_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stale and out-of-window messages cost no reputation (honest peers send them when
    retransmissions cross): info, so that a healthy loaded cluster logs no warnings."""
    driver = SimpleNamespace(
        _faults_seen=Counter(), names=("node1", "node2"), _where=lambda: {"view": 0, "seq": 1}
    )
    with caplog.at_level(logging.INFO, logger="services.consensus.driver"):
        for kind in (FaultKind.STALE, FaultKind.OUT_OF_WINDOW, FaultKind.PROTOCOL):
            Driver._log_fault(driver, 1, kind)  # type: ignore[arg-type]
    levels = {r.fields["kind"]: r.levelname for r in caplog.records}  # type: ignore[attr-defined]
    assert levels == {"stale": "INFO", "out_of_window": "INFO", "protocol": "WARNING"}
