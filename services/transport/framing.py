"""Length-prefixed frames on a QUIC stream: a sans-I/O codec (no asyncio, no sockets).

Wire format of one frame::

    +----------------------+-----------+----------------------+
    | length (u32, BE)     | type (u8) | body (length-1 bytes)|
    +----------------------+-----------+----------------------+

``length`` counts the type byte and the body, so it is at least 1 and at most
the configured maximum frame size. A length outside ``[1, max_frame_bytes]``
is a protocol error the moment the four length bytes are in: the decoder never
buffers more than one maximum frame. Frame types unknown to this version are
returned as frames (the connection layer decides); the codec only knows sizes.

Peer faults are *values* (:class:`FrameError`), never exceptions: after one,
the decoder is spent and keeps returning the same error. Our own misuse
(encoding a frame that is too large) raises :class:`FrameTooLarge`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">IB")
LENGTH = struct.Struct(">I")
#: Bytes of framing around a body.
OVERHEAD = HEADER.size
#: Where an encoded frame's type byte is.
TYPE_OFFSET = LENGTH.size


class FrameType(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    MSG = 3
    PING = 4
    PONG = 5
    ACK = 6
    PEERS = 7
    #: A MSG frame's body compressed with zstd (services/transport/compression.py); sent
    #: only to a peer whose HELLO offered the "zstd" feature.
    MSG_ZSTD = 8


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    body: bytes

    @property
    def wire_size(self) -> int:
        return OVERHEAD + len(self.body)


class FrameErrorKind(enum.Enum):
    EMPTY = "empty_frame"
    OVERSIZED = "oversized_frame"


@dataclass(frozen=True, slots=True)
class FrameError:
    """The peer sent bytes that cannot be a frame stream; the connection must close."""

    kind: FrameErrorKind
    detail: str


class FrameTooLarge(ValueError):
    """Our misuse: asked to encode a body larger than the maximum frame size."""


def encode_frame(frame_type: int, body: bytes, *, max_frame_bytes: int) -> bytes:
    if not 0 <= frame_type <= 255:
        raise ValueError(f"frame type {frame_type} does not fit one byte")
    length = len(body) + 1
    if length > max_frame_bytes:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the maximum of {max_frame_bytes}")
    return HEADER.pack(length, frame_type) + body


class FrameDecoder:
    """Feed stream bytes in; take whole frames (or one :class:`FrameError`) out.

    At most one incomplete frame (``4 + max_frame_bytes`` bytes) stays buffered
    between calls to :meth:`feed`.
    """

    def __init__(self, *, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._pos = 0  # start of the first unparsed frame in _buffer
        self._error: FrameError | None = None

    @property
    def error(self) -> FrameError | None:
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> tuple[list[Frame], FrameError | None]:
        """Add ``data``; return the frames it completes and the error, if the stream broke.

        Frames completed before the bad bytes are still returned.
        """
        self.receive(data)
        frames: list[Frame] = []
        while True:
            item = self.next_frame()
            if item is None:
                return frames, None
            if isinstance(item, FrameError):
                return frames, item
            frames.append(item)

    def receive(self, data: bytes) -> None:
        """Add ``data`` (nothing is parsed until :meth:`next_frame`)."""
        if self._error is None:
            self._buffer += data

    def next_frame(self) -> Frame | FrameError | None:
        """The next whole frame, the error if the stream broke, or None for "need more".

        Taking frames one at a time lets the caller change :attr:`max_frame_bytes`
        between them (the limit grows once the peer is authenticated).
        """
        if self._error is not None:
            return self._error
        buf = self._buffer
        pos = self._pos
        end = len(buf)
        if end - pos < LENGTH.size:
            self._compact()
            return None
        (length,) = LENGTH.unpack_from(buf, pos)
        if length == 0:
            return self._fail(FrameErrorKind.EMPTY, "frame length 0")
        if length > self.max_frame_bytes:
            return self._fail(
                FrameErrorKind.OVERSIZED,
                f"frame length {length} exceeds the maximum of {self.max_frame_bytes}",
            )
        stop = pos + LENGTH.size + length
        if stop > end:
            self._compact()
            return None
        frame = Frame(type=buf[pos + LENGTH.size], body=bytes(buf[pos + 5 : stop]))
        self._pos = stop
        return frame

    def _compact(self) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0

    def _fail(self, kind: FrameErrorKind, detail: str) -> FrameError:
        self._error = FrameError(kind=kind, detail=detail)
        self._buffer = bytearray()
        self._pos = 0
        return self._error
