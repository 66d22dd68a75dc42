"""The transport's settings, taken from the node config and checked once at start."""

from __future__ import annotations

from dataclasses import dataclass

from cretoai.config import ConfigError, NodeConfig
from cretoai.crypto import node_id
from services.transport import compression
from services.transport.auth import parse_host_port
from services.transport.bounded_quic import LARGE_DATAGRAMS_FEATURE

LOOPBACK_DATAGRAM_BYTES = 15000
#: The largest ``max_datagram_bytes``, and the largest datagram taken from a peer not on
#: this host: aioquic writes long-header packet lengths as 2-byte varints (and STREAM
#: frame lengths, which bounded_quic splits; see LARGE_LOOPBACK_DATAGRAM_BYTES).
MAX_DATAGRAM_BYTES = 16000


@dataclass(frozen=True, kw_only=True)
class Member:
    node_id: str
    name: str
    public_key: bytes
    #: The QUIC address from the validator set (the bootstrap address).
    address: str


@dataclass(frozen=True, kw_only=True)
class TransportSettings:
    quic_host: str
    quic_port: int
    max_frame_bytes: int = 4 * 1024 * 1024
    send_queue_max: int = 4096
    send_queue_max_bytes: int = 64 * 1024 * 1024
    inflight_max_bytes: int = 1_048_576
    recv_queue_max: int = 4096
    recv_queue_max_bytes: int = 32 * 1024 * 1024
    handshake_timeout: float = 5.0
    idle_timeout: float = 30.0
    keepalive: float = 5.0
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    max_pending_connections: int = 64
    max_datagram_bytes: int = 1350
    advertise_address: str = ""
    peer_exchange_interval: float = 15.0
    stun_server: str = ""
    stun_interval: float = 300.0
    mdns: bool = False
    mdns_interfaces: tuple[str, ...] = ()
    fault_injection: bool = False
    #: What every member must run with (``NodeConfig.cluster_parameters``), sent in
    #: the HELLO; a peer whose differ is refused. Empty: nothing is compared.
    cluster_parameters: tuple[tuple[str, str], ...] = ()
    #: zstd-compressed MSG frames (compression.py): offered in the HELLO, and used
    #: towards a peer that offers them too.
    compress_messages: bool = True
    #: Packets of up to LARGE_LOOPBACK_DATAGRAM_BYTES to peers on this host that offer it.
    large_loopback_datagrams: bool = True

    @property
    def features(self) -> tuple[str, ...]:
        """The optional features this transport offers in its HELLO."""
        features: tuple[str, ...] = (compression.FEATURE,) if self.compress_messages else ()
        if self.large_loopback_datagrams:
            features += (LARGE_DATAGRAMS_FEATURE,)
        return features

    @property
    def loopback_datagram_bytes(self) -> int:
        """Datagram size towards peers on this host (loopback MTU is 64 KiB).

        aioquic's cost is per packet, so larger is cheaper: 15000 bytes carries an
        8.3 KB vertex or a 5 KB message in one packet, and at saturation cut the
        transport's CPU per vertex by about a tenth against 9000 (docs/benchmarks.md).
        aioquic encodes packet lengths in two bytes, so packets must stay below 16 KiB.
        """
        return max(self.max_datagram_bytes, LOOPBACK_DATAGRAM_BYTES)

    @property
    def liveness_timeout(self) -> float:
        """No frame at all from an authenticated peer for this long closes the connection."""
        return min(3 * self.keepalive, self.idle_timeout)

    @property
    def quic_flow_window(self) -> int:
        return max(4 * self.inflight_max_bytes, 2 * 1024 * 1024)


def members_of(cfg: NodeConfig) -> list[Member]:
    return [
        Member(
            node_id=node_id(v.public_key_bytes),
            name=v.name,
            public_key=v.public_key_bytes,
            address=v.address,
        )
        for v in cfg.validators
    ]


def settings_from_config(cfg: NodeConfig) -> TransportSettings:
    t = cfg.transport
    src = cfg.source

    def positive(name: str) -> None:
        if getattr(t, name) <= 0:
            raise ConfigError(f"{src}: transport.{name}: must be positive")

    for name in (
        "send_queue_max",
        "send_queue_max_bytes",
        "inflight_max_bytes",
        "recv_queue_max",
        "recv_queue_max_bytes",
        "idle_timeout_ms",
        "keepalive_ms",
        "reconnect_min_ms",
        "reconnect_max_ms",
        "handshake_timeout_ms",
        "max_pending_connections",
        "peer_exchange_ms",
        "stun_interval_ms",
    ):
        positive(name)
    if t.keepalive_ms >= t.idle_timeout_ms:
        raise ConfigError(f"{src}: transport.keepalive_ms: must be below idle_timeout_ms")
    if t.reconnect_max_ms < t.reconnect_min_ms:
        raise ConfigError(f"{src}: transport.reconnect_max_ms: must be >= reconnect_min_ms")
    if not 1200 <= t.max_datagram_bytes <= MAX_DATAGRAM_BYTES:
        raise ConfigError(
            f"{src}: transport.max_datagram_bytes: must be within [1200, {MAX_DATAGRAM_BYTES}]"
        )
    if t.send_queue_max_bytes < t.max_frame_bytes:
        raise ConfigError(f"{src}: transport.send_queue_max_bytes: must be >= max_frame_bytes")
    if t.recv_queue_max_bytes < t.max_frame_bytes:
        raise ConfigError(f"{src}: transport.recv_queue_max_bytes: must be >= max_frame_bytes")
    listen = parse_host_port(cfg.quic_listen) if not cfg.quic_listen.endswith(":0") else None
    if listen is None:
        host, _, port = cfg.quic_listen.rpartition(":")
        if port != "0" or not host:
            raise ConfigError(
                f"{src}: transport.quic_listen: expected host:port, got {cfg.quic_listen!r}"
            )
        listen = (host.strip("[]"), 0)
    for name in ("advertise_address", "stun_server"):
        value = getattr(t, name)
        if value and parse_host_port(value) is None:
            raise ConfigError(f"{src}: transport.{name}: expected host:port, got {value!r}")
    interfaces = tuple(part.strip() for part in t.mdns_interfaces.split(",") if part.strip())
    return TransportSettings(
        quic_host=listen[0],
        quic_port=listen[1],
        max_frame_bytes=t.max_frame_bytes,
        send_queue_max=t.send_queue_max,
        send_queue_max_bytes=t.send_queue_max_bytes,
        inflight_max_bytes=t.inflight_max_bytes,
        recv_queue_max=t.recv_queue_max,
        recv_queue_max_bytes=t.recv_queue_max_bytes,
        handshake_timeout=t.handshake_timeout_ms / 1000,
        idle_timeout=t.idle_timeout_ms / 1000,
        keepalive=t.keepalive_ms / 1000,
        reconnect_min=t.reconnect_min_ms / 1000,
        reconnect_max=t.reconnect_max_ms / 1000,
        max_pending_connections=t.max_pending_connections,
        max_datagram_bytes=t.max_datagram_bytes,
        advertise_address=t.advertise_address,
        peer_exchange_interval=t.peer_exchange_ms / 1000,
        stun_server=t.stun_server,
        stun_interval=t.stun_interval_ms / 1000,
        mdns=t.mdns,
        mdns_interfaces=interfaces,
        fault_injection=cfg.fault_injection.enabled,
        cluster_parameters=cfg.cluster_parameters,
        compress_messages=t.compress_messages,
        large_loopback_datagrams=t.large_loopback_datagrams,
    )
