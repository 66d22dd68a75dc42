"""Compressed MSG frames: zstd over a message's bytes, between transports that both offer it.

A MSG frame carries a serialized ``Envelope`` whose payload is a consensus message. Large
ones (a PRE-PREPARE with its request bodies, forwarded requests) repeat whole fields: a
client's 2,592-byte ML-DSA-87 public key comes with each of its vertices. zstd at level 1
takes about a third off a 117-vertex PRE-PREPARE from four clients (0.5 ms to compress its
970 KB, 0.06 ms to decompress, on the 2-core machine of docs/benchmarks.md), and the
transport's cost is per packet. The signatures are incompressible; nothing in a frame is
secret (vertices and consensus messages are public and signed), so compressing before
QUIC's encryption leaks nothing a compression oracle could find.

A transport offers the feature in its HELLO (``features``: ``"zstd"``); a sender uses
``MSG_ZSTD`` frames towards a peer that offered it, plain MSG frames otherwise. The
receiver bounds what a frame may expand to: the zstd frame must declare its content size,
at most ``max_frame_bytes`` and at most :data:`MAX_RATIO` times its own size (a sender
whose message compresses further sends it plain), so a peer's flow-control window of
compressed bytes cannot make this process decompress and hold without bound. One frame
decodes to one message: bytes after the zstd frame are refused.
"""

from __future__ import annotations

import zstandard

#: The feature name offered in WireHello.features.
FEATURE = "zstd"
#: Messages shorter than this are sent plain (small PBFT messages: nothing to gain).
MIN_BYTES = 4096
#: A compressed form is used only when it saves at least this share of the bytes.
MIN_SAVING = 0.05
#: The most a MSG_ZSTD frame may expand, content size over compressed size.
MAX_RATIO = 32
LEVEL = 1

_compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
_decompressor = zstandard.ZstdDecompressor()


class CompressionError(ValueError):
    """A MSG_ZSTD frame that is not a bounded zstd frame of a message."""


def compress(body: bytes) -> bytes | None:
    """``body`` compressed, or None when it is better sent as it is (too short, too little
    saved, or expanding beyond what a receiver accepts)."""
    if len(body) < MIN_BYTES:
        return None
    packed = _compressor.compress(body)
    if len(packed) > len(body) * (1 - MIN_SAVING) or len(body) > len(packed) * MAX_RATIO:
        return None
    return packed


def decompress(packed: bytes, *, max_bytes: int) -> bytes:
    """The message in a MSG_ZSTD frame's body; :class:`CompressionError` when it is not a
    zstd frame declaring a content size within ``max_bytes`` and :data:`MAX_RATIO`."""
    try:
        size = zstandard.frame_content_size(packed)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"not a zstd frame: {exc}") from None
    if size < 0:
        raise CompressionError("the zstd frame does not declare its content size")
    if size > max_bytes or size > len(packed) * MAX_RATIO:
        raise CompressionError(
            f"the zstd frame expands to {size} bytes from {len(packed)} (at most "
            f"{max_bytes} bytes and {MAX_RATIO} times)"
        )
    try:  # libzstd checks the content against the declared size
        body: bytes = _decompressor.decompress(packed, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"undecodable zstd frame: {exc}") from None
    return body
