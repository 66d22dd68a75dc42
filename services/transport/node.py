"""The transport of one node: peers, connections, queues, bans, faults, discovery.

One :class:`TransportNode` owns the QUIC endpoint and one :class:`Peer` record
per other member. It keeps at most one authenticated connection per peer:

* **dialing** — a task per peer dials while there is no connection, with
  exponential backoff and jitter; the member with the higher node id waits a
  little longer before dialing so that, usually, only one side dials;
* **simultaneous dials** — if two authenticated connections to one peer exist,
  a new *boot id* (the peer restarted) wins; otherwise the connection dialed by
  the lower node id wins (the newer one if both were dialed by the same side).
  Both ends apply the same rule, so they keep the same connection;
* **sending** — envelopes are framed once, queued per peer (bounded, drop
  oldest) and handed to QUIC only while they fit the peer's window;
* **receiving** — messages are tagged with the authenticated node id and
  queued per peer for consensus (bounded, drop oldest), drained round-robin.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aioquic.quic.connection import NetworkAddress
from google.protobuf.message import DecodeError
from opentelemetry import trace

from cretoai.crypto import Backend, NodeKey
from cretoai.protowire import length_delimited, sole_field, tag, varint
from cretoai.telemetry import format_traceparent, remote_parent, sanitize_carrier
from cretoai.v1 import transport_pb2
from services.transport import auth, compression, metrics, stun
from services.transport.bounded_quic import UNAUTHENTICATED_RECEIVE_WINDOW
from services.transport.connection import (
    Authenticated,
    Closed,
    ConnectionSettings,
    MessageReceived,
    PeerConnection,
    PeersReceived,
    PongReceived,
    WindowOpened,
    parameters_differ,
)
from services.transport.endpoint import MIN_PENDING_PER_ADDRESS, QuicEndpoint
from services.transport.errors import (
    CloseCode,
    FaultInjectionDisabled,
    InvalidRequest,
    PeerTimeout,
    PeerUnavailable,
    UnknownPeer,
)
from services.transport.framing import (
    OVERHEAD,
    TYPE_OFFSET,
    FrameTooLarge,
    FrameType,
    encode_frame,
)
from services.transport.queues import InboundMux, SendQueue
from services.transport.settings import Member, TransportSettings
from services.transport.tls import ephemeral_identity, quic_configuration

if TYPE_CHECKING:
    from services.transport.mdns import MdnsDiscovery

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cretoai.transport")


def _continue_trace(
    name: str,
    carrier: Mapping[str, str],
    out: MutableMapping[str, str],
    kind: trace.SpanKind,
    attributes: dict[str, str],
) -> None:
    """A span ``name`` continuing ``carrier``'s trace; ``out`` gets the span's context and
    the carrier's other keys (the consensus' per-request contexts). Nothing when the
    carrier is malformed, oversized or unsampled."""
    clean = sanitize_carrier(carrier)
    parent = remote_parent(clean)
    if parent is None:
        return
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes
    ) as span:
        out.update({k: v for k, v in clean.items() if k not in ("traceparent", "tracestate")})
        out["traceparent"] = format_traceparent(span.get_span_context())


#: Bytes handed to QUIC in one go when pumping a queue.
PUMP_CHUNK = 256 * 1024
#: A connection that lived this long resets the dial backoff when it ends.
STABLE_CONNECTION = 10.0
AUTH_CLOSE_CODES = {
    CloseCode.AUTH_FAILED,
    CloseCode.NOT_MEMBER,
    CloseCode.WRONG_PEER,
    CloseCode.SELF_CONNECTION,
    CloseCode.UNSUPPORTED_VERSION,
    CloseCode.HANDSHAKE_TIMEOUT,
}
REFUSAL_CODES = {CloseCode.BANNED, CloseCode.PARTITIONED, CloseCode.AUTH_COOLDOWN}
#: An address whose inbound connections claiming one member failed to prove its key
#: AUTH_FAILURES_BEFORE_COOLDOWN times within AUTH_FAILURE_WINDOW_S has that claim
#: refused for AUTH_COOLDOWN_S, at its HELLO, before any signature work: each failure
#: costs an ML-DSA-87 verification, and a stranger could otherwise make a node spend
#: them without bound. Keyed by (address, member) so that a stranger cannot get a
#: member refused from another address; not counted from an address an authenticated
#: member connects from (a shared host or NAT: a member there, even a faulty one,
#: could otherwise get another member refused); at most COOLDOWN_KEYS are tracked.
#: Boot ids of a member's replaced processes remembered (see ``Peer.replaced_boots``).
REPLACED_BOOTS = 8
#: Close codes with which a peer says that another process holds this node's key.
IDENTITY_CLOSE_CODES = {CloseCode.PEER_RESTARTED, CloseCode.IDENTITY_IN_USE}
#: Logged (an error, per peer at most every 5 s) when a member's cluster parameters differ.
PARAMETERS_DIFFER_MESSAGE = (
    "a member runs with other cluster parameters and is refused: every node of a cluster "
    "needs the same validator set, in the same order, and the same limits; fix the "
    "config of the node that is wrong and restart it (docs/config.md, 'Cluster parameters')"
)
AUTH_FAILURES_BEFORE_COOLDOWN = 8
AUTH_FAILURE_WINDOW_S = 60.0
AUTH_COOLDOWN_S = 60.0
COOLDOWN_KEYS = 4096


#: Bytes of envelopes in one inbound batch (gRPC messages are limited to 16 MiB).
BATCH_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    """An inbound envelope as it arrived, and what this transport sets on it.

    Kept as the peer's bytes, not as the parsed message: consensus's batch is built by
    parsing them once more into it (:meth:`write_to`), where a parsed Envelope put in the
    batch would be copied by protobuf (a serialization and a parse, about 2 ms for a
    2-MiB PRE-PREPARE whose buffers are faulted in), and the queue's bytes bound reads
    ``size`` instead of serializing the message to learn it.
    """

    #: The peer's serialized Envelope, checked to parse.
    body: bytes
    #: This node's id (``to``) and the authenticated peer's (``from``): they replace
    #: whatever the peer put there.
    to: str
    source: str
    #: The trace context that replaces the peer's; None when the peer sent none.
    trace_context: dict[str, str] | None
    #: What the queue counts: the bytes and the fields this transport sets.
    size: int

    def wire_parts(self) -> tuple[bytes, bytes]:
        """The Envelope as consensus receives it, encoded, in two parts to be sent one
        after the other: without a trace context, the peer's bytes and then this
        transport's ``to`` and ``from``, which a parser takes over any the peer put there
        (it keeps a field's last value; :mod:`cretoai.protowire`), with no copy of the
        body; with one, the message rebuilt (the peer's context must go, not merge)."""
        if self.trace_context is None:
            return self.body, _ids_field(self.to, self.source)
        return self.envelope().SerializeToString(), b""

    def write_to(self, envelope: transport_pb2.Envelope) -> None:
        envelope.ParseFromString(self.body)
        envelope.to = self.to
        setattr(envelope, "from", self.source)
        if self.trace_context is not None:
            envelope.trace_context.clear()
            envelope.trace_context.update(self.trace_context)

    def envelope(self) -> transport_pb2.Envelope:
        envelope = transport_pb2.Envelope()
        self.write_to(envelope)
        return envelope


#: What a delivery's size adds to its bytes beside the fields it sets: room for
#: protobuf's tags and lengths.
DELIVERY_OVERHEAD = 256
#: Envelope's field numbers (cretoai/v1/transport.proto) that the transport writes by hand.
_TO, _FROM, _PAYLOAD = 1, 2, 3
#: EnvelopeBatch's ``envelopes``.
_ENVELOPES = 1


@functools.lru_cache(maxsize=64)
def _ids_field(to: str, source: str) -> bytes:
    """Envelope's ``to`` and ``from`` fields, encoded (the same few pairs over and over)."""
    return length_delimited(_TO, to.encode()) + length_delimited(_FROM, source.encode())


def envelope_batch_bytes(deliveries: Sequence[Delivery]) -> bytes:
    """An EnvelopeBatch of ``deliveries``, encoded by concatenation: each peer's bytes are
    copied once, into the result (building the message copied a 2-MiB PRE-PREPARE in,
    and serializing it out again into growing buffers: docs/benchmarks.md,
    ``message_costs``)."""
    key = tag(_ENVELOPES)
    parts: list[bytes] = []
    for delivery in deliveries:
        body, tail = delivery.wire_parts()
        parts += (key, varint(len(body) + len(tail)), body, tail)
    return b"".join(parts)


def payload_field(payload: bytes) -> bytes:
    """An Envelope of ``payload`` alone, encoded (what a transport sends a peer when the
    message is not traced)."""
    return b"".join((tag(_PAYLOAD), varint(len(payload)), payload))


def is_payload_only(body: bytes) -> bool:
    """Whether a peer's ``body`` is an Envelope of its payload alone: valid whatever the
    payload's bytes, so it needs no parse (the untraced messages of an honest peer)."""
    return sole_field(body, _PAYLOAD)


def _delivery_size(delivery: Delivery) -> int:
    return delivery.size


class Superseded(Exception):
    """A newer Exchange stream took over inbound delivery (or the node stopped)."""


@dataclass
class Faults:
    drop_rate: float = 0.0
    delay: float = 0.0
    partitioned: bool = False


@dataclass
class Peer:
    member: Member
    queue: SendQueue
    m: metrics.PeerMetrics
    address: str
    address_source: str = "config"
    record: transport_pb2.AddressRecord | None = None
    conn: PeerConnection | None = None
    banned_until: float | None = None
    ban_reason: str = ""
    #: The consensus process (its session id) that asked for a ban without an end.
    ban_session: str = ""
    faults: Faults = field(default_factory=Faults)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    ever_connected: bool = False
    dialing: PeerConnection | None = None
    #: An unauthenticated address hint (mDNS) to try on the next dial.
    candidate: str = ""
    #: Whether the last dial went to a hint: the next one goes to the known address.
    dialed_candidate: bool = False
    pump_handle: asyncio.TimerHandle | None = None
    messages_out: int = 0
    messages_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped: int = 0
    reconnects: int = 0
    #: Boot ids of this member's processes whose connection a newer process took (a
    #: restart): a genuine restart never brings one back (``TransportNode._restart_or_twin``).
    replaced_boots: deque[bytes] = field(default_factory=lambda: deque(maxlen=REPLACED_BOOTS))
    #: The two boot ids of the last conflict (two processes presenting this member's
    #: key): the one kept, then the one refused.
    conflict: tuple[bytes, bytes] | None = None
    #: The peer closed our last connection because it bans this node; cleared when a
    #: connection authenticates. (A close before authentication is not authenticated
    #: itself: this is for the operator's eyes, nothing acts on it.)
    refuses_us: bool = False

    @property
    def node_id(self) -> str:
        return self.member.node_id

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.authenticated


class Consumer:
    """The inbound side of one Exchange stream."""

    def __init__(self, node: TransportNode) -> None:
        self._node = node
        self._event = asyncio.Event()
        self.superseded = False

    def notify(self) -> None:
        self._event.set()

    def supersede(self) -> None:
        self.superseded = True
        self._event.set()

    async def get_batch(self, limit: int = 256) -> list[Delivery]:
        while True:
            if self.superseded:
                raise Superseded
            items = self._node._inbound.take(limit, max_bytes=BATCH_MAX_BYTES)
            if items:
                self._node._after_take(items)
                return items
            self._event.clear()
            await self._event.wait()

    def detach(self) -> None:
        if self._node._consumer is self:
            self._node._consumer = None


class _LogLimiter:
    """At most one log line per key per interval, with the count of those suppressed."""

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, fields: dict[str, object]) -> None:
        self._log(logging.WARNING, key, msg, fields)

    def error(self, key: str, msg: str, fields: dict[str, object]) -> None:
        self._log(logging.ERROR, key, msg, fields)

    def _log(self, level: int, key: str, msg: str, fields: dict[str, object]) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields = {**fields, "suppressed": suppressed}
        log.log(level, msg, extra={"fields": fields})


class TransportNode:
    def __init__(
        self,
        *,
        settings: TransportSettings,
        key: NodeKey,
        backend: Backend,
        members: Sequence[Member],
        self_name: str,
    ) -> None:
        self.settings = settings
        self._key = key
        self._backend = backend
        self._node_id = key.node_id
        self._boot_id = os.urandom(auth.BOOT_ID_SIZE)
        self._members = {m.node_id: m for m in members}
        #: (address, member) -> recent failed proofs; -> when its cooldown ends.
        self._auth_failures: dict[tuple[str, str], deque[float]] = {}
        self._auth_cooldowns: dict[tuple[str, str], float] = {}
        me = self._members.get(self._node_id)
        if me is None or me.name != self_name:
            raise InvalidRequest("this node's key is not the member key of node.name")
        self._self_member = me
        self._peers: dict[str, Peer] = {
            m.node_id: Peer(
                member=m,
                m=metrics.PeerMetrics(m.name),
                address=m.address,
                queue=SendQueue(
                    max_messages=settings.send_queue_max, max_bytes=settings.send_queue_max_bytes
                ),
            )
            for m in members
            if m.node_id != self._node_id
        }
        self._inbound: InboundMux[Delivery] = InboundMux(
            max_per_source=settings.recv_queue_max,
            max_bytes_per_source=settings.recv_queue_max_bytes,
            size=_delivery_size,
        )
        self._consumer: Consumer | None = None
        self.stats = metrics.Stats()
        self._limiter = _LogLimiter()
        self._endpoint: QuicEndpoint | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._dial_waiters: dict[PeerConnection, asyncio.Future[bool]] = {}
        self._ping_waiters: dict[tuple[PeerConnection, int], asyncio.Future[float]] = {}
        self._self_record: transport_pb2.AddressRecord | None = None
        self._stun_address = ""
        self._stun_waiters: dict[bytes, asyncio.Future[stun.StunAddress | stun.StunError]] = {}
        self._mdns: MdnsDiscovery | None = None
        self._rng = random.Random()
        self._labels = {p.node_id: p.name for p in self._peers.values()}
        #: The consensus process attached last (``consensus_session``), if it said.
        self._consensus_session: str | None = None

    # ---- Authority (used by connections) -----------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def boot_id(self) -> bytes:
        return self._boot_id

    def member_key(self, node_id: str) -> bytes | None:
        member = self._members.get(node_id)
        return member.public_key if member is not None else None

    def refusal(self, node_id: str, address: NetworkAddress | None = None) -> CloseCode | None:
        peer = self._peers.get(node_id)
        if peer is None:
            return None
        if address is not None:
            until = self._auth_cooldowns.get((str(address[0]), node_id))
            if until is not None:
                if asyncio.get_running_loop().time() < until:
                    return CloseCode.AUTH_COOLDOWN
                del self._auth_cooldowns[(str(address[0]), node_id)]
        if self._is_banned(peer):
            return CloseCode.BANNED
        if peer.faults.partitioned:
            return CloseCode.PARTITIONED
        return None

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, context=auth.AUTH_CONTEXT)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        return self._backend.verify(public_key, message, signature, context=auth.AUTH_CONTEXT)

    # ---- lifecycle ------------------------------------------------------------

    @property
    def quic_address(self) -> tuple[str, int]:
        if self._endpoint is None:
            raise RuntimeError("transport not started")
        return self._endpoint.local_address

    @property
    def advertised_address(self) -> str:
        if self.settings.advertise_address:
            return self.settings.advertise_address
        if self._stun_address:
            return self._stun_address
        return self._self_member.address

    async def start(self) -> None:
        s = self.settings
        identity = ephemeral_identity()
        conn_settings = ConnectionSettings(
            max_frame_bytes=s.max_frame_bytes,
            inflight_max_bytes=s.inflight_max_bytes,
            handshake_timeout=s.handshake_timeout,
            keepalive_interval=s.keepalive,
            liveness_timeout=s.liveness_timeout,
            receive_window=s.quic_flow_window,
            cluster_parameters=s.cluster_parameters,
            features=s.features,
        )
        configs = {
            (is_client, size): quic_configuration(
                is_client=is_client,
                identity=None if is_client else identity,
                idle_timeout=s.idle_timeout,
                max_datagram_size=size,
                # the peer's first frames only: the window opens once it authenticates
                flow_window=UNAUTHENTICATED_RECEIVE_WINDOW,
            )
            for is_client in (False, True)
            for size in {s.max_datagram_bytes, s.loopback_datagram_bytes}
        }
        endpoint = QuicEndpoint(
            server_config=configs[False, s.max_datagram_bytes],
            client_config=configs[True, s.max_datagram_bytes],
            loopback_server_config=configs[False, s.loopback_datagram_bytes],
            loopback_client_config=configs[True, s.loopback_datagram_bytes],
            authority=self,
            settings=conn_settings,
            on_activity=self._on_activity,
            count=self._endpoint_rejection,
            max_pending=s.max_pending_connections,
            # members may share an address (one host, one NAT): each may be pending
            max_pending_per_address=max(MIN_PENDING_PER_ADDRESS, len(self._members)),
        )
        await endpoint.bind(s.quic_host, s.quic_port)
        endpoint.stun_handler = self._on_stun
        self._endpoint = endpoint
        self._refresh_self_record()
        log.info(
            "transport listening",
            extra={
                "fields": {
                    "quic": _fmt_addr(endpoint.local_address),
                    "node_id": self._node_id[:16],
                    "peers": len(self._peers),
                }
            },
        )
        for peer in self._peers.values():
            self._spawn(self._maintain(peer), f"dial-{peer.name}")
        self._spawn(self._exchange_loop(), "peer-exchange")
        if s.stun_server:
            self._spawn(self._stun_loop(), "stun")
        if s.mdns:
            from services.transport.mdns import MdnsDiscovery  # zeroconf only when asked

            mdns = MdnsDiscovery(node=self, interfaces=s.mdns_interfaces)
            await mdns.start()
            self._mdns = mdns

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.append(task)

    async def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._consumer is not None:
            self._consumer.supersede()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._mdns is not None:
            await self._mdns.stop()
            self._mdns = None
        endpoint = self._endpoint
        if endpoint is not None:
            for conn in endpoint.connections:
                conn.close(CloseCode.SHUTDOWN, "shutting down")
                self._on_activity(conn)
                endpoint.transmit(conn)
            endpoint.close()
        for waiter in self._dial_waiters.values():
            waiter.cancel()
        for pinger in self._ping_waiters.values():
            pinger.cancel()
        metrics.PEERS_CONNECTED.set(0)
        log.info("transport stopped")

    # ---- consensus-facing API -------------------------------------------------

    def attach_consumer(self) -> Consumer:
        if self._consumer is not None:
            self._consumer.supersede()
            log.info("a new Exchange stream supersedes the previous one")
        consumer = Consumer(self)
        self._consumer = consumer
        if self._closing:
            consumer.supersede()
        elif len(self._inbound):
            consumer.notify()
        return consumer

    def send(self, envelope: transport_pb2.Envelope) -> tuple[bool, int]:
        """Queue ``envelope`` for ``envelope.to`` (or every peer); (all queued, peers queued for).

        Raises :class:`UnknownPeer` / :class:`InvalidRequest` for a bad destination or size.
        """
        to = envelope.to
        if to:
            peer = self._peers.get(to)
            if peer is None:
                if to == self._node_id:
                    raise InvalidRequest("cannot send to this node itself")
                raise UnknownPeer(f"{to[:16]} is not a member")
            targets = [peer]
        else:
            targets = list(self._peers.values())
        frame, body = self._encode_outbound(envelope)
        compressed: bytes | None = None
        tried = False
        queued = 0
        for peer in targets:
            chosen = frame
            if self._takes_compressed(peer.conn):
                if not tried:  # once for every peer of a broadcast
                    compressed, tried = self._compressed_frame(body), True
                chosen = compressed or frame
            if self._enqueue(peer, chosen):
                queued += 1
        return queued == len(targets), queued

    def _takes_compressed(self, conn: PeerConnection | None) -> bool:
        """Whether MSG_ZSTD frames go on ``conn``: both sides offered them. Not yet known
        (no connection): plain frames."""
        return (
            self.settings.compress_messages
            and conn is not None
            and conn.authenticated
            and compression.FEATURE in conn.peer_features
        )

    def _compressed_frame(self, body: bytes) -> bytes | None:
        packed = compression.compress(body)
        if packed is None:
            return None
        metrics.COMPRESSED_BYTES.labels("before").inc(len(body))
        metrics.COMPRESSED_BYTES.labels("after").inc(len(packed))
        return encode_frame(
            FrameType.MSG_ZSTD, packed, max_frame_bytes=self.settings.max_frame_bytes
        )

    def _plain_frame(self, frame: bytes) -> bytes:
        """A queued MSG_ZSTD frame as a MSG frame, for a peer that reconnected without the
        feature (an older transport) before the frame went."""
        body = compression.decompress(frame[OVERHEAD:], max_bytes=self.settings.max_frame_bytes)
        return encode_frame(FrameType.MSG, body, max_frame_bytes=self.settings.max_frame_bytes)

    def send_quietly(self, envelope: transport_pb2.Envelope) -> None:
        """:meth:`send` for the Exchange stream: errors are counted and logged, not raised."""
        try:
            self.send(envelope)
        except (UnknownPeer, InvalidRequest) as exc:
            reason = "unknown_peer" if isinstance(exc, UnknownPeer) else "invalid"
            self.stats.dropped("-", reason)
            self._limiter.warning(
                f"exchange-{reason}", "dropped an outbound envelope", {"error": str(exc)}
            )
        except Exception as exc:  # a bug: lose this envelope, never consensus's outbound stream
            self.stats.dropped("-", "error")
            log.exception(
                "sending an outbound envelope failed", extra={"fields": {"error": str(exc)}}
            )

    def _encode_outbound(self, envelope: transport_pb2.Envelope) -> tuple[bytes, bytes]:
        """The MSG frame for ``envelope`` and its body."""
        if envelope.trace_context:  # only sampled envelopes carry one
            wire = transport_pb2.Envelope(payload=envelope.payload)
            _continue_trace(
                "transport.send",
                envelope.trace_context,
                wire.trace_context,
                trace.SpanKind.PRODUCER,
                {"messaging.destination": envelope.to or "broadcast"},
            )
            body = wire.SerializeToString()
        else:  # by concatenation: the payload copied once
            body = payload_field(envelope.payload)
        try:
            frame = encode_frame(FrameType.MSG, body, max_frame_bytes=self.settings.max_frame_bytes)
        except FrameTooLarge:
            raise InvalidRequest(
                f"message of {len(body)} bytes exceeds max_frame_bytes "
                f"({self.settings.max_frame_bytes})"
            ) from None
        return frame, body

    def _enqueue(self, peer: Peer, frame: bytes) -> bool:
        faults = peer.faults
        reason = None
        if self._is_banned(peer):
            reason = "banned"
        elif faults.partitioned:
            reason = "partitioned"
        elif faults.drop_rate > 0 and self._rng.random() < faults.drop_rate:
            reason = "fault_drop"
        if reason is not None:
            self._drop(peer, reason)
            return False
        loop = asyncio.get_running_loop()
        ready_at = loop.time() + faults.delay if faults.delay > 0 else 0.0
        dropped = peer.queue.push(frame, ready_at=ready_at)
        if dropped:
            self._drop(peer, "queue_full", dropped)
            self._limiter.warning(
                f"queue-full-{peer.name}",
                "send queue full: dropped the oldest messages",
                {"peer": peer.name, "depth": len(peer.queue), "bytes": peer.queue.bytes},
            )
        self._pump(peer)
        return True

    def _endpoint_rejection(self, reason: str) -> None:
        """What the endpoint refused before any connection (garbage, unknown connection
        ids, bad Initials, Retry refusals, full send buffers): counted, and logged at
        most once per 5 s per reason (docs/transport.md, "Bad input")."""
        self.stats.protocol_error(reason)
        self._limiter.warning(
            f"endpoint-{reason}", "datagram refused or dropped", {"reason": reason}
        )

    def _drop(self, peer: Peer, reason: str, count: int = 1) -> None:
        peer.dropped += count
        self.stats.dropped(peer.name, reason, count)

    def peers(self) -> list[transport_pb2.Peer]:
        out = []
        for peer in self._peers.values():
            conn = peer.conn
            connected = peer.connected
            out.append(
                transport_pb2.Peer(
                    node_id=peer.node_id,
                    name=peer.name,
                    address=peer.address,
                    address_source=peer.address_source,
                    connected=connected,
                    banned=self._is_banned(peer),
                    refuses_us=peer.refuses_us,
                    partitioned=peer.faults.partitioned,
                    rtt_ms=(conn.srtt or 0.0) * 1000 if conn is not None and connected else 0.0,
                    direction=("outbound" if conn.is_client else "inbound")
                    if conn is not None and connected
                    else "",
                    send_queue_depth=len(peer.queue),
                    send_queue_bytes=peer.queue.bytes,
                    inflight_bytes=conn.inflight if conn is not None and connected else 0,
                    max_datagram_bytes=conn.max_datagram_bytes
                    if conn is not None and connected
                    else 0,
                    messages_out=peer.messages_out,
                    messages_in=peer.messages_in,
                    bytes_out=peer.bytes_out,
                    bytes_in=peer.bytes_in,
                    dropped=peer.dropped,
                    reconnects=peer.reconnects,
                )
            )
        return out

    def _peer(self, node_id: str) -> Peer:
        peer = self._peers.get(node_id)
        if peer is None:
            if node_id == self._node_id:
                raise InvalidRequest("that is this node itself")
            raise UnknownPeer(f"{node_id[:16]!r} is not a member")
        return peer

    def consensus_session(self, session: str) -> None:
        """A consensus process opened its stream: if it is another process than the one
        before (a restart), lift the bans without an end that the old one asked for.

        Reputation lives in the consensus process, so a restarted one starts every peer
        again and reports none banned; its transport kept refusing them until it was
        restarted too (found by an audit, 2026-12-04). Bans the new process asks for
        (evidence it reloads, say) come again through BanPeer."""
        if not session:
            return
        previous, self._consensus_session = self._consensus_session, session
        if previous is None or previous == session:
            return
        for peer in self._peers.values():
            if peer.banned_until == math.inf and peer.ban_session and peer.ban_session != session:
                peer.banned_until = None
                peer.ban_session = ""
                log.info(
                    "ban lifted: the consensus process that asked for it restarted",
                    extra={"fields": {"peer": peer.name, "reason": peer.ban_reason}},
                )
                peer.wake.set()

    def ban(self, node_id: str, *, duration: float | None, reason: str, session: str = "") -> None:
        peer = self._peer(node_id)
        loop = asyncio.get_running_loop()
        peer.banned_until = math.inf if duration is None else loop.time() + duration
        peer.ban_reason = reason
        peer.ban_session = session if duration is None else ""
        metrics.BANS.inc()
        self.stats.inc("bans")
        log.warning(
            "peer banned",
            extra={"fields": {"peer": peer.name, "reason": reason, "duration_s": duration}},
        )
        self._cut(peer, CloseCode.BANNED, "banned", drop_reason="banned")
        dropped = self._inbound.clear(peer.node_id)
        if dropped:
            self._drop(peer, "banned", dropped)
        peer.m.recv_depth.set(0)
        if duration is not None:
            loop.call_at(peer.banned_until, peer.wake.set)

    def _is_banned(self, peer: Peer) -> bool:
        until = peer.banned_until
        if until is None:
            return False
        if until != math.inf and asyncio.get_running_loop().time() >= until:
            peer.banned_until = None
            return False
        return True

    def _cut(self, peer: Peer, code: CloseCode, why: str, *, drop_reason: str) -> None:
        """Close every connection of ``peer`` (active and half-open) and empty its queue."""
        endpoint = self._endpoint
        if endpoint is not None:
            for conn in endpoint.connections:
                if conn.peer_id == peer.node_id or conn is peer.dialing:
                    conn.close(code, why)
                    self._on_activity(conn)
                    endpoint.transmit(conn)
        dropped = peer.queue.clear()
        if dropped:
            self._drop(peer, drop_reason, dropped)
        self._update_queue_gauges(peer)

    async def ping(self, node_id: str, timeout: float) -> float:
        peer = self._peer(node_id)
        conn = peer.conn
        if conn is None or not conn.authenticated or self._endpoint is None:
            raise PeerUnavailable(f"{peer.name} is not connected")
        loop = asyncio.get_running_loop()
        ping_id = conn.send_ping(loop.time())
        fut: asyncio.Future[float] = loop.create_future()
        self._ping_waiters[(conn, ping_id)] = fut
        self._endpoint.transmit(conn)
        try:
            rtt: float = await asyncio.wait_for(fut, timeout)
            return rtt
        except TimeoutError:
            raise PeerTimeout(f"{peer.name} did not answer within {timeout:.3f} s") from None
        finally:
            self._ping_waiters.pop((conn, ping_id), None)

    def set_faults(
        self, node_id: str, *, drop_rate: float, delay: float, partitioned: bool
    ) -> None:
        if not self.settings.fault_injection:
            raise FaultInjectionDisabled("fault injection is disabled ([fault_injection] enabled)")
        if not 0.0 <= drop_rate <= 1.0 or delay < 0 or delay > 600:
            raise InvalidRequest("drop_rate must be within [0, 1] and delay within [0, 600 s]")
        targets = [self._peer(node_id)] if node_id else list(self._peers.values())
        for peer in targets:
            was_partitioned = peer.faults.partitioned
            peer.faults = Faults(drop_rate=drop_rate, delay=delay, partitioned=partitioned)
            log.warning(
                "fault injection",
                extra={
                    "fields": {
                        "peer": peer.name,
                        "drop_rate": drop_rate,
                        "delay_ms": round(delay * 1000),
                        "partitioned": partitioned,
                    }
                },
            )
            if partitioned and not was_partitioned:
                self._cut(peer, CloseCode.PARTITIONED, "partitioned", drop_reason="partitioned")
            elif was_partitioned and not partitioned:
                peer.attempts = 0
                peer.wake.set()

    def counters(self) -> dict[str, int]:
        out = dict(self.stats.counters)
        out["peers_connected"] = sum(1 for p in self._peers.values() if p.connected)
        out["pending_connections"] = self._endpoint.pending_count if self._endpoint else 0
        out["recv_queue_depth"] = len(self._inbound)
        out["send_queue_depth"] = sum(len(p.queue) for p in self._peers.values())
        return out

    # ---- connection events ------------------------------------------------------

    def _on_activity(self, conn: PeerConnection) -> None:
        while (event := conn.next_event()) is not None:
            if isinstance(event, MessageReceived):
                self._on_message(conn, event)
            elif isinstance(event, WindowOpened):
                peer = self._peers.get(conn.peer_id or "")
                if peer is not None and peer.conn is conn:
                    self._pump(peer)
            elif isinstance(event, Authenticated):
                self._on_authenticated(conn)
            elif isinstance(event, PongReceived):
                self._on_pong(conn, event)
            elif isinstance(event, PeersReceived):
                self._on_peers(conn, event.body)
            elif isinstance(event, Closed):
                self._on_closed(conn, event)

    def _refused_by(self, conn: PeerConnection, *, authenticated: bool) -> None:
        """A peer closed ``conn`` saying it bans this node: the operator must hear it,
        or the node looks merely disconnected (its /v1/status listed nobody banned).

        Only on a connection this node dialed to the peer's address (or one that had
        authenticated): anyone can connect, claim a member in its HELLO and close with
        BANNED (a review, 2026-12-04); and not while an authenticated connection to the
        peer is up."""
        if not (conn.is_client or authenticated):
            return
        peer = self._peers.get(conn.expected_peer or conn.peer_id or "")
        if peer is None or peer.connected:
            return
        peer.refuses_us = True
        self.stats.refused_by_peer(peer.name)
        self._limiter.error(
            f"refused-by-{peer.name}",
            "a peer refuses this node: it bans it (it holds evidence that this node's key "
            "signed two conflicting messages, or this node's reputation fell too low "
            "there); `cretoai-node evidence` on that node says which, and lifts it",
            {"peer": peer.name, "address": _fmt_addr(conn.address)},
        )

    def _on_authenticated(self, conn: PeerConnection) -> None:
        assert conn.peer_id is not None
        peer = self._peers[conn.peer_id]
        peer.refuses_us = False
        self._resolve_dial(conn, True)
        refusal = self.refusal(peer.node_id)
        if refusal is not None or self._closing:
            conn.close(refusal or CloseCode.SHUTDOWN, "refused")
            return
        existing = peer.conn
        live = existing is not None and existing is not conn and not existing.closed
        if live and existing is not None:
            if existing.peer_boot_id != conn.peer_boot_id:
                winner, loser, code = self._restart_or_twin(peer, existing, conn)
            else:
                dialer_new = self._node_id if conn.is_client else peer.node_id
                dialer_old = self._node_id if existing.is_client else peer.node_id
                if dialer_new == dialer_old or dialer_new == min(self._node_id, peer.node_id):
                    winner, loser = conn, existing
                else:
                    winner, loser = existing, conn
                code = CloseCode.DUPLICATE
            self.stats.inc("duplicate_connections")
            log.info(
                "two connections to one peer: keeping one",
                extra={
                    "fields": {
                        "peer": peer.name,
                        "kept": "outbound" if winner.is_client else "inbound",
                        "why": code.name.lower(),
                    }
                },
            )
            peer.conn = winner
            loser.close(code, code.name.lower())
            if winner is not conn:
                return
        peer.conn = conn
        if peer.ever_connected:
            peer.reconnects += 1
            metrics.RECONNECTS.labels(peer.name).inc()
            self.stats.inc("reconnects")
        peer.ever_connected = True
        peer.attempts = 0
        self._update_connected_gauge()
        log.info(
            "peer connected",
            extra={
                "fields": {
                    "peer": peer.name,
                    "direction": "outbound" if conn.is_client else "inbound",
                    "address": _fmt_addr(conn.address),
                }
            },
        )
        if self._self_record is not None:
            conn.send_peers(self._peers_body())
        peer.wake.set()
        self._pump(peer)

    def _restart_or_twin(
        self, peer: Peer, existing: PeerConnection, conn: PeerConnection
    ) -> tuple[PeerConnection, PeerConnection, CloseCode]:
        """Which of two live connections of one member, from processes with different
        boot ids, to keep: (winner, loser, the loser's close code).

        A new boot id is a restart: the new process's connection replaces the old one's.
        A replaced process coming back means it never died (a restart never brings an
        old boot id back): two processes hold the member's key, an operator's mistake
        (a node started twice, a copied data directory). From then on the one with the
        lower boot id is kept and the other refused at every redial, instead of the two
        taking the link from each other; every peer picks the same one, so the other is
        cut off from all of them. Consensus treats whatever both signed as one member's
        (equivocation is a Byzantine fault).
        """
        new, old = conn.peer_boot_id, existing.peer_boot_id
        if peer.conflict is not None and {new, old} == set(peer.conflict):
            kept = peer.conflict[0]  # the same two again: keep the same one
        elif new in peer.replaced_boots:
            # the lower boot id: a choice every peer makes alike, whatever order it saw
            # the two processes in, so that one of them is cut off from all of them
            kept = min(new, old)
            peer.conflict = (kept, max(new, old))
        else:
            # a restart (of either process of a past conflict too: only the pair in
            # conflict is held to its choice)
            peer.replaced_boots.append(old)
            return conn, existing, CloseCode.PEER_RESTARTED
        winner, loser = (conn, existing) if kept == new else (existing, conn)
        code = CloseCode.IDENTITY_IN_USE
        self.stats.identity_conflict("member")
        self._limiter.warning(
            f"identity-{peer.name}",
            "two processes present one member's key; keeping the one with the lower boot id",
            {
                "peer": peer.name,
                "kept": _fmt_addr(winner.address),
                "refused": _fmt_addr(loser.address),
            },
        )
        return winner, loser, code

    def _hosts_a_member(self, host: str) -> bool:
        """Whether an authenticated member connection comes from ``host``."""
        return any(
            p.conn is not None
            and p.conn.authenticated
            and p.conn.address is not None
            and str(p.conn.address[0]) == host
            for p in self._peers.values()
        )

    def _note_auth_failure(self, conn: PeerConnection) -> None:
        """Count an inbound connection that claimed a member and failed to prove its key;
        start its (address, member) cooldown at the threshold."""
        if conn.peer_id is None or conn.address is None:
            return
        key = (str(conn.address[0]), conn.peer_id)
        if self._hosts_a_member(key[0]):
            return  # a member's host (one machine, one NAT): its members answer for it
        now = asyncio.get_running_loop().time()
        failures = self._auth_failures.pop(key, None) or deque()
        failures.append(now)
        while failures and failures[0] <= now - AUTH_FAILURE_WINDOW_S:
            failures.popleft()
        if len(failures) >= AUTH_FAILURES_BEFORE_COOLDOWN:
            failures.clear()
            self._auth_cooldowns.pop(key, None)
            self._auth_cooldowns[key] = now + AUTH_COOLDOWN_S
            while len(self._auth_cooldowns) > COOLDOWN_KEYS:
                del self._auth_cooldowns[next(iter(self._auth_cooldowns))]
            log.warning(
                "refusing a member's claim from an address that keeps failing to prove it",
                extra={
                    "fields": {
                        "address": key[0],
                        "peer": self._labels.get(conn.peer_id, "-"),
                        "seconds": AUTH_COOLDOWN_S,
                    }
                },
            )
        else:
            self._auth_failures[key] = failures  # the most recent last
            while len(self._auth_failures) > COOLDOWN_KEYS:
                del self._auth_failures[next(iter(self._auth_failures))]

    def _on_closed(self, conn: PeerConnection, event: Closed) -> None:
        self._resolve_dial(conn, False)
        for key in [k for k in self._ping_waiters if k[0] is conn]:
            fut = self._ping_waiters.pop(key)
            if not fut.done():
                fut.set_exception(PeerUnavailable("connection closed"))
        fault = event.fault
        peer_name = self._labels.get(conn.peer_id or "", "-")
        if fault is not None:
            fields: dict[str, object] = {
                "reason": fault.reason,
                "detail": fault.detail,
                "address": _fmt_addr(conn.address),
                "peer": peer_name,
            }
            if fault.close in AUTH_CLOSE_CODES and not event.was_authenticated:
                self.stats.auth_failure(fault.reason)
                self._limiter.warning(f"auth-{fault.reason}", "peer failed authentication", fields)
                if fault.close == CloseCode.AUTH_FAILED and not conn.is_client:
                    self._note_auth_failure(conn)
            elif fault.close in REFUSAL_CODES:
                self.stats.refused(fault.reason)
                self._limiter.warning(f"refused-{fault.reason}", "refused a peer", fields)
            elif fault.close == CloseCode.PARAMETERS_DIFFER:
                self.stats.parameters_differ(peer_name)
                self._limiter.error(
                    f"parameters-{peer_name}",
                    PARAMETERS_DIFFER_MESSAGE,
                    {"peer": peer_name, "differ": fault.detail, "address": fields["address"]},
                )
            else:
                self.stats.protocol_error(fault.reason)
                self._limiter.warning(f"proto-{fault.reason}", "peer protocol violation", fields)
        elif event.by_peer and event.code in IDENTITY_CLOSE_CODES:
            # A peer took this connection for a newer process's (PEER_RESTARTED) or
            # refused it for a connected one's (IDENTITY_IN_USE): this process did not
            # restart, so another one runs with this node's key.
            self.stats.identity_conflict("this_node")
            self._limiter.error(
                "identity-this-node",
                "another process is connected to a peer with this node's key: two "
                "processes run as this node; stop one (docs/transport.md)",
                {
                    "node": self._self_member.name,
                    "peer": peer_name,
                    "code": CloseCode(event.code).name,
                },
            )
        elif event.by_peer and event.code == CloseCode.BANNED:
            self._refused_by(conn, authenticated=event.was_authenticated)
        elif event.by_peer and event.code == CloseCode.PARAMETERS_DIFFER:
            # the peer compared first, or this side has nothing to compare with
            # (its AUTH may not have arrived: compare with its HELLO's here)
            differ = parameters_differ(self.settings.cluster_parameters, conn.peer_parameters)
            self._limiter.error(
                f"parameters-{peer_name}",
                PARAMETERS_DIFFER_MESSAGE,
                {"peer": peer_name, "differ": differ or "not sent", "told_by": "peer"},
            )
        elif (
            event.by_peer
            and not event.was_authenticated
            and event.code not in (CloseCode.DUPLICATE, CloseCode.SHUTDOWN)
        ):
            # Ended before it authenticated, by the peer or inside QUIC (aioquic's own
            # refusals, e.g. no common ALPN, and its idle timeout come here too): counted.
            self.stats.auth_failure("closed_before_auth")
            self._limiter.warning(
                "closed-before-auth",
                "connection ended before authentication",
                {
                    "code": event.code,
                    "reason": event.reason[:100],
                    "address": _fmt_addr(conn.address),
                },
            )
        elif event.by_peer and event.code not in (0, CloseCode.DUPLICATE, CloseCode.SHUTDOWN):
            # one key for every code: the code is the peer's choice (a key per code let
            # strangers grow the limiter and log a line per code)
            self._limiter.warning(
                "closed-by-peer",
                "peer closed the connection",
                {"peer": peer_name, "code": event.code, "reason": event.reason},
            )
        peer = self._peers.get(conn.peer_id or "")
        if peer is not None and peer.conn is conn:
            peer.conn = None
            lived = (
                asyncio.get_running_loop().time() - conn.authenticated_at
                if conn.authenticated_at is not None
                else 0.0
            )
            if lived >= STABLE_CONNECTION:
                peer.attempts = 0
            self._update_connected_gauge()
            peer.m.inflight.set(0)
            log.info(
                "peer disconnected",
                extra={
                    "fields": {
                        "peer": peer.name,
                        "code": event.code,
                        "reason": event.reason,
                        "by_peer": event.by_peer,
                    }
                },
            )
            peer.wake.set()

    def _on_message(self, conn: PeerConnection, event: MessageReceived) -> None:
        peer = self._peers.get(conn.peer_id or "")
        if peer is None:
            return
        # (a losing duplicate connection may still deliver until the close reaches
        # its sender: those messages are authenticated and delivered too)
        envelope = transport_pb2.Envelope()
        # An untraced message is its payload field alone, and valid as it is; anything
        # else is parsed, so that a malformed envelope is the peer's fault here and not
        # an unparseable batch in consensus (and its trace context is read)
        if not is_payload_only(event.body):
            try:
                envelope.ParseFromString(event.body)
            except DecodeError:
                self.stats.protocol_error("malformed_message")
                self._drop(peer, "malformed")
                self._limiter.warning(
                    f"malformed-{peer.name}", "undecodable message from peer", {"peer": peer.name}
                )
                return
        trace_context: dict[str, str] | None = None
        if envelope.trace_context:  # a peer's: untrusted (garbage or oversized is dropped)
            trace_context = {}
            _continue_trace(
                "transport.receive",
                dict(envelope.trace_context),
                trace_context,
                trace.SpanKind.CONSUMER,
                {"messaging.source": peer.name},
            )
        size = len(event.body) + len(self._node_id) + len(peer.node_id) + DELIVERY_OVERHEAD
        if trace_context:
            size += sum(len(k) + len(v) for k, v in trace_context.items())
        delivery = Delivery(event.body, self._node_id, peer.node_id, trace_context, size)
        peer.messages_in += 1
        peer.bytes_in += event.wire_size
        peer.m.messages_in.inc()
        peer.m.bytes_in.inc(event.wire_size)
        dropped = self._inbound.push(peer.node_id, delivery)
        if dropped:
            self._drop(peer, "recv_queue_full", dropped)
            self._limiter.warning(
                f"recv-full-{peer.name}",
                "inbound queue full (consensus is slow or absent): dropped the oldest",
                {"peer": peer.name},
            )
        peer.m.recv_depth.set(self._inbound.depth(peer.node_id))
        if self._consumer is not None:
            self._consumer.notify()

    def _after_take(self, items: list[Delivery]) -> None:
        for source in {item.source for item in items}:
            peer = self._peers.get(source)
            if peer is not None:
                peer.m.recv_depth.set(self._inbound.depth(source))

    def _on_pong(self, conn: PeerConnection, event: PongReceived) -> None:
        name = self._labels.get(conn.peer_id or "")
        if name is not None:
            metrics.RTT.labels(name).observe(event.rtt)
        fut = self._ping_waiters.pop((conn, event.ping_id), None)
        if fut is not None and not fut.done():
            fut.set_result(event.rtt)

    def _resolve_dial(self, conn: PeerConnection, ok: bool) -> None:
        fut = self._dial_waiters.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    # ---- sending ----------------------------------------------------------------

    def _pump(self, peer: Peer) -> None:
        conn = peer.conn
        if conn is None or not conn.authenticated or self._endpoint is None:
            self._update_queue_gauges(peer)
            return
        queue = peer.queue
        window = self.settings.inflight_max_bytes
        inflight = conn.inflight
        batch: list[bytes] = []
        batch_bytes = 0
        now = 0.0
        while queue:
            head = queue.peek()
            assert head is not None
            if head.ready_at:
                now = now or asyncio.get_running_loop().time()
                if head.ready_at > now:
                    self._schedule_pump(peer, head.ready_at)
                    break
            frame = head.frame
            if frame[TYPE_OFFSET] == FrameType.MSG_ZSTD and not self._takes_compressed(conn):
                frame = self._plain_frame(frame)
            size = len(frame)
            pending = inflight + batch_bytes
            if pending and pending + size > window:
                break
            queue.pop()
            batch.append(frame)
            batch_bytes += size
            if batch_bytes >= PUMP_CHUNK:
                self._hand_over(peer, conn, batch, batch_bytes)
                inflight = conn.inflight
                batch, batch_bytes = [], 0
        if batch:
            self._hand_over(peer, conn, batch, batch_bytes)
        self._update_queue_gauges(peer)
        peer.m.inflight.set(conn.inflight)

    def _hand_over(self, peer: Peer, conn: PeerConnection, batch: list[bytes], size: int) -> None:
        conn.send_messages(batch)
        peer.messages_out += len(batch)
        peer.bytes_out += size
        peer.m.messages_out.inc(len(batch))
        peer.m.bytes_out.inc(size)
        assert self._endpoint is not None
        self._endpoint.transmit_soon(conn)

    def _schedule_pump(self, peer: Peer, when: float) -> None:
        if peer.pump_handle is not None:
            peer.pump_handle.cancel()

        def run() -> None:
            peer.pump_handle = None
            self._pump(peer)

        peer.pump_handle = asyncio.get_running_loop().call_at(when, run)

    def _update_queue_gauges(self, peer: Peer) -> None:
        peer.m.send_depth.set(len(peer.queue))
        peer.m.send_bytes.set(peer.queue.bytes)

    def _update_connected_gauge(self) -> None:
        metrics.PEERS_CONNECTED.set(sum(1 for p in self._peers.values() if p.connected))

    # ---- dialing ----------------------------------------------------------------

    def _should_dial(self, peer: Peer) -> bool:
        return (
            not self._closing
            and not peer.connected
            and not self._is_banned(peer)
            and not peer.faults.partitioned
        )

    def _dial_delay(self, peer: Peer) -> float:
        s = self.settings
        base = min(s.reconnect_max, s.reconnect_min * (2.0 ** min(peer.attempts, 30)))
        delay = base / 2 + self._rng.uniform(0, base / 2)
        if self._node_id > peer.node_id:
            # let the lower id dial first: one connection, no duplicate to resolve
            delay += s.reconnect_min
        return delay

    async def _maintain(self, peer: Peer) -> None:
        while not self._closing:
            while not self._should_dial(peer):
                peer.wake.clear()
                await peer.wake.wait()
            peer.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(peer.wake.wait(), self._dial_delay(peer))
                continue  # woken: something changed, look again
            if not self._should_dial(peer):
                continue
            try:
                ok = await self._dial_once(peer)
            except Exception:
                log.exception("dial failed", extra={"fields": {"peer": peer.name}})
                ok = False
            if not ok:
                peer.attempts += 1

    async def _dial_once(self, peer: Peer) -> bool:
        endpoint = self._endpoint
        assert endpoint is not None
        # A hint and the known address take turns: forged hints cannot keep the node
        # from trying the member's real address.
        if peer.candidate and not peer.dialed_candidate:
            address, peer.candidate, peer.dialed_candidate = peer.candidate, "", True
        else:
            address, peer.dialed_candidate = peer.address, False
        from_candidate = address != peer.address
        parsed = auth.parse_host_port(address)
        if parsed is None:
            log.warning("bad peer address", extra={"fields": {"peer": peer.name}})
            return False
        host, port = parsed
        try:
            host = await self._resolve(host, port)
        except OSError as exc:
            self._limiter.warning(
                f"resolve-{peer.name}",
                "cannot resolve peer address",
                {"peer": peer.name, "address": peer.address, "error": str(exc)},
            )
            return False
        loop = asyncio.get_running_loop()
        conn = endpoint.connect((host, port), expected_peer=peer.node_id)
        peer.dialing = conn
        fut: asyncio.Future[bool] = loop.create_future()
        self._dial_waiters[conn] = fut
        self.stats.inc("dials")
        try:
            ok = await asyncio.wait_for(fut, self.settings.handshake_timeout + 1.0)
            if ok and from_candidate and peer.conn is conn:
                # the member proved its key at this address: adopt it
                log.info(
                    "adopted a discovered address",
                    extra={"fields": {"peer": peer.name, "address": address, "was": peer.address}},
                )
                peer.address = address
                peer.address_source = "mdns"
                self.stats.inc("addresses_learned.mdns")
            return ok
        except TimeoutError:
            conn.close(CloseCode.HANDSHAKE_TIMEOUT, "dial timed out")
            self._on_activity(conn)
            endpoint.transmit(conn)
            return False
        finally:
            self._dial_waiters.pop(conn, None)
            if peer.dialing is conn:
                peer.dialing = None

    async def _resolve(self, host: str, port: int) -> str:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return host
        except OSError:
            pass
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), timeout=5.0
        )
        if not infos:
            raise OSError(f"no address for {host}")
        return str(infos[0][4][0])

    # ---- peer exchange ------------------------------------------------------------

    def _refresh_self_record(self) -> None:
        address = self.advertised_address
        issued = int(time.time() * 1000)
        if self._self_record is not None:
            if self._self_record.address == address:
                return
            issued = max(issued, self._self_record.issued_unix_ms + 1)
        message = auth.address_record_message(
            node_id=self._node_id, address=address, issued_unix_ms=issued
        )
        self._self_record = transport_pb2.AddressRecord(
            node_id=self._node_id,
            address=address,
            issued_unix_ms=issued,
            signature=self._key.sign(message, context=auth.ADDRESS_CONTEXT),
        )

    def _peers_body(self) -> bytes:
        records = [self._self_record] if self._self_record is not None else []
        records += [p.record for p in self._peers.values() if p.record is not None]
        return transport_pb2.WirePeers(records=records).SerializeToString()

    def broadcast_records(self) -> None:
        if self._endpoint is None:
            return
        body = self._peers_body()
        for peer in self._peers.values():
            conn = peer.conn
            if conn is not None and conn.authenticated:
                conn.send_peers(body)
                self._endpoint.transmit_soon(conn)

    async def _exchange_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.peer_exchange_interval)
            self.broadcast_records()

    def _on_peers(self, conn: PeerConnection, body: bytes) -> None:
        message = transport_pb2.WirePeers()
        try:
            message.ParseFromString(body)
        except DecodeError:
            self.stats.protocol_error("malformed_peers")
            return
        if len(message.records) > len(self._members) + 1:
            self.stats.protocol_error("too_many_records")
            return
        for record in message.records:
            self.learn_address(record, source="peer_exchange")

    def learn_address(self, record: transport_pb2.AddressRecord, *, source: str) -> bool:
        """Adopt a member's signed address record if it is valid and newer; True if adopted."""
        if record.node_id == self._node_id:
            return False
        peer = self._peers.get(record.node_id)
        if peer is None:
            self.stats.protocol_error("record_not_member")
            return False
        if peer.record is not None and record.issued_unix_ms <= peer.record.issued_unix_ms:
            return False
        if record.issued_unix_ms > time.time() * 1000 + auth.MAX_CLOCK_SKEW_MS:
            self.stats.protocol_error("record_from_future")
            return False
        if auth.parse_host_port(record.address) is None:
            self.stats.protocol_error("record_bad_address")
            return False
        message = auth.address_record_message(
            node_id=record.node_id, address=record.address, issued_unix_ms=record.issued_unix_ms
        )
        if not self._backend.verify(
            peer.member.public_key, message, record.signature, context=auth.ADDRESS_CONTEXT
        ):
            self.stats.protocol_error("record_bad_signature")
            self._limiter.warning(
                "record-bad-signature", "address record with a bad signature", {"peer": peer.name}
            )
            return False
        stored = transport_pb2.AddressRecord()
        stored.CopyFrom(record)
        peer.record = stored
        self.stats.inc(f"addresses_learned.{source}")
        if record.address != peer.address:
            log.info(
                "learned a peer address",
                extra={
                    "fields": {
                        "peer": peer.name,
                        "address": record.address,
                        "was": peer.address,
                        "source": source,
                    }
                },
            )
            peer.address = record.address
            peer.address_source = source
            if not peer.connected:
                peer.attempts = 0
                peer.wake.set()
        return True

    def mdns_candidate(self, node_id: str, address: str) -> None:
        """An unauthenticated hint that member ``node_id`` listens at ``address``."""
        peer = self._peers.get(node_id)
        if peer is None or auth.parse_host_port(address) is None:
            self.stats.inc("mdns.ignored")
            return
        self.stats.inc("mdns.seen")
        if peer.connected or address == peer.address:
            return
        fresh = not peer.candidate
        peer.candidate = address
        if fresh:
            # Only the first hint since the last dial cuts the back-off short: each wake
            # re-arms the dial delay, so a stream of forged hints kept a node from ever
            # dialing (docs/transport.md, "Discovery").
            peer.attempts = 0
            peer.wake.set()

    @property
    def self_record(self) -> transport_pb2.AddressRecord | None:
        return self._self_record

    # ---- STUN ---------------------------------------------------------------------

    def _on_stun(self, data: bytes, addr: object) -> None:
        result = stun.parse_response(data)
        fut = self._stun_waiters.pop(result.transaction_id, None)
        if fut is None:
            self.stats.protocol_error("unexpected_stun")
            return
        if not fut.done():
            fut.set_result(result)

    async def stun_query(self, server: str, *, attempts: int = 4) -> stun.StunAddress:
        """Ask ``server`` for this socket's public address (RFC 8489 retransmissions)."""
        endpoint = self._endpoint
        parsed = auth.parse_host_port(server)
        if endpoint is None or parsed is None:
            raise InvalidRequest(f"bad STUN server {server!r}")
        host = await self._resolve(*parsed)
        loop = asyncio.get_running_loop()
        transaction_id = stun.new_transaction_id()
        request = stun.binding_request(transaction_id)
        fut: asyncio.Future[stun.StunAddress | stun.StunError] = loop.create_future()
        self._stun_waiters[transaction_id] = fut
        rto = 0.5
        try:
            for _ in range(attempts):
                endpoint.sendto(request, (host, parsed[1]))
                try:
                    result = await asyncio.wait_for(asyncio.shield(fut), rto)
                except TimeoutError:
                    rto *= 2
                    continue
                if isinstance(result, stun.StunError):
                    raise PeerUnavailable(f"STUN server answered: {result.reason}")
                return result
            raise PeerTimeout(f"no STUN answer from {server}")
        finally:
            self._stun_waiters.pop(transaction_id, None)
            fut.cancel()

    async def _stun_loop(self) -> None:
        server = self.settings.stun_server
        while True:
            try:
                result = await self.stun_query(server)
            except (PeerTimeout, PeerUnavailable, InvalidRequest, OSError) as exc:
                self.stats.inc("stun.failures")
                self._limiter.warning("stun", "STUN query failed", {"error": str(exc)})
            else:
                self.stats.inc("stun.successes")
                address = auth.format_host_port(result.host, result.port)
                if address != self._stun_address:
                    log.info("STUN: public address", extra={"fields": {"address": address}})
                    self._stun_address = address
                    self._refresh_self_record()
                    self.broadcast_records()
            await asyncio.sleep(self.settings.stun_interval)


def _fmt_addr(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return auth.format_host_port(str(addr[0]), int(addr[1]))
    return "-"
