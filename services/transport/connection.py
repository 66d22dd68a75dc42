"""One QUIC connection to a peer, sans I/O: bytes and ``now`` in, events and datagrams out.

A :class:`PeerConnection` wraps aioquic's :class:`~aioquic.quic.connection.QuicConnection`
(itself sans-I/O) and adds, on the single bidirectional stream 0 that the
dialer opens:

* the frame codec (:mod:`services.transport.framing`), with a small frame limit
  until the peer is authenticated;
* the authentication state machine (:mod:`services.transport.auth`):
  client HELLO → server HELLO → client AUTH → server AUTH. The dialer proves
  itself first, so an unauthenticated stranger can make us verify one
  signature but never sign;
* the application window: MSG bytes sent minus the bytes the peer reported as
  taken (ACK frames); the owner only hands over a message when it fits
  (:meth:`can_send`), which is the backpressure aioquic's buffers lack;
* keep-alive PINGs under the idle timeout, RTT from PONGs, a liveness deadline;
* the acknowledgement policy (both levels): an ACK frame rides on the next frame
  to the peer, or goes :data:`APP_ACK_DELAY` after the bytes were taken (at once
  past ``inflight_max_bytes / 8``); QUIC's own ACKs wait up to
  :data:`QUIC_ACK_DELAY` for a packet of ours to ride on.

The owner drives it: :meth:`receive_datagram` / :meth:`handle_timer`, then
drains :meth:`next_event` and sends :meth:`datagrams_to_send`; it re-arms one
timer at :meth:`get_timer`. Nothing here raises for what the peer does: every
peer fault closes the connection and is reported as a :class:`Closed` event
carrying a :class:`~services.transport.errors.PeerFault`.
"""

from __future__ import annotations

import enum
import itertools
import os
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from aioquic.quic import events as qe
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.tls import Epoch
from google.protobuf.message import DecodeError

from cretoai.v1 import transport_pb2
from services.transport import auth, compression
from services.transport.bounded_quic import (
    LARGE_DATAGRAMS_FEATURE,
    LARGE_LOOPBACK_DATAGRAM_BYTES,
    BoundedQuicConnection,
)
from services.transport.errors import CloseCode, PeerFault
from services.transport.framing import Frame, FrameDecoder, FrameError, FrameType, encode_frame
from services.transport.tls import ChannelBindingUnavailable, channel_binding

STREAM_ID = 0
#: Bounds of the cluster parameters a HELLO may carry (this version sends 6).
MAX_CLUSTER_PARAMETERS = 32
#: Optional feature names a HELLO may offer, at most.
MAX_FEATURES = 16
MAX_PARAMETER_CHARS = 128


def parameters_differ(
    ours: tuple[tuple[str, str], ...], theirs: tuple[tuple[str, str], ...]
) -> str | None:
    """What differs between two sides' cluster parameters (``name: theirs there, ours
    here; ...``), or None when they agree. A side that sent none (a transport older
    than the check) or that has none configured is not compared; a parameter only
    one side knows (another version) is not either."""
    if not ours or not theirs:
        return None
    mine = dict(ours)
    differences = [
        f"{name}: {value} there, {mine[name]} here"
        for name, value in theirs
        if name in mine and mine[name] != value
    ]
    return "; ".join(differences) or None


