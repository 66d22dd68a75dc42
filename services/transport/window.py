"""QUIC receive windows that slide with the data delivered, never with the data announced.

aioquic raises a stream's receive window (MAX_STREAM_DATA), and the connection's
(MAX_DATA), by doubling it whenever the highest offset received passes half of it,
out-of-order data included, and it buffers the whole gap below the highest byte
received. A peer that sends one byte at the end of the window, round trip after round
trip, has it doubled each time and the gap allocated: a stranger that had only completed
the QUIC handshake made a node allocate 2 GiB in 12 round trips, before it ever
authenticated (``tests/transport/test_service.py::
test_a_stranger_cannot_grow_its_receive_window_with_data_out_of_order``).

:class:`SlidingWindowConnection` grants instead at most ``receive_window`` bytes beyond
what the stream (or the connection) has delivered in order, so what a peer can make it
buffer is bounded by that window: :data:`UNAUTHENTICATED_RECEIVE_WINDOW` until the peer
authenticates (the HELLO and AUTH frames are a few KiB), then the node's flow window
(:meth:`SlidingWindowConnection.open_receive_window`). It relies on aioquic's private
flow-control fields (``_local_max_data``, ``QuicStream.max_stream_data_local``, the
receiver's ``_buffer_start`` and ``highest_offset``); the test above fails if they change.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.stream import QuicStream

#: Receive window (per stream and per connection) of a connection that has not
#: authenticated: above the two 16-KiB frames of HELLO and AUTH frames, far below a flow window.
UNAUTHENTICATED_RECEIVE_WINDOW = 64 * 1024


class SlidingWindowConnection(QuicConnection):
    """A :class:`QuicConnection` whose receive windows end ``receive_window`` bytes past
    what was delivered in order (module docstring). Create it with a configuration whose
    ``max_data`` and ``max_stream_data`` are :data:`UNAUTHENTICATED_RECEIVE_WINDOW`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receive_window = UNAUTHENTICATED_RECEIVE_WINDOW

    def open_receive_window(self, window: int) -> None:
        """Grant ``window`` bytes past what was delivered (once the peer authenticated);
        the new limits go out with the next packet."""
        self.receive_window = max(self.receive_window, window)

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
