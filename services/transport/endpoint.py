"""The asyncio shell: one UDP socket for every connection of the node, both directions.

Dialing and listening share the socket, so a peer sees connections from this
node coming from its listen address, and a STUN answer describes the mapping of
the very socket QUIC uses. Datagrams are routed by destination connection id;
STUN responses (first two bits 00 and the magic cookie, RFC 8489 §6 / RFC 9443)
go to the STUN client. Everything else that does not parse or belongs to no
connection is dropped and counted. The endpoint only moves bytes and timers;
what a connection means is the owner's business (``on_activity``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

from services.transport import stun
from services.transport.auth import is_loopback
from services.transport.bounded_quic import LARGE_LOOPBACK_DATAGRAM_BYTES, BoundedQuicConnection
from services.transport.connection import Authority, ConnectionSettings, PeerConnection
from services.transport.metrics import (
    DATAGRAM_BYTES_RECEIVED,
    DATAGRAM_BYTES_SENT,
    DATAGRAMS_RECEIVED,
    DATAGRAMS_SENT,
)
from services.transport.settings import MAX_DATAGRAM_BYTES

log = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: Unauthenticated connections one validated address may hold at least (a node allows
#: as many as it has members: members may share an address).
MIN_PENDING_PER_ADDRESS = 4
#: Datagrams read per wake-up before the connections act (bounded work per turn).
READ_BURST = 64
RECV_BUFFER_BYTES = 65536
#: Packets one datagram may coalesce: an Initial, a 0-RTT, a Handshake and a 1-RTT one
#: at most in any honest handshake. Each long-header packet costs aioquic a header
#: unprotection and a decryption: a 16,000-byte datagram of 200 tiny Initial packets
#: cost 4 ms of CPU mid-handshake, where a stranger may send them.
MAX_COALESCED_PACKETS = 8

Activity = Callable[[PeerConnection], None]
Counter = Callable[[str], None]
StunHandler = Callable[[bytes, NetworkAddress], None]


def oversized(size: int, host: str) -> bool:
    """Whether a datagram of ``size`` bytes from ``host`` is larger than any node sends:
    MAX_DATAGRAM_BYTES, or LARGE_LOOPBACK_DATAGRAM_BYTES from this host."""
    if size <= MAX_DATAGRAM_BYTES:
        return False
    return size > LARGE_LOOPBACK_DATAGRAM_BYTES or not is_loopback(host)


def coalesces_too_many(data: bytes, host_cid_length: int) -> bool:
    """Whether ``data`` holds more than MAX_COALESCED_PACKETS long-header packets (a
    short-header packet runs to the end of the datagram). Headers only: nothing is
    decrypted; what does not parse (padding, garbage) is left to aioquic, which drops it."""
    buf = Buffer(data=data)
    for _ in range(MAX_COALESCED_PACKETS + 1):
        if buf.eof():
            return False
        start = buf.tell()
        try:
            header = pull_quic_header(buf, host_cid_length=host_cid_length)
        except ValueError:
            return False
        if header.packet_type == QuicPacketType.ONE_RTT or header.packet_length <= 0:
            return False
        buf.seek(min(start + header.packet_length, len(data)))
    return True


class QuicEndpoint:
    def __init__(
        self,
        *,
        server_config: QuicConfiguration,
        client_config: QuicConfiguration,
        loopback_server_config: QuicConfiguration | None = None,
        loopback_client_config: QuicConfiguration | None = None,
        authority: Authority,
        settings: ConnectionSettings,
        on_activity: Activity,
        count: Counter,
        max_pending: int,
        max_pending_per_address: int | None = None,
    ) -> None:
        self._server_config = server_config
        self._client_config = client_config
        # Loopback carries 64 KiB datagrams: peers on this host get larger packets.
        self._loopback_server_config = loopback_server_config or server_config
        self._loopback_client_config = loopback_client_config or client_config
        self._authority = authority
        self._settings = settings
        self._on_activity = on_activity
        self._count = count
        self._max_pending = max_pending
        self._max_per_address = max_pending_per_address or max_pending
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._by_cid: dict[bytes, PeerConnection] = {}
        self._connections: set[PeerConnection] = set()
        self._timers: dict[PeerConnection, asyncio.TimerHandle] = {}
        self._timer_at: dict[PeerConnection, float] = {}
        self._transmit_scheduled: set[PeerConnection] = set()
        self._family = socket.AF_INET
        self._retry = QuicRetryTokenHandler()
        self.stun_handler: StunHandler | None = None
        self.local_address: tuple[str, int] = ("", 0)

    # ---- lifecycle ----------------------------------------------------------

    async def bind(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # bursts of large datagrams overflow the default buffer: a loss
                # there halves QUIC's congestion window (the kernel caps this
                # at net.core.rmem_max / wmem_max)
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(f"transport: cannot bind QUIC to {host}:{port}: {exc}") from None
        self._family = family
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._read_ready)
        bound = sock.getsockname()
        self.local_address = (str(bound[0]), int(bound[1]))

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    @property
    def connections(self) -> frozenset[PeerConnection]:
        return frozenset(self._connections)

    @property
    def pending_count(self) -> int:
        return sum(1 for c in self._connections if not c.authenticated and not c.closed)

    def _pending_from(self, host: str, *, validated_only: bool = False) -> int:
        """Unauthenticated connections this endpoint accepted from ``host``."""
        return sum(
            1
            for c in self._connections
            if not c.is_client
            and not c.authenticated
            and not c.closed
            and c.address is not None
            and str(c.address[0]) == host
            and (c.address_validated or not validated_only)
        )

    # ---- sending ------------------------------------------------------------

    def connect(self, addr: tuple[str, int], expected_peer: str) -> PeerConnection:
        now = self._loop.time()
        config = self._loopback_client_config if is_loopback(addr[0]) else self._client_config
        quic = BoundedQuicConnection(configuration=config)
        conn = PeerConnection(
            quic=quic,
            authority=self._authority,
            settings=self._settings,
            now=now,
            expected_peer=expected_peer,
        )
        self._register(conn)
        conn.connect(self._target(addr), now)
        self.transmit(conn)
        return conn

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self._send_counted(data, self._target(addr))

    def _send_counted(self, data: bytes, addr: NetworkAddress) -> bool:
        """One datagram off the hot path, counted (``transmit`` counts its own per call)."""
        if not self._send(data, addr):
            return False
        DATAGRAMS_SENT.inc()
        DATAGRAM_BYTES_SENT.inc(len(data))
        return True

    def _send(self, data: bytes, addr: NetworkAddress) -> bool:
        """One ``sendto``; True when the kernel took the datagram. Not counted here: the
        callers count (once per transmit, not once per datagram)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto(data, addr)
        except BlockingIOError:
            # the socket buffer is full: like a loss on the path, QUIC recovers
            self._count("send_buffer_full")
            return False
        except OSError as exc:  # unreachable host, no route: QUIC's timers deal with it
            log.debug("udp send failed: %s", exc)
            return False
        return True

    def _target(self, addr: tuple[str, int]) -> NetworkAddress:
        host, port = addr
        if self._family == socket.AF_INET6:
            if ":" not in host:
                host = "::ffff:" + host
            return (host, port, 0, 0)
        return (host, port)

    def transmit_soon(self, conn: PeerConnection) -> None:
        if conn not in self._transmit_scheduled:
            self._transmit_scheduled.add(conn)
            self._loop.call_soon(self._transmit_scheduled_one, conn)

    def _transmit_scheduled_one(self, conn: PeerConnection) -> None:
        self._transmit_scheduled.discard(conn)
        self.transmit(conn)

    def transmit(self, conn: PeerConnection) -> int:
        """Send what the connection has, re-arm its timer, forget it once terminated.

        Returns the number of datagrams sent.
        """
        sent = 0
        if self._sock is not None:
            taken = taken_bytes = 0
            for data, addr in conn.datagrams_to_send(now=self._loop.time()):
                if self._send(data, addr):
                    taken += 1
                    taken_bytes += len(data)
                sent += 1
            if taken:
                DATAGRAMS_SENT.inc(taken)
                DATAGRAM_BYTES_SENT.inc(taken_bytes)
        self._sync_cids(conn)
        if conn.terminated or (conn.closed and not conn.was_authenticated):
            # A connection closed before it authenticated is dropped once its CONNECTION_CLOSE
            # is out, not kept through QUIC's closing period (3 PTO, with the peer's own
            # max_ack_delay: about 49 s) with its buffers: strangers that open and get
            # closed cannot pile them up outside the pending bounds.
            self._on_activity(conn)  # its Closed event reaches the owner first
            self._forget(conn)
            return sent
        timer_at = conn.get_timer()
        current = self._timer_at.get(conn)
        if current != timer_at:
            handle = self._timers.pop(conn, None)
            if handle is not None:
                handle.cancel()
            self._timer_at.pop(conn, None)
            if timer_at is not None:
                self._timers[conn] = self._loop.call_at(timer_at, self._on_timer, conn)
                self._timer_at[conn] = timer_at
        return sent

    # ---- receiving ----------------------------------------------------------

    def _read_ready(self) -> None:
        """Read what the socket holds (bounded), feed it, then act once per connection.

        Reading a burst before transmitting lets one ACK cover several packets
        and lets the node see several messages per wake-up.
        """
        sock = self._sock
        if sock is None:
            return
        touched: dict[PeerConnection, bool] = {}
        read = read_bytes = 0
        for _ in range(READ_BURST):
            try:
                data, addr = sock.recvfrom(RECV_BUFFER_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp receive error: %s", exc)
                continue
            read += 1
            read_bytes += len(data)
            if oversized(len(data), addr[0]):  # no node sends one: work for nothing
                self._count("oversized_datagram")
                continue
            conn, accepted = self._route(data, addr)
            if conn is not None:
                touched[conn] = touched.get(conn, False) or accepted
        if read:
            DATAGRAMS_RECEIVED.inc(read)
            DATAGRAM_BYTES_RECEIVED.inc(read_bytes)
        for conn, accepted in touched.items():
            self._on_activity(conn)
            # The messages taken in this burst are acknowledged by the connection:
            # with the next frame to the peer or at its ACK timer, which transmit
            # re-arms (connection.APP_ACK_DELAY), never later.
            sent = self.transmit(conn)
            if accepted and not sent:
                # an Initial that did not decrypt (garbage with a plausible header):
                # forget it now rather than hold a pending slot until the deadline
                self._count("bad_initial")
                conn.terminated = True
                self._forget(conn)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """Feed one datagram and act on it at once (tests use this directly)."""
        conn, accepted = self._route(data, addr)
        if conn is None:
            return
        self._on_activity(conn)
        sent = self.transmit(conn)
        if accepted and not sent:
            self._count("bad_initial")
            conn.terminated = True
            self._forget(conn)

    def _route(self, data: bytes, addr: NetworkAddress) -> tuple[PeerConnection | None, bool]:
        """Hand ``data`` to its connection; (the connection, whether it is new)."""
        if stun.looks_like_stun(data):
            if self.stun_handler is not None:
                self.stun_handler(data, addr)
            else:
                self._count("unexpected_stun")
            return None, False
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._server_config.connection_id_length
            )
        except ValueError:
            self._count("garbage_datagram")
            return None, False
        if header.packet_type != QuicPacketType.ONE_RTT and coalesces_too_many(
            data, self._server_config.connection_id_length
        ):
            self._count("coalesced_packets")
            return None, False
        conn = self._by_cid.get(header.destination_cid)
        accepted = False
        if conn is None:
            if (
                header.packet_type == QuicPacketType.INITIAL
                and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
                and header.version in self._server_config.supported_versions
            ):
                conn = self._accept_initial(header, addr)
                if conn is None:
                    return None, False
                accepted = True
            else:
                self._count("unknown_connection_datagram")
                return None, False
        try:
            conn.receive_datagram(data, addr, now=self._loop.time())
        except Exception:  # aioquic should never raise on input; never let it kill us
            log.exception("QUIC connection failed on input; closing it")
            self._count("quic_internal_error")
            conn.terminated = True
            self._forget(conn)
            return None, False
        return conn, accepted

    def _accept_initial(self, header: Any, addr: NetworkAddress) -> PeerConnection | None:
        """A new connection for a client Initial, with address validation under pressure.

        Once half of ``max_pending`` connections are unauthenticated, or
        ``max_pending_per_address`` of them come from the client's address, a client
        must first echo a Retry token (RFC 9000 §8.1.2): a flood from spoofed
        addresses then holds no connection state at all. A validated address may
        hold at most ``max_pending_per_address`` unauthenticated connections, so
        that one stranger cannot take every pending slot and keep members from
        reconnecting (spoofed connections in its name do not count against it).
        """
        retry_scid: bytes | None = None
        original_dcid: bytes = header.destination_cid
        if header.token:
            try:
                original_dcid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=self._loop.time(),
                )
            except ValueError:
                self._count("bad_retry_token")
                return None
            retry_scid = header.destination_cid
        elif (
            self.pending_count >= max(1, self._max_pending // 2)
            or self._pending_from(str(addr[0])) >= self._max_per_address
        ):
            source_cid = os.urandom(8)
            self._count("retry_sent")
            self._send_counted(
                encode_quic_retry(
                    version=header.version,
                    source_cid=source_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=self._retry.create_token(
                        address=addr,
                        original_destination_connection_id=header.destination_cid,
                        retry_source_connection_id=source_cid,
                        now=self._loop.time(),
                    ),
                ),
                addr,
            )
            return None
        return self._accept(original_dcid, addr, retry_scid, header.destination_cid)

    def _accept(
        self,
        original_dcid: bytes,
        addr: NetworkAddress,
        retry_scid: bytes | None,
        dcid: bytes,
    ) -> PeerConnection | None:
        if self.pending_count >= self._max_pending:
            self._count("pending_limit")
            return None
        validated = retry_scid is not None
        host = str(addr[0])
        if validated and self._pending_from(host, validated_only=True) >= self._max_per_address:
            self._count("address_pending_limit")
            return None
        loopback = is_loopback(str(addr[0]))
        quic = BoundedQuicConnection(
            configuration=self._loopback_server_config if loopback else self._server_config,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        conn = PeerConnection(
            quic=quic, authority=self._authority, settings=self._settings, now=self._loop.time()
        )
        conn.address_validated = validated
        self._register(conn)
        self._by_cid[dcid] = conn
        return conn

    # ---- timers and bookkeeping -------------------------------------------

    def _on_timer(self, conn: PeerConnection) -> None:
        self._timers.pop(conn, None)
        self._timer_at.pop(conn, None)
        if conn not in self._connections:
            return
        now = self._loop.time()
        try:
            conn.handle_timer(now)
        except Exception:
            log.exception("QUIC timer failed; closing the connection")
            self._count("quic_internal_error")
            conn.terminated = True
            self._forget(conn)
            return
        self._on_activity(conn)
        self.transmit(conn)

    def _register(self, conn: PeerConnection) -> None:
        self._connections.add(conn)
        self._sync_cids(conn)

    def _sync_cids(self, conn: PeerConnection) -> None:
        for cid in conn.cids_issued:
            self._by_cid[cid] = conn
        conn.cids_issued.clear()
        for cid in conn.cids_retired:
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
        conn.cids_retired.clear()

    def _forget(self, conn: PeerConnection) -> None:
        self._connections.discard(conn)
        handle = self._timers.pop(conn, None)
        if handle is not None:
            handle.cancel()
        self._timer_at.pop(conn, None)
        for cid in [c for c, owner in self._by_cid.items() if owner is conn]:
            del self._by_cid[cid]
