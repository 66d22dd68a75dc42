"""The sans-I/O frame codec: whole, byte by byte, trailing garbage, oversized, random garbage."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.transport.framing import (
    OVERHEAD,
    Frame,
    FrameDecoder,
    FrameErrorKind,
    FrameTooLarge,
    FrameType,
    encode_frame,
)

MAX = 4096


def stream_of(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.type, f.body, max_frame_bytes=MAX) for f in frames)


SAMPLE = [
    Frame(type=FrameType.HELLO, body=b"hello"),
    Frame(type=FrameType.MSG, body=b""),
    Frame(type=FrameType.MSG, body=bytes(range(256)) * 3),
    Frame(type=FrameType.PING, body=b"\x00" * (MAX - 1)),  # exactly the maximum
    Frame(type=200, body=b"unknown types are the connection layer's business"),
]


def test_encode_layout() -> None:
    assert encode_frame(FrameType.MSG, b"abc", max_frame_bytes=MAX) == b"\x00\x00\x00\x04\x03abc"
    assert Frame(type=3, body=b"abc").wire_size == OVERHEAD + 3


def test_whole_stream_in_one_feed() -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX)
    frames, error = decoder.feed(stream_of(SAMPLE))
    assert error is None
    assert frames == SAMPLE
    assert decoder.buffered == 0


def test_byte_by_byte() -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX)
    out: list[Frame] = []
    data = stream_of(SAMPLE)
    for i in range(len(data)):
        frames, error = decoder.feed(data[i : i + 1])
        assert error is None
        out += frames
    assert out == SAMPLE


def test_incomplete_frame_waits_and_is_bounded() -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX)
    data = encode_frame(FrameType.MSG, b"x" * 100, max_frame_bytes=MAX)
    frames, error = decoder.feed(data[:-1])
    assert (frames, error) == ([], None)
    assert decoder.buffered == len(data) - 1
    frames, error = decoder.feed(data[-1:])
    assert error is None
    assert frames == [Frame(type=FrameType.MSG, body=b"x" * 100)]


def test_trailing_garbage_after_good_frames_is_an_error_value() -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX)
    good = stream_of(SAMPLE[:2])
    frames, error = decoder.feed(good + b"\xff\xff\xff\xff garbage")
    assert frames == SAMPLE[:2]  # what came before the garbage is still delivered
    assert error is not None and error.kind is FrameErrorKind.OVERSIZED
    # the decoder is spent: nothing more comes out, the same error stays
    frames, again = decoder.feed(stream_of(SAMPLE))
    assert frames == [] and again == error
    assert decoder.buffered == 0


def test_oversized_length_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX)
    frames, error = decoder.feed(struct.pack(">I", MAX + 1))
    assert frames == []
    assert error is not None and error.kind is FrameErrorKind.OVERSIZED
    assert "exceeds" in error.detail
    assert decoder.buffered == 0  # nothing held for the announced body


def test_zero_length_is_an_error() -> None:
    decoder = FrameDecoder(max_frame_bytes=MAX)
    frames, error = decoder.feed(b"\x00\x00\x00\x00")
    assert frames == []
    assert error is not None and error.kind is FrameErrorKind.EMPTY


def test_encoding_too_large_is_our_misuse() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(FrameType.MSG, b"x" * MAX, max_frame_bytes=MAX)
    with pytest.raises(ValueError):
        encode_frame(256, b"", max_frame_bytes=MAX)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=0)


frames_strategy = st.lists(
    st.builds(
        Frame,
        type=st.integers(min_value=0, max_value=255),
        body=st.binary(max_size=300),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(frames=frames_strategy, cuts=st.lists(st.integers(min_value=0, max_value=8000)))
def test_any_split_yields_the_same_frames(frames: list[Frame], cuts: list[int]) -> None:
    data = stream_of(frames)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    decoder = FrameDecoder(max_frame_bytes=MAX)
    out: list[Frame] = []
    for a, b in itertools.pairwise(points):
        got, error = decoder.feed(data[a:b])
        assert error is None
        out += got
    assert out == frames
    assert decoder.buffered == 0


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=2000), chunk=st.integers(min_value=1, max_value=64))
def test_random_garbage_never_raises_and_stays_bounded(garbage: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=512)
    for i in range(0, len(garbage), chunk):
        frames, error = decoder.feed(garbage[i : i + chunk])
        for frame in frames:
            assert 0 <= frame.type <= 255
            assert len(frame.body) <= 511
        assert decoder.buffered <= 4 + 512
        if error is not None:
            assert error.kind in (FrameErrorKind.OVERSIZED, FrameErrorKind.EMPTY)
            assert decoder.buffered == 0


def test_limit_can_grow_between_frames_of_one_chunk() -> None:
    # a small handshake frame and a large frame arrive together: the large one is
    # judged by the limit in force once the small one has been handled
    decoder = FrameDecoder(max_frame_bytes=64)
    small = encode_frame(FrameType.AUTH, b"a" * 10, max_frame_bytes=MAX)
    large = encode_frame(FrameType.PEERS, b"p" * 1000, max_frame_bytes=MAX)
    decoder.receive(small + large)
    first = decoder.next_frame()
    assert first == Frame(type=FrameType.AUTH, body=b"a" * 10)
    decoder.max_frame_bytes = MAX
    assert decoder.next_frame() == Frame(type=FrameType.PEERS, body=b"p" * 1000)
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