#: Frames before authentication (HELLO, AUTH) are small; a larger one is a fault.
UNAUTHENTICATED_MAX_FRAME = 16 * 1024
#: An ACK frame goes at once when the taken, unacknowledged MSG bytes reach
#: ``inflight_max_bytes / _ACK_DIVISOR``: a sender filling its window is never held back.
_ACK_DIVISOR = 8
#: Seconds a receiver holds an ACK frame for fewer bytes than that, waiting for a
#: frame of its own to the peer (a MSG, PONG, PEERS) to carry it in the same packet.
#: An ACK sent alone costs two datagrams (its packet, which is ack-eliciting, and the
#: peer's QUIC ACK of it). A vertex's PBFT messages follow each other 5-10 ms apart at
#: low load (docs/benchmarks.md, "Where a vertex's time goes at 10/s"): 9 ms instead of
#: 5 let more ACK frames ride on the next one, 11 % fewer datagrams at 10 vertices/s
#: and 8 % at 200/s (docs/transport.md). It stays below :data:`QUIC_ACK_DELAY`, so that
#: an ACK frame that does go alone takes the held QUIC ACK along, and it bounds the
#: extra wait of a sender whose window holds a few unacknowledged bytes and whose next
#: message needs the whole window (keep it well below a keep-alive).
APP_ACK_DELAY = 0.009
#: Seconds aioquic waits before it acknowledges an ack-eliciting 1-RTT packet with a
#: QUIC ACK of its own; a packet of ours leaving before that carries the ACK (see
#: :func:`_quic_ack_now`). aioquic's default is 1 ms (K_GRANULARITY), so its ACKs almost
#: always went alone. It must stay below the max_ack_delay aioquic advertises (25 ms):
#: the peer's PTO (srtt + 4 rttvar + max_ack_delay) allows for that much, and the ACK
#: reports the delay it waited, so the peer's RTT estimate does not grow.
QUIC_ACK_DELAY = 0.010


class Authority(Protocol):
    """What a connection asks of its node while authenticating."""

    @property
    def node_id(self) -> str: ...

    @property
    def boot_id(self) -> bytes: ...

    def member_key(self, node_id: str) -> bytes | None: ...

    def refusal(self, node_id: str, address: NetworkAddress | None = None) -> CloseCode | None:
        """BANNED or PARTITIONED when this peer must not connect now; AUTH_COOLDOWN when
        ``address`` (an inbound connection's) failed to prove this member's key too often
        lately; else None."""

    def sign(self, message: bytes) -> bytes: ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    max_frame_bytes: int
    inflight_max_bytes: int
    handshake_timeout: float
    keepalive_interval: float
    liveness_timeout: float
    #: QUIC receive window (per stream and connection) past the data delivered, once the
    #: peer authenticated (before: ``window.UNAUTHENTICATED_RECEIVE_WINDOW``).
    receive_window: int
    #: This node's cluster parameters, sent in the HELLO and compared with the peer's.
    cluster_parameters: tuple[tuple[str, str], ...] = ()
    #: Optional features offered in the HELLO (``TransportSettings.features``).
    features: tuple[str, ...] = ()


# ---- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticated:
    peer_id: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    body: bytes
    wire_size: int


