"""Prometheus metrics of the transport (``cretoai_transport_*``) and the service's counters.

Peer labels are member *names* from the validator set, so cardinality is bounded
by the cluster size; events from non-members are never labelled by peer.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

PEERS_CONNECTED = Gauge("cretoai_transport_peers_connected", "Authenticated peer connections")
RTT = Histogram(
    "cretoai_transport_rtt_seconds",
    "Application-level round trip (PING/PONG) per peer",
    ["peer"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MESSAGES = Counter(
    "cretoai_transport_messages_total", "Envelopes carried, per peer", ["peer", "direction"]
)
BYTES = Counter(
    "cretoai_transport_bytes_total", "MSG frame bytes carried, per peer", ["peer", "direction"]
)
# Compressed MSG frames (compression.py): the message bytes before compression and the
# compressed bytes sent, once per message (a broadcast compresses once for every peer).
COMPRESSED_BYTES = Counter(
    "cretoai_transport_compressed_bytes_total",
    "Bytes of messages compressed for peers (zstd), before and after compression",
    ["stage"],
)
# Every datagram through the endpoint's UDP socket (QUIC packets of every kind, ACK-only and
# retransmissions included; STUN; Retry): UDP payload bytes, without the IP and UDP headers
# (28 bytes per datagram over IPv4, 48 over IPv6). Not per peer: one socket serves them all.
DATAGRAMS_SENT = Counter(
    "cretoai_transport_datagrams_sent_total", "UDP datagrams handed to the kernel by sendto"
)
DATAGRAM_BYTES_SENT = Counter(
    "cretoai_transport_datagram_bytes_sent_total",
    "UDP payload bytes of the datagrams sent (IP and UDP headers not included)",
)
DATAGRAMS_RECEIVED = Counter(
    "cretoai_transport_datagrams_received_total", "UDP datagrams read from the socket"
)
DATAGRAM_BYTES_RECEIVED = Counter(
    "cretoai_transport_datagram_bytes_received_total",
    "UDP payload bytes of the datagrams read (IP and UDP headers not included)",
)
SEND_QUEUE_DEPTH = Gauge(
    "cretoai_transport_send_queue_depth", "Messages waiting in a peer's send queue", ["peer"]
)
SEND_QUEUE_BYTES = Gauge(
    "cretoai_transport_send_queue_bytes", "Bytes waiting in a peer's send queue", ["peer"]
)
INFLIGHT_BYTES = Gauge(
    "cretoai_transport_inflight_bytes", "Bytes sent to a peer and not yet acknowledged", ["peer"]
)
RECV_QUEUE_DEPTH = Gauge(
    "cretoai_transport_recv_queue_depth", "Inbound messages waiting for consensus", ["peer"]
)
DROPPED = Counter(
    "cretoai_transport_dropped_total", "Messages dropped, by peer and reason", ["peer", "reason"]
)
RECONNECTS = Counter(
    "cretoai_transport_reconnects_total", "Connections re-established to a peer", ["peer"]
)
AUTH_FAILURES = Counter(
    "cretoai_transport_auth_failures_total", "Peers that failed authentication", ["reason"]
)
PROTOCOL_ERRORS = Counter(
    "cretoai_transport_protocol_errors_total",
    "Bad input: garbage datagrams, bad frames, floods (by reason)",
    ["reason"],
)
REFUSED = Counter(
    "cretoai_transport_refused_total", "Connections refused (banned, partitioned)", ["reason"]
)
BANS = Counter("cretoai_transport_bans_total", "Bans requested by consensus")
REFUSED_BY_PEER = Counter(
    "cretoai_transport_refused_by_peer_total",
    "Connections a peer closed because it bans this node (it holds evidence of this "
    "node's equivocation, or this node's reputation fell too low there)",
    ["peer"],
)
PARAMETERS_DIFFER = Counter(
    "cretoai_transport_parameters_differ_total",
    "Connections refused because the member runs with other cluster parameters (the "
    "validator set's order, PBFT's limits): a configuration mistake on one of the two "
    "nodes",
    ["peer"],
)
IDENTITY_CONFLICTS = Counter(
    "cretoai_transport_identity_conflicts_total",
    "Signs that two processes run with one member's key: a member's replaced process came "
    "back while its replacement is connected (whose=member), or a peer said so of this "
    "node (whose=this_node)",
    ["whose"],
)


class PeerMetrics:
    """One peer's labelled children, resolved once (labels() is costly per message)."""

    def __init__(self, peer: str) -> None:
        self.messages_in = MESSAGES.labels(peer, "in")
        self.messages_out = MESSAGES.labels(peer, "out")
        self.bytes_in = BYTES.labels(peer, "in")
        self.bytes_out = BYTES.labels(peer, "out")
        self.send_depth = SEND_QUEUE_DEPTH.labels(peer)
        self.send_bytes = SEND_QUEUE_BYTES.labels(peer)
        self.inflight = INFLIGHT_BYTES.labels(peer)
        self.recv_depth = RECV_QUEUE_DEPTH.labels(peer)


class Stats:
    """Service-wide counters (GetStats) mirrored into Prometheus."""

    def __init__(self) -> None:
        self.counters: Tally[str] = Tally()

    def auth_failure(self, reason: str) -> None:
        self.counters[f"auth_failures.{reason}"] += 1
        AUTH_FAILURES.labels(reason).inc()

    def protocol_error(self, reason: str) -> None:
        self.counters[f"protocol_errors.{reason}"] += 1
        PROTOCOL_ERRORS.labels(reason).inc()

    def refused(self, reason: str) -> None:
        self.counters[f"refused.{reason}"] += 1
        REFUSED.labels(reason).inc()

    def dropped(self, peer: str, reason: str, count: int = 1) -> None:
        self.counters[f"dropped.{reason}"] += count
        DROPPED.labels(peer, reason).inc(count)

    def identity_conflict(self, whose: str) -> None:
        self.counters[f"identity_conflicts.{whose}"] += 1
        IDENTITY_CONFLICTS.labels(whose).inc()

    def refused_by_peer(self, peer: str) -> None:
        self.counters["refused_by_peer"] += 1
        REFUSED_BY_PEER.labels(peer).inc()

    def parameters_differ(self, peer: str) -> None:
        self.counters["parameters_differ"] += 1
        PARAMETERS_DIFFER.labels(peer).inc()

    def inc(self, name: str, count: int = 1) -> None:
        self.counters[name] += count
