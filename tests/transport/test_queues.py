"""The bounded queues and their drop-oldest policy."""

from __future__ import annotations

import pytest

from services.transport.queues import InboundMux, SendQueue


def test_send_queue_drops_the_oldest_by_count() -> None:
    queue = SendQueue(max_messages=3, max_bytes=1000)
    assert [queue.push(bytes([i]) * 10) for i in range(5)] == [0, 0, 0, 1, 1]
    assert len(queue) == 3 and queue.bytes == 30
    assert [queue.pop().frame[0] for _ in range(3)] == [2, 3, 4]
    assert queue.bytes == 0


def test_send_queue_drops_the_oldest_by_bytes() -> None:
    queue = SendQueue(max_messages=100, max_bytes=100)
    queue.push(b"a" * 40)
    queue.push(b"b" * 40)
    assert queue.push(b"c" * 50) == 1  # "a" goes, 90 bytes remain
    assert queue.bytes == 90 and len(queue) == 2
    assert queue.push(b"d" * 101) == 1  # larger than the bound on its own: refused
    assert queue.bytes == 90
    assert queue.clear() == 2 and queue.bytes == 0


def test_send_queue_keeps_ready_times() -> None:
    queue = SendQueue(max_messages=10, max_bytes=100)
    queue.push(b"x", ready_at=5.0)
    head = queue.peek()
    assert head is not None and head.ready_at == 5.0
    with pytest.raises(ValueError):
        SendQueue(max_messages=0, max_bytes=1)


def test_inbound_mux_is_round_robin_and_bounded_per_source() -> None:
    mux: InboundMux[str] = InboundMux(max_per_source=3)
    for i in range(10):
        mux.push("flood", f"f{i}")
    mux.push("quiet", "q0")
    mux.push("quiet", "q1")
    assert mux.depth("flood") == 3  # the flooder only lost its own oldest
    assert len(mux) == 5
    assert mux.take(10) == ["f7", "q0", "f8", "q1", "f9"]
    assert len(mux) == 0 and mux.take(5) == []


def test_inbound_mux_take_respects_a_byte_budget() -> None:
    mux: InboundMux[bytes] = InboundMux(max_per_source=10, size=len)
    for i in range(5):
        mux.push("a", bytes([i]) * 100)
    batch = mux.take(10, max_bytes=250)
    assert len(batch) == 2
    huge: InboundMux[bytes] = InboundMux(max_per_source=10, size=len)
    huge.push("a", b"x" * 1000)
    assert len(huge.take(10, max_bytes=10)) == 1  # one always goes
    assert mux.clear("a") == 3 and len(mux) == 0
    with pytest.raises(ValueError):  # a budget in bytes without sizes
        InboundMux[bytes](max_per_source=10).take(1, max_bytes=10)


def test_inbound_mux_sizes_each_item_once() -> None:
    # the node's size function serializes the envelope (protobuf ByteSize): the bytes
    # bound, the drop of an old item and take's budget reuse the size taken at push
    sized: list[bytes] = []

    def size(item: bytes) -> int:
        sized.append(item)
        return len(item)

    mux: InboundMux[bytes] = InboundMux(max_per_source=10, max_bytes_per_source=500, size=size)
    items = [bytes([i]) * 200 for i in range(4)]
    dropped = [mux.push("a", item) for item in items]
    assert dropped == [0, 0, 1, 1]  # 500 bytes hold two of them
    assert mux.bytes_of("a") == 400
    assert mux.take(10, max_bytes=300) == [items[2]]
    assert mux.take(10, max_bytes=300) == [items[3]]
    assert mux.bytes_of("a") == 0
    assert sized == items  # each once, when it was pushed


def test_inbound_mux_bounds_each_source_in_bytes_too() -> None:
    # a peer sending large frames while consensus is slow: the count bound (100) is far
    # off, the bytes bound keeps only its newest 1,000 bytes; the others are unaffected
    mux: InboundMux[bytes] = InboundMux(max_per_source=100, max_bytes_per_source=1000, size=len)
    dropped = [mux.push("flood", bytes([i]) * 300) for i in range(10)]
    assert dropped == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert mux.depth("flood") == 3 and mux.bytes_of("flood") == 900
    assert mux.push("quiet", b"q" * 1000) == 0
    assert mux.push("flood", b"x" * 1000) == 3  # one frame alone always stays
    assert mux.bytes_of("flood") == 1000
    assert mux.take(10) == [b"x" * 1000, b"q" * 1000]
    assert mux.bytes_of("flood") == 0 and mux.bytes_of("quiet") == 0
    mux.push("flood", b"y" * 10)
    assert mux.clear("flood") == 1 and mux.bytes_of("flood") == 0