@dataclass(frozen=True, slots=True)
class PeersReceived:
    body: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    ping_id: int
    rtt: float


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The peer acknowledged MSG bytes: more may be sent."""


@dataclass(frozen=True, slots=True)
class Closed:
    code: int
    reason: str
    by_peer: bool
    #: Set when the peer did something wrong.
    fault: PeerFault | None
    was_authenticated: bool


ConnectionEvent = (
    Authenticated | MessageReceived | PeersReceived | PongReceived | WindowOpened | Closed
)


class State(enum.Enum):
    QUIC_HANDSHAKE = "quic_handshake"
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


_ping_ids = itertools.count(1)


class PeerConnection:
    def __init__(
        self,
        *,
        quic: BoundedQuicConnection,
        authority: Authority,
        settings: ConnectionSettings,
        now: float,
        expected_peer: str | None = None,
    ) -> None:
        self.quic = quic
        _set_quic_ack_delay(quic, QUIC_ACK_DELAY)
        self.is_client: bool = quic.configuration.is_client
        self.authority = authority
        self.settings = settings
        self.expected_peer = expected_peer
        self.state = State.QUIC_HANDSHAKE
        self.peer_id: str | None = None
        self.peer_boot_id: bytes = b""
        #: The cluster parameters the peer's HELLO announced (empty: none sent).
        self.peer_parameters: tuple[tuple[str, str], ...] = ()
        #: Optional features the peer's HELLO offered (compression.FEATURE, ...).
        self.peer_features: frozenset[str] = frozenset()
        self.created_at = now
        self.authenticated_at: float | None = None
        self.address: NetworkAddress | None = None
        #: The peer is known to receive at ``address``: it echoed a Retry token or
        #: completed the QUIC handshake (a spoofed source address can do neither).
        self.address_validated = False
        #: Connection ids the endpoint must route to this connection / forget.
        self.cids_issued: list[bytes] = [quic.host_cid]
        self.cids_retired: list[bytes] = []
        #: Set once aioquic has fully terminated the connection (endpoint forgets it).
        self.terminated = False
        #: Set when it closes: whether it had authenticated (else the endpoint forgets it
        #: at once instead of keeping it through QUIC's closing period).
        self.was_authenticated = False
        self._decoder = FrameDecoder(max_frame_bytes=UNAUTHENTICATED_MAX_FRAME)
        self._events: deque[ConnectionEvent] = deque()
        self._nonce = os.urandom(auth.NONCE_SIZE)
        self._binding = b""
        self._client_hello = b""
        self._server_hello = b""
        self._deadline = now + settings.handshake_timeout
        self._last_rx = now
        self._next_ping_at: float | None = None
        self._pings: dict[int, float] = {}
        self.srtt: float | None = None
        # application window
        self.sent_msg_bytes = 0
        self.acked_msg_bytes = 0
        self.consumed_msg_bytes = 0
        self._ack_sent_for = 0
        #: When a held-back ACK frame goes (None: nothing held back).
        self._ack_due_at: float | None = None
        #: Stream data handed to QUIC since the last datagrams_to_send.
        self._stream_written = False
        #: Stream data arrived in the datagram being processed.
        self._stream_received = False
        self._close_reported = False

    # ---- properties -------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self.state is State.AUTHENTICATED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def inflight(self) -> int:
        return self.sent_msg_bytes - self.acked_msg_bytes

    def can_send(self, size: int) -> bool:
        """True when a MSG frame of ``size`` wire bytes fits the window (one always fits)."""
        inflight = self.inflight
        return self.authenticated and (
            inflight == 0 or inflight + size <= self.settings.inflight_max_bytes
        )

    # ---- inputs -------------------------------------------------------------

    def connect(self, addr: NetworkAddress, now: float) -> None:
        self.address = addr
        self.quic.connect(addr, now=now)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        if self.address is None:
            self.address = addr
        quic = self.quic
        ack_was_pending = _quic_ack_pending(quic)
        self._stream_received = False
        quic.receive_datagram(data, addr, now=now)
        self._process(now)
        fault = _beyond_bounds(quic)
        if fault is not None and self.state is not State.CLOSED:
            self._fail(fault)
            return
        if ack_was_pending and self._stream_received:
            # a second ack-eliciting packet while a QUIC ACK waits: acknowledge with the
            # next transmit (RFC 9000 §13.2.2), so a bulk sender's ACK clock keeps up
            _quic_ack_now(quic, now)

    def handle_timer(self, now: float) -> None:
        if self.terminated:  # aioquic's timer must not run once it has terminated
            return
        self.quic.handle_timer(now=now)
        self._process(now)
        if self.state is State.CLOSED:
            return
        if not self.authenticated and now >= self._deadline:
            self._fail(
                PeerFault(
                    reason="handshake_timeout",
                    detail="not authenticated in time",
                    close=CloseCode.HANDSHAKE_TIMEOUT,
                )
            )
            return
        if self.authenticated:
            if now - self._last_rx >= self.settings.liveness_timeout:
                self.close(CloseCode.KEEPALIVE_TIMEOUT, "no frames from peer", now=now)
                return
            if self._next_ping_at is not None and now >= self._next_ping_at:
                self.send_ping(now)  # carries a held-back ACK frame
            if self._ack_due_at is not None and now >= self._ack_due_at:
                self._maybe_ack(force=True)

    def send_message(self, frame: bytes) -> None:
        """Hand one encoded MSG frame to QUIC (the caller checked :meth:`can_send`)."""
        self.send_messages([frame])

    def send_messages(self, frames: list[bytes]) -> None:
        """Hand encoded MSG frames to QUIC, with a held-back ACK frame ahead of them."""
        if not self.authenticated:
            raise RuntimeError("send_messages before authentication")
        data = b"".join(frames)
        self.sent_msg_bytes += len(data)
        self._write(data)

    def send_peers(self, body: bytes) -> None:
        if self.authenticated:
            self._send_frame(FrameType.PEERS, body)

    def send_ping(self, now: float) -> int:
        if not self.authenticated:
            raise RuntimeError("send_ping before authentication")
        ping_id = next(_ping_ids)
        if len(self._pings) >= 64:  # peer does not answer: forget the oldest
            self._pings.pop(next(iter(self._pings)))
        self._pings[ping_id] = now
        self._send_frame(FrameType.PING, transport_pb2.WirePing(id=ping_id).SerializeToString())
        self._next_ping_at = now + self.settings.keepalive_interval
        return ping_id

    def close(self, code: CloseCode, reason: str, *, now: float | None = None) -> None:
        """Close now (idempotent); a :class:`Closed` event is reported once."""
        del now
        self._close(code, reason, by_peer=False, fault=None)

    # ---- outputs ------------------------------------------------------------

    def next_event(self) -> ConnectionEvent | None:
        try:
            return self._events.popleft()
        except IndexError:
            return None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if self._stream_written:
            # our packet leaves now: let it carry the QUIC ACK that would go alone later
            self._stream_written = False
            _quic_ack_now(self.quic, now)
        return self.quic.datagrams_to_send(now=now)

    def get_timer(self) -> float | None:
        timers = [self.quic.get_timer()]
        if self.state is not State.CLOSED:
            if not self.authenticated:
                timers.append(self._deadline)
            else:
                timers.append(self._last_rx + self.settings.liveness_timeout)
                if self._next_ping_at is not None:
                    timers.append(self._next_ping_at)
                if self._ack_due_at is not None:
                    timers.append(self._ack_due_at)
        present = [t for t in timers if t is not None]
        return min(present) if present else None

    # ---- internals ----------------------------------------------------------

    def _process(self, now: float) -> None:
        event = self.quic.next_event()
        while event is not None:
            self._on_quic_event(event, now)
            event = self.quic.next_event()

    def _on_quic_event(self, event: qe.QuicEvent, now: float) -> None:
        if isinstance(event, qe.ConnectionIdIssued):
            self.cids_issued.append(event.connection_id)
        elif isinstance(event, qe.ConnectionIdRetired):
            self.cids_retired.append(event.connection_id)
        elif isinstance(event, qe.ConnectionTerminated):
            self.terminated = True
            by_peer = not self._close_reported
            self._close(
                event.error_code,
                event.reason_phrase or "connection terminated",
                by_peer=by_peer,
                fault=None,
            )
        elif isinstance(event, qe.HandshakeCompleted):
            self._on_handshake_completed(now)
        elif isinstance(event, qe.StreamDataReceived):
            self._on_stream_data(event, now)
        elif isinstance(event, qe.StreamReset) and event.stream_id == STREAM_ID:
            self._fail(PeerFault(reason="stream_reset", detail="peer reset the stream"))
        elif isinstance(event, qe.StopSendingReceived) and event.stream_id == STREAM_ID:
            # aioquic has reset our side of the stream: nothing more can be written on it
            self._fail(PeerFault(reason="stop_sending", detail="peer asked us to stop sending"))

    def _on_handshake_completed(self, now: float) -> None:
        if self.state is not State.QUIC_HANDSHAKE:
            return
        try:
            self._binding = channel_binding(self.quic)
        except ChannelBindingUnavailable as exc:  # our environment, not the peer
            self.close(CloseCode.AUTH_FAILED, str(exc))
            return
        self.state = State.AWAIT_HELLO
        self.address_validated = True
        if self.is_client:
            self._client_hello = self._hello_body()
            self._send_frame(FrameType.HELLO, self._client_hello)

    def _hello_body(self) -> bytes:
        return transport_pb2.WireHello(
            version=auth.PROTOCOL_VERSION,
            node_id=self.authority.node_id,
            nonce=self._nonce,
            boot_id=self.authority.boot_id,
            parameters=[
                transport_pb2.ClusterParameter(name=name, value=value)
                for name, value in self.settings.cluster_parameters
            ],
            features=self.settings.features,
        ).SerializeToString()

    def _on_stream_data(self, event: qe.StreamDataReceived, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if event.stream_id != STREAM_ID:
            self._fail(
                PeerFault(reason="unexpected_stream", detail=f"data on stream {event.stream_id}")
            )
            return
        if event.end_stream:
            self._fail(PeerFault(reason="stream_finished", detail="peer ended the stream"))
            return
        if self.state is State.QUIC_HANDSHAKE:
            self._fail(PeerFault(reason="early_data", detail="stream data before handshake"))
            return
        self._last_rx = now
        self._stream_received = True
        decoder = self._decoder
        decoder.receive(event.data)
        while (item := decoder.next_frame()) is not None:
            if isinstance(item, FrameError):
                self._fail(PeerFault(reason=item.kind.value, detail=item.detail))
                return
            self._on_frame(item, now)  # may raise the frame limit (authenticated)
            if self.closed:
                return
        if self.authenticated:
            self._maybe_ack(force=False)
            if self._ack_due_at is None and self.consumed_msg_bytes > self._ack_sent_for:
                self._ack_due_at = now + APP_ACK_DELAY

    def _on_frame(self, frame: Frame, now: float) -> None:
        if self.state is State.AUTHENTICATED:
            self._on_authenticated_frame(frame, now)
        elif frame.type == FrameType.HELLO and self.state is State.AWAIT_HELLO:
            self._on_hello(frame.body)
        elif frame.type == FrameType.AUTH and self.state is State.AWAIT_AUTH:
            self._on_auth(frame.body, now)
        else:
            self._fail(
                PeerFault(
                    reason="unauthenticated_frame",
                    detail=f"frame type {frame.type} in state {self.state.value}",
                )
            )

    def _on_hello(self, body: bytes) -> None:
        hello = transport_pb2.WireHello()
        try:
            hello.ParseFromString(body)
        except DecodeError:
            self._fail(PeerFault(reason="malformed_hello", detail="undecodable HELLO"))
            return
        if hello.version != auth.PROTOCOL_VERSION:
            self._fail(
                PeerFault(
                    reason="unsupported_version",
                    detail=f"protocol version {hello.version}",
                    close=CloseCode.UNSUPPORTED_VERSION,
                )
            )
            return
        if len(hello.nonce) != auth.NONCE_SIZE or len(hello.boot_id) != auth.BOOT_ID_SIZE:
            self._fail(PeerFault(reason="malformed_hello", detail="bad nonce or boot id size"))
            return
        if len(hello.parameters) > MAX_CLUSTER_PARAMETERS or any(
            len(p.name) > MAX_PARAMETER_CHARS or len(p.value) > MAX_PARAMETER_CHARS
            for p in hello.parameters
        ):
            self._fail(PeerFault(reason="malformed_hello", detail="parameters out of bounds"))
            return
        if len(hello.features) > MAX_FEATURES or any(
            len(f) > MAX_PARAMETER_CHARS for f in hello.features
        ):
            self._fail(PeerFault(reason="malformed_hello", detail="features out of bounds"))
            return
        claimed = hello.node_id
        if claimed == self.authority.node_id:
            self._fail(
                PeerFault(
                    reason="self_connection",
                    detail="peer claims our own node id",
                    close=CloseCode.SELF_CONNECTION,
                )
            )
            return
        if self.authority.member_key(claimed) is None:
            self._fail(
                PeerFault(
                    reason="non_member",
                    detail=f"node id {claimed[:16]!r} is not a member",
                    close=CloseCode.NOT_MEMBER,
                )
            )
            return
        if self.expected_peer is not None and claimed != self.expected_peer:
            self._fail(
                PeerFault(
                    reason="wrong_peer",
                    detail=f"dialed {self.expected_peer[:16]}, answered by {claimed[:16]}",
                    close=CloseCode.WRONG_PEER,
                )
            )
            return
        # inbound: before any signature work for a claim this address keeps failing
        refusal = self.authority.refusal(claimed, None if self.is_client else self.address)
        if refusal is not None:
            self._fail(PeerFault(reason=refusal.name.lower(), detail="refused", close=refusal))
            return
        self.peer_id = claimed
        self.peer_boot_id = hello.boot_id
        self.peer_parameters = tuple((p.name, p.value) for p in hello.parameters)
        self.peer_features = frozenset(hello.features)
        self.state = State.AWAIT_AUTH
        if self.is_client:
            self._server_hello = body
            signature = self.authority.sign(self._transcript(auth.CLIENT))
            self._send_frame(
                FrameType.AUTH, transport_pb2.WireAuth(signature=signature).SerializeToString()
            )
        else:
            self._client_hello = body
            self._server_hello = self._hello_body()
            self._send_frame(FrameType.HELLO, self._server_hello)

    @property
    def max_datagram_bytes(self) -> int:
        """The largest datagram this connection sends."""
        return self.quic.datagram_size

    @property
    def sends_large_datagrams(self) -> bool:
        """Whether packets to this peer may be LARGE_LOOPBACK_DATAGRAM_BYTES: it is on this
        host and both HELLOs offered the feature (signed, like the rest of the HELLO)."""
        return (
            LARGE_DATAGRAMS_FEATURE in self.settings.features
            and LARGE_DATAGRAMS_FEATURE in self.peer_features
            and self.address is not None
            and auth.is_loopback(str(self.address[0]))
        )

    def _transcript(self, role: bytes) -> bytes:
        return auth.auth_transcript(
            role=role,
            binding=self._binding,
            client_hello=self._client_hello,
            server_hello=self._server_hello,
        )

    def _on_auth(self, body: bytes, now: float) -> None:
        message = transport_pb2.WireAuth()
        try:
            message.ParseFromString(body)
        except DecodeError:
            self._fail(PeerFault(reason="malformed_auth", detail="undecodable AUTH"))
            return
        assert self.peer_id is not None
        public_key = self.authority.member_key(self.peer_id)
        peer_role = auth.SERVER if self.is_client else auth.CLIENT
        if public_key is None or not self.authority.verify(
            public_key, self._transcript(peer_role), message.signature
        ):
            self._fail(
                PeerFault(
                    reason="bad_signature",
                    detail="the peer did not prove the member's key",
                    close=CloseCode.AUTH_FAILED,
                )
            )
            return
        if not self.is_client:
            signature = self.authority.sign(self._transcript(auth.SERVER))
            self._send_frame(
                FrameType.AUTH, transport_pb2.WireAuth(signature=signature).SerializeToString()
            )
        differ = parameters_differ(self.settings.cluster_parameters, self.peer_parameters)
        if differ is not None:
            # authenticated (the HELLOs are in the signed transcript): a member's mistake
            self._fail(
                PeerFault(
                    reason="parameters_differ", detail=differ, close=CloseCode.PARAMETERS_DIFFER
                )
            )
            return
        self.state = State.AUTHENTICATED
        self.authenticated_at = now
        self._decoder.max_frame_bytes = self.settings.max_frame_bytes
        self.quic.open_receive_window(self.settings.receive_window)
        if self.sends_large_datagrams:
            self.quic.raise_datagram_size(LARGE_LOOPBACK_DATAGRAM_BYTES)
        self._next_ping_at = now  # a first RTT sample right away, then every keepalive
        self._events.append(Authenticated(peer_id=self.peer_id))

    def _on_authenticated_frame(self, frame: Frame, now: float) -> None:
        kind = frame.type
        if kind == FrameType.MSG:
            size = frame.wire_size
            self.consumed_msg_bytes += size
            self._events.append(MessageReceived(body=frame.body, wire_size=size))
        elif kind == FrameType.MSG_ZSTD:
            size = frame.wire_size
            self.consumed_msg_bytes += size  # the window counts wire bytes, as the sender
            try:
                body = compression.decompress(
                    frame.body, max_bytes=self.settings.max_frame_bytes - 1
                )
            except compression.CompressionError as exc:
                self._fail(PeerFault(reason="malformed_compressed", detail=str(exc)))
                return
            self._events.append(MessageReceived(body=body, wire_size=size))
        elif kind == FrameType.PING:
            ping = self._parse_ping(frame.body)
            if ping is not None:
                self._send_frame(FrameType.PONG, frame.body)  # with every ACK owed
        elif kind == FrameType.PONG:
            pong = self._parse_ping(frame.body)
            if pong is not None:
                sent = self._pings.pop(pong.id, None)
                if sent is not None:
                    rtt = max(0.0, now - sent)
                    self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
                    self._events.append(PongReceived(ping_id=pong.id, rtt=rtt))
        elif kind == FrameType.ACK:
            ack = transport_pb2.WireAck()
            try:
                ack.ParseFromString(frame.body)
            except DecodeError:
                self._fail(PeerFault(reason="malformed_ack", detail="undecodable ACK"))
                return
            if not self.acked_msg_bytes <= ack.consumed <= self.sent_msg_bytes:
                self._fail(
                    PeerFault(
                        reason="bad_ack",
                        detail=f"ACK {ack.consumed} outside [{self.acked_msg_bytes}, "
                        f"{self.sent_msg_bytes}]",
                    )
                )
                return
            if ack.consumed > self.acked_msg_bytes:
                self.acked_msg_bytes = ack.consumed
                self._events.append(WindowOpened())
        elif kind == FrameType.PEERS:
            self._events.append(PeersReceived(body=frame.body))
        elif kind in (FrameType.HELLO, FrameType.AUTH):
            self._fail(PeerFault(reason="unexpected_frame", detail="handshake frame after auth"))
        # Unknown frame types are ignored: a later protocol version may add some.

    def _parse_ping(self, body: bytes) -> transport_pb2.WirePing | None:
        ping = transport_pb2.WirePing()
        try:
            ping.ParseFromString(body)
        except DecodeError:
            self._fail(PeerFault(reason="malformed_ping", detail="undecodable PING/PONG"))
            return None
        return ping

    def _maybe_ack(self, *, force: bool) -> None:
        """Send an ACK frame now if one is owed and ``force`` or past the threshold."""
        pending = self.consumed_msg_bytes - self._ack_sent_for
        if pending <= 0:
            return
        if force or pending >= max(1, self.settings.inflight_max_bytes // _ACK_DIVISOR):
            self._write(b"")

    def _owed_ack(self) -> bytes:
        """The ACK frame owed to the peer (b"" when none), then counted as sent."""
        if not self.authenticated or self.consumed_msg_bytes <= self._ack_sent_for:
            return b""
        self._ack_sent_for = self.consumed_msg_bytes
        self._ack_due_at = None
        return encode_frame(
            FrameType.ACK,
            transport_pb2.WireAck(consumed=self.consumed_msg_bytes).SerializeToString(),
            max_frame_bytes=self.settings.max_frame_bytes,
        )

    def _write(self, data: bytes) -> None:
        """Every frame to the peer goes through here: an owed ACK frame rides along.

        Never raises: a stream the peer made unwritable (a STOP_SENDING or a reset that
        reached aioquic before its event reached us) closes the connection, its fault.
        """
        if self.state is State.CLOSED:
            return
        data = self._owed_ack() + data
        if data:
            self._stream_written = True
            try:
                self.quic.send_stream_data(STREAM_ID, data)
            except Exception as exc:  # aioquic: "Cannot send data after the stream was reset"
                self._fail(PeerFault(reason="stream_unwritable", detail=str(exc)[:100]))

    def _send_frame(self, kind: FrameType, body: bytes) -> None:
        self._write(encode_frame(kind, body, max_frame_bytes=self.settings.max_frame_bytes))

    def _fail(self, fault: PeerFault) -> None:
        self._close(fault.close, fault.reason, by_peer=False, fault=fault)

    def _close(self, code: int, reason: str, *, by_peer: bool, fault: PeerFault | None) -> None:
        if self.state is State.CLOSED:
            return
        was_authenticated = self.authenticated
        self.was_authenticated = was_authenticated
        self.state = State.CLOSED
        self._pings.clear()
        if not by_peer:
            self.quic.close(error_code=int(code), reason_phrase=reason[:100])
        self._close_reported = True
        self._events.append(
            Closed(
                code=int(code),
                reason=reason,
                by_peer=by_peer,
                fault=fault,
                was_authenticated=was_authenticated,
            )
        )


# ---- aioquic internals --------------------------------------------------------
# aioquic has no public setting for its ACK timing. These are the only places the
# transport touches the private state involved; tests/transport/test_ack_policy.py
# fails loudly if an aioquic upgrade renames or stops using it (the defaults would
# silently come back: an ACK-only datagram 1 ms after nearly every packet).

_OVERDUE = 1e-6


def _beyond_bounds(quic: BoundedQuicConnection) -> PeerFault | None:
    """What the peer did past :mod:`~services.transport.bounded_quic`'s bounds, if anything."""
    if quic.refused is not None:  # aioquic is already closing it
        return PeerFault(reason=quic.refused, detail="a frame past what a peer may send")
    if quic.fragmented():
        return PeerFault(
            reason="stream_fragmented",
            detail=f"more than {quic.max_gaps} gaps in the stream data it sent",
        )
    return None


