"""aioquic's QuicConnection with bounds on what a peer can make it hold or compute.

Three things a peer could do to a node through aioquic before it ever authenticated
(some with a spoofed datagram and no handshake at all), each found on 2026-12-03 and
each bounded here (docs/security.md, "Network attackers").

**Receive windows that slide with the data delivered, never with the data announced.**
aioquic raises a stream's receive window (MAX_STREAM_DATA), and the connection's
(MAX_DATA), by doubling it whenever the highest offset received passes half of it,
out-of-order data included, and it buffers the whole gap below the highest byte
received. A peer that sends one byte at the end of the window, round trip after round
trip, has it doubled each time and the gap allocated: a stranger that had only completed
the QUIC handshake made a node allocate 2 GiB in 12 round trips, before it ever
authenticated (``tests/transport/test_service.py::
test_a_stranger_cannot_grow_its_receive_window_with_data_out_of_order``).

:class:`BoundedQuicConnection` grants instead at most ``receive_window`` bytes beyond
what the stream (or the connection) has delivered in order, so what a peer can make it
buffer is bounded by that window: :data:`UNAUTHENTICATED_RECEIVE_WINDOW` until the peer
authenticates (the HELLO and AUTH frames are a few KiB), then the node's flow window
(:meth:`BoundedQuicConnection.open_receive_window`). It relies on aioquic's private
flow-control fields (``_local_max_data``, ``QuicStream.max_stream_data_local``, the
receiver's ``_buffer_start`` and ``highest_offset``); the test above fails if they change.

**Gaps kept by bisection, and counted.** It also replaces each stream receiver's
record of the ranges received (aioquic's ``RangeSet``, which scans its list from the
front on every insertion) with :class:`GapSet`, found by bisection: one-byte frames at
increasing offsets with a gap between each made aioquic spend 33 s of the event loop on
the 32,768 ranges that fit in 64 KiB. The same holds for the CRYPTO streams of the TLS
handshake (aioquic lets them hold 512 KiB, and Initial packets, whose keys anyone can
derive, carry them). And a connection whose streams hold more gaps than
:attr:`max_gaps` (16 before authentication, :data:`AUTHENTICATED_MAX_GAPS` after: far
more than the packets lost at once on any working path) is a peer fault
(:meth:`fragmented`).

**ACK frames of a bounded size.** aioquic parses an ACK frame's ranges into a
``RangeSet`` before it checks them, each inserted at the front of a list: the 32,000
ranges a 64-KB datagram can hold cost 205 ms of CPU, and ACK frames are allowed in
Initial packets, whose keys anyone can derive: a spoofed datagram needs no handshake.
An ACK frame with more than :data:`MAX_ACK_RANGES` ranges closes the connection before
it is parsed (aioquic's own ACKs carry at most 64); :attr:`BoundedQuicConnection.refused`
says why.

**CRYPTO streams of a bounded size.** aioquic lets each of the TLS handshake's three
CRYPTO streams hold 512 KiB ahead of what TLS read, so one byte at offset 512 KiB - 1
(one gap, far below :attr:`max_gaps`) made it allocate half a MiB per connection: 32 MiB
over the pending connections, 8 times what their stream windows allow. A CRYPTO frame
ending more than :data:`MAX_PENDING_CRYPTO` past what TLS read closes the connection
(``crypto_buffering``), as aioquic's own check would at 512 KiB.

**A bounded number of frames per packet, and padding skipped at C speed.** aioquic
handles each frame with a Python call: a packet full of one-byte PING frames cost it 1.2
ms of CPU per 1,350-byte packet, 9.4 ms per 16,000-byte one and 29.5 ms per 60,000-byte
one (about 0.6 us per byte, ten to twenty times what the same bytes cost as stream data),
and anyone who completed the QUIC handshake may send them, before it authenticated. A
packet with more than :data:`MAX_FRAMES_PER_PACKET` frames closes the connection
(``frames``); aioquic's own packets carry a few (an ACK, the stream frames, flow-control
updates, up to 8 new connection IDs). Its PADDING handler stepped over the zero bytes one
by one in Python (2.7 ms for a 60,000-byte run); they are skipped with one ``lstrip``.

**Packets larger than 16 KiB, on loopback.** aioquic writes each STREAM frame's length on
two bytes, so a frame carries at most 16,383 bytes, and it writes one STREAM frame per
stream per packet: a packet larger than that corrupts (peers saw unknown frame types).
:meth:`BoundedQuicConnection._write_stream_frame` fills a packet with several frames of at
most :data:`MAX_STREAM_FRAME_DATA` bytes each, which lets a connection to a peer on this
host send :data:`LARGE_LOOPBACK_DATAGRAM_BYTES`-byte packets once both offered the feature
(:meth:`BoundedQuicConnection.raise_datagram_size`): aioquic's cost is per packet.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any, NoReturn

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.connection import QuicConnection, QuicConnectionError, QuicReceiveContext
from aioquic.quic.packet import QuicErrorCode
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.stream import QuicStream

#: Receive window (per stream and per connection) of a connection that has not
#: authenticated: room for its HELLO and AUTH frames (at most 16 KiB each), far below a
#: flow window.
UNAUTHENTICATED_RECEIVE_WINDOW = 64 * 1024
#: Gaps (ranges received beyond the first missing byte) the streams of a connection may
#: hold: before authentication the few frames of HELLO and AUTH; after, lost packets.
UNAUTHENTICATED_MAX_GAPS = 16
AUTHENTICATED_MAX_GAPS = 1024
#: Ranges an ACK frame may carry (its range count + 1). aioquic sends at most 64.
MAX_ACK_RANGES = 256
#: Bytes a TLS CRYPTO stream may hold beyond what TLS has read, per epoch. aioquic allows
#: 512 KiB; the node's handshake messages are a few KiB (an Ed25519 certificate).
MAX_PENDING_CRYPTO = 16 * 1024
#: Frames a packet may carry (PADDING's run of zero bytes counts as one). aioquic's own
#: packets carry a handful; a packet of one-byte frames is an attack on the CPU.
MAX_FRAMES_PER_PACKET = 256
#: The most data aioquic can put in one STREAM frame (its length is a 2-byte varint).
MAX_STREAM_FRAME_DATA = 16383
#: Datagram size towards a peer on this host once both offered
#: :data:`LARGE_DATAGRAMS_FEATURE`: under the 65,507-byte UDP payload of IPv4 loopback.
LARGE_LOOPBACK_DATAGRAM_BYTES = 60_000
#: The HELLO feature saying "I take datagrams of up to LARGE_LOOPBACK_DATAGRAM_BYTES from
#: a peer on this host" (an older transport drops any over 16,000 bytes unread).
LARGE_DATAGRAMS_FEATURE = "large-loopback-datagrams"


class GapSet:
    """The byte ranges a stream has received, disjoint and sorted: what aioquic's
    ``RangeSet`` offers its stream receiver (``add``, ``shift``, ``[i]``, ``len``), with
    the place of a new range found by bisection instead of a scan from the front."""

    __slots__ = ("_starts", "_stops")

    def __init__(self, ranges: Any = ()) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        for r in ranges:
            self.add(r.start, r.stop)

    def add(self, start: int, stop: int | None = None) -> None:
        if stop is None:
            stop = start + 1
        assert stop > start
        starts, stops = self._starts, self._stops
        # ranges that overlap or touch [start, stop) merge with it (as RangeSet does)
        first = bisect_left(stops, start)
        end = bisect_right(starts, stop)
        if first < end:
            start = min(start, starts[first])
            stop = max(stop, stops[end - 1])
            del starts[first:end], stops[first:end]
        starts.insert(first, start)
        stops.insert(first, stop)

    def shift(self) -> range:
        return range(self._starts.pop(0), self._stops.pop(0))

    def __getitem__(self, index: int) -> range:
        return range(self._starts[index], self._stops[index])

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[range]:
        return map(range, self._starts, self._stops)


class BoundedQuicConnection(QuicConnection):
    """A :class:`QuicConnection` whose receive windows end ``receive_window`` bytes past
    what was delivered in order (module docstring). Create it with a configuration whose
    ``max_data`` and ``max_stream_data`` are :data:`UNAUTHENTICATED_RECEIVE_WINDOW`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receive_window = UNAUTHENTICATED_RECEIVE_WINDOW
        self.max_gaps = UNAUTHENTICATED_MAX_GAPS
        #: Why this connection closed itself on the peer's frame (a metric label), if so.
        self.refused: str | None = None
        #: Frames the packet being read may still carry (reset for each packet).
        self._frames_left = MAX_FRAMES_PER_PACKET
        handlers = self._QuicConnection__frame_handlers  # type: ignore[attr-defined]
        for frame_type, (handler, epochs) in handlers.items():
            handlers[frame_type] = (self._counted(handler), epochs)

    def _counted(self, handler: Any) -> Any:
        """``handler``, refusing the frame once the packet has carried too many."""

        def counted(context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
            self._frames_left -= 1
            if self._frames_left < 0:
                self._refuse(
                    "frames",
                    QuicErrorCode.PROTOCOL_VIOLATION,
                    frame_type,
                    f"more than {MAX_FRAMES_PER_PACKET} frames in one packet",
                )
            handler(context, frame_type, buf)

        return counted

    def _payload_received(self, *args: Any, **kwargs: Any) -> Any:
        self._frames_left = MAX_FRAMES_PER_PACKET
        return super()._payload_received(*args, **kwargs)

    def _handle_padding_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        start = buf.tell()
        rest = buf.data_slice(start, buf.capacity)
        buf.seek(start + len(rest) - len(rest.lstrip(b"\x00")))
        if self._quic_logger is not None and context.quic_logger_frames is not None:
            context.quic_logger_frames.append(self._quic_logger.encode_padding_frame())

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        for crypto in self._crypto_streams.values():  # TLS's own streams, one per epoch
            crypto.receiver._ranges = GapSet()  # type: ignore[assignment]

    def open_receive_window(self, window: int) -> None:
        """Grant ``window`` bytes past what was delivered (once the peer authenticated);
        the new limits go out with the next packet."""
        self.receive_window = max(self.receive_window, window)
        self.max_gaps = AUTHENTICATED_MAX_GAPS

    def fragmented(self) -> bool:
        """Whether the peer left more gaps in its streams than :attr:`max_gaps` (each range
        held beyond a stream's delivered bytes follows a gap)."""
        streams = (*self._streams.values(), *self._crypto_streams.values())
        return sum(len(s.receiver._ranges) for s in streams) > self.max_gaps

    def _with_gap_sets(self, stream: QuicStream) -> QuicStream:
        """Give ``stream``, and the lower ones opened with it, a :class:`GapSet`."""
        if not isinstance(stream.receiver._ranges, GapSet):
            for each in self._streams.values():
                receiver = each.receiver
                if not isinstance(receiver._ranges, GapSet):
                    receiver._ranges = GapSet(receiver._ranges)  # type: ignore[assignment]
        return stream

    def _refuse(self, reason: str, error: int, frame_type: int, phrase: str) -> NoReturn:
        """Close the connection on the peer's frame, before aioquic parses it;
        :attr:`refused` says why (a metric label)."""
        self.refused = reason
        raise QuicConnectionError(error_code=error, frame_type=frame_type, reason_phrase=phrase)

    def _handle_ack_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        start = buf.tell()
        buf.pull_uint_var()  # largest acknowledged
        buf.pull_uint_var()  # ACK delay
        ranges = buf.pull_uint_var() + 1  # the first range and the counted others
        buf.seek(start)
        if ranges > MAX_ACK_RANGES:
            self._refuse(
                "ack_ranges",
                QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type,
                f"ACK frame with {ranges} ranges (at most {MAX_ACK_RANGES})",
            )
        super()._handle_ack_frame(context, frame_type, buf)

    def _handle_crypto_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        start = buf.tell()
        offset = buf.pull_uint_var()
        length = buf.pull_uint_var()
        buf.seek(start)
        stream = self._crypto_streams[context.epoch]
        if offset + length - stream.receiver.starting_offset() > MAX_PENDING_CRYPTO:
            self._refuse(
                "crypto_buffering",
                QuicErrorCode.CRYPTO_BUFFER_EXCEEDED,
                frame_type,
                f"CRYPTO data past {MAX_PENDING_CRYPTO} bytes of buffering",
            )
        super()._handle_crypto_frame(context, frame_type, buf)

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        return self._with_gap_sets(super()._get_or_create_stream(frame_type, stream_id))

    def _get_or_create_stream_for_send(self, stream_id: int) -> QuicStream:
        return self._with_gap_sets(super()._get_or_create_stream_for_send(stream_id))

    def buffered_out_of_order(self) -> int:
        """Bytes received above the first gap of each stream, held until it fills."""
        return sum(
            stream.receiver.highest_offset - stream.receiver._buffer_start
            for stream in self._streams.values()
        )

    def _raise_to(self, limit: int, delivered: int) -> int:
        """The new limit: ``delivered + window`` once the room left is under 3/4 of the
        window (fewer MAX_DATA frames), never lower than it was (QUIC limits only grow)."""
        wanted = delivered + self.receive_window
        return wanted if wanted - limit >= self.receive_window // 4 else limit

    @property
    def datagram_size(self) -> int:
        """The largest datagram this connection sends."""
        return int(self._max_datagram_size)

    def raise_datagram_size(self, size: int) -> None:
        """Send packets of up to ``size`` bytes from now on (the handshake is over: its
        long-header packets, whose lengths aioquic also writes on two bytes, are not
        built again). Congestion control and pacing keep the size they started with."""
        self._max_datagram_size = max(self._max_datagram_size, size)

    def _write_stream_frame(
        self, builder: QuicPacketBuilder, space: Any, stream: QuicStream, max_offset: int
    ) -> int:
        """As many STREAM frames of ``stream`` as fit in the packet, each at most
        :data:`MAX_STREAM_FRAME_DATA` bytes (aioquic writes one, whatever its size).
        ``max_offset`` is an absolute flow-control bound, the same for every frame."""
        used = 0
        while True:
            room = builder.remaining_flight_space
            bound = min(max_offset, stream.sender.next_offset + MAX_STREAM_FRAME_DATA)
            used += super()._write_stream_frame(builder, space, stream, bound)
            if builder.remaining_flight_space == room:  # nothing more was written
                return used

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        max_data = self._local_max_data
        # ``used`` counts the highest offset of every stream: delivered + out of order
        delivered = max_data.used - self.buffered_out_of_order()
        max_data.value = self._raise_to(max_data.value, delivered)
        used, max_data.used = max_data.used, 0  # keeps aioquic from doubling it
        try:
            super()._write_connection_limits(builder, space)
        finally:
            max_data.used = used

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: Any, stream: QuicStream
    ) -> None:
        receiver = stream.receiver
        if stream.max_stream_data_local:  # zero for our own unidirectional streams
            stream.max_stream_data_local = self._raise_to(
                stream.max_stream_data_local, receiver._buffer_start
            )
        highest, receiver.highest_offset = receiver.highest_offset, 0  # no doubling
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest
