"""services/transport/bounded_quic.py: the ranges a stream received, kept by bisection."""

from __future__ import annotations

import random

import pytest
from aioquic.quic.rangeset import RangeSet

from services.transport.bounded_quic import GapSet


@pytest.mark.parametrize("seeds", [range(0, 100), range(100, 200)])
def test_a_gap_set_holds_what_aioquics_range_set_holds(seeds: range) -> None:
    """The same adds and shifts, in a random order: the same ranges, merged the same way
    (overlapping and touching ranges merge)."""
    for seed in seeds:
        try:
            _same_as_aioquic(random.Random(seed))
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc


def _same_as_aioquic(rng: random.Random) -> None:
    ours, theirs = GapSet(), RangeSet()
    for _ in range(rng.randint(1, 120)):
        if len(theirs) and rng.random() < 0.1:
            assert ours.shift() == theirs.shift()
        else:
            start = rng.randrange(0, 400)
            stop = start + rng.randint(1, 12)
            ours.add(start, stop)
            theirs.add(start, stop)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)
        if len(theirs):
            assert ours[0] == theirs[0] and ours[-1] == theirs[-1]
    assert list(GapSet(theirs)) == list(theirs)  # built from aioquic's


def test_one_byte_ranges_with_a_gap_between_each_cost_no_scan() -> None:
    """aioquic's RangeSet scans from the front on every insertion; ascending one-byte
    ranges with gaps made 32,767 of them take 33 s. Here each insertion bisects: count
    the comparisons the lists are searched with."""
    calls = 0

    class Counted(int):
        def __lt__(self, other: int) -> bool:
            nonlocal calls
            calls += 1
            return int(self) < int(other)

    gaps = GapSet()
    n = 4096
    for i in range(1, n + 1):
        gaps.add(Counted(2 * i), Counted(2 * i + 1))
    assert len(gaps) == n
    assert calls < n * 2 * 14  # two bisections of log2(4096) = 12 steps each, and a margin


def test_padding_is_skipped_up_to_the_next_frame_or_the_end() -> None:
    """The PADDING handler steps over a run of zero bytes (at C speed, not byte by byte
    in Python) and leaves the buffer at the next frame, or at its end."""
    from aioquic.buffer import Buffer  # type: ignore[attr-defined]

    from services.transport.bounded_quic import BoundedQuicConnection

    class Context:
        quic_logger_frames: list[object] = []

    class Connection:
        _quic_logger = None

    handle = BoundedQuicConnection._handle_padding_frame
    for data, start, end in (
        (b"\x00\x00\x00\x01\x00", 1, 3),  # stops at the PING
        (bytes(60_000), 1, 60_000),  # a whole 60-KB packet of padding
        (b"\x00\x07", 1, 1),  # no padding left: stays
    ):
        buf = Buffer(data=data)
        buf.seek(start)
        handle(Connection(), Context(), 0, buf)  # type: ignore[arg-type]
        assert buf.tell() == end