def _set_quic_ack_delay(quic: QuicConnection, delay: float) -> None:
    """How long aioquic waits before acknowledging an ack-eliciting packet.

    ``QuicConnection._ack_delay`` (K_GRANULARITY, 1 ms, by default): receiving such a
    packet sets ``space.ack_at = now + _ack_delay``. Initial and Handshake ACKs are not
    held by it: aioquic writes them with every handshake packet it builds.
    """
    if not hasattr(quic, "_ack_delay"):
        raise RuntimeError("aioquic.QuicConnection has no _ack_delay: see connection.py")
    quic._ack_delay = delay


def _quic_ack_pending(quic: QuicConnection) -> bool:
    """True while aioquic holds a 1-RTT ACK (``space.ack_at`` set, not yet sent)."""
    space = quic._spaces.get(Epoch.ONE_RTT)
    return space is not None and space.ack_at is not None


def _quic_ack_now(quic: QuicConnection, now: float) -> None:
    """Make a held 1-RTT ACK overdue, so the next packet built carries it.

    aioquic writes an ACK frame into a 1-RTT packet only once ``space.ack_at <= now``;
    until then a data packet leaves without it and the ACK follows alone. Strictly
    before ``now``: aioquic lets a packet with an ACK past due through its pacer
    (``ack_at < now``, as for any ACK whose timer ran out); at ``ack_at == now`` a
    paced connection would hold the ACK back and ask for a timer at ``now``, at once.
    """
    space = quic._spaces.get(Epoch.ONE_RTT)
    if space is not None and space.ack_at is not None and space.ack_at >= now:
        space.ack_at = now - _OVERDUE
