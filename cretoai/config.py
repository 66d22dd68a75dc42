"""Node configuration: one TOML file per node, with ``CRETOAI_*`` environment overrides.

Every setting has a type and a default (see docs/config.md and
``cretoai-node cluster init``, which writes complete files). A wrong, missing
or mistyped field raises :class:`ConfigError` whose message names the file and
the field; the CLI prints it and exits 2 — never a traceback.

Environment overrides: ``CRETOAI_<SECTION>_<FIELD>`` (upper case), e.g.
``CRETOAI_CONSENSUS_BATCH_MAX_COUNT=512`` or ``CRETOAI_TELEMETRY_OTLP_ENDPOINT=...``.
Values are parsed as TOML scalars when possible (numbers, booleans), else strings.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cretoai.crypto.backend import PUBLIC_KEY_SIZE
from cretoai.tls import InternalTls, TlsError, is_loopback, load_internal_tls


class ConfigError(Exception):
    """A configuration problem, with a message fit for an operator."""


@dataclass(frozen=True, kw_only=True)
class NodeSection:
    #: Human-readable name of this node; must match one entry of [[validators]].
    name: str
    #: Private key file (PKCS#8 PEM, mode 0600); relative paths are relative to the config file.
    key: Path
    #: Data directory (RocksDB lives under it by default).
    data_dir: Path = Path("data")


@dataclass(frozen=True, kw_only=True)
class Validator:
    name: str
    #: ML-DSA-87 public key, hex.
    public_key: str
    #: QUIC address host:port where this member listens.
    address: str

    @property
    def public_key_bytes(self) -> bytes:
        return bytes.fromhex(self.public_key)


@dataclass(frozen=True, kw_only=True)
class GatewaySection:
    http: str = "127.0.0.1:8080"
    grpc: str = "127.0.0.1:9080"
    metrics: str = "127.0.0.1:9180"
    #: Largest accepted request body (bytes) and vertex payload (bytes).
    max_body_bytes: int = 1_048_576
    max_payload_bytes: int = 262_144
    #: How long POST /v1/vertices?wait=true waits for finality before answering 504.
    wait_timeout_ms: int = 10_000
    #: Submissions being prepared (shape checked, node-signed when unsigned) at once;
    #: more get 429 at once instead of queueing without bound in front of the node. A
    #: request prepares a quarter of them at a time, and one client address holds at
    #: most a quarter while another request of its is in progress.
    max_submissions_in_progress: int = 256
    #: Vertices one client address may submit per second, on average (REST and gRPC
    #: together; an IPv6 address counted by its /64), with bursts of up to
    #: ``client_burst_vertices``; beyond, 429 ``rate_limited`` (gRPC RESOURCE_EXHAUSTED)
    #: with the seconds to wait, before any work is done. One client sending as fast as
    #: the node refuses cannot take everyone else's share of it. Clients behind one proxy
    #: or NAT share an address: raise it for them.
    client_vertices_per_s: float = 200.0
    #: The burst: at least one largest batch (256 vertices, MAX_BATCH_VERTICES).
    client_burst_vertices: int = 512
    #: Bytes that submission requests in progress may hold at once, until their answer
    #: (HTTP: the declared body, or the limit when undeclared, from before it is read;
    #: gRPC: the message); one beyond gets 429 / RESOURCE_EXHAUSTED at once (one alone
    #: always fits). Bounds what many slow, large or waiting submissions make it hold.
    max_request_bytes_in_progress: int = 67_108_864
    #: Public gRPC calls handled at once (WatchFinalized streams included); more get
    #: RESOURCE_EXHAUSTED before their message is read. With the request size limit (a
    #: batch body) this bounds what anonymous callers make the gateway hold before any
    #: other check. A call is counted per client as it arrives, and its message must
    #: come within ``body_timeout_ms``.
    grpc_max_concurrent_rpcs: int = 32
    #: Of those, calls in progress from one client address (streams included); more get
    #: RESOURCE_EXHAUSTED at once: one client cannot hold every call slot (e.g. with
    #: submissions that wait for finality). Clients behind one proxy or NAT share an
    #: address: raise it for them (above grpc_max_concurrent_rpcs it is that).
    grpc_max_concurrent_rpcs_per_client: int = 8
    #: Bytes that read answers in progress (GET a vertex, a page of finalized batches)
    #: may hold at once, reserved before they are read until they are sent; more get
    #: 429 at once (one alone always fits). Bounds what many concurrent or slowly read
    #: reads make the gateway hold.
    max_answer_bytes_in_progress: int = 67_108_864
    #: Finalized batches buffered for one stream subscriber (WebSocket or gRPC), in bytes;
    #: a subscriber that falls further behind is disconnected (it resumes by seq).
    stream_buffer_bytes: int = 16 * 1_048_576
    #: Finalized-batch subscribers at once (WebSocket and gRPC WatchFinalized); more get
    #: 429 / RESOURCE_EXHAUSTED. Each may hold a page of batches read from storage
    #: (catching up) and its buffer: their number bounds what subscribers make it hold.
    max_streams: int = 16
    #: Of those, subscribers at once from one client address (WebSocket and gRPC
    #: together): one client cannot take every slot. Clients behind one proxy or NAT
    #: share an address: raise it for them.
    max_streams_per_client: int = 4
    #: Connections open at once on each public listener (HTTP, gRPC). An HTTP connection
    #: beyond gets 429 and is closed; gRPC closes one beyond before its handshake. Keeps
    #: a flood of idle or slow connections from using up the file descriptors (the
    #: gateway raises its open files limit to what this needs, within the hard limit).
    max_connections: int = 1024
    #: HTTP connections open at once from one client address: one client cannot take
    #: every slot of ``max_connections`` (more get 429 and are closed). Clients behind
    #: one proxy or NAT share an address: raise it for them.
    max_connections_per_client: int = 128
    #: An HTTP connection that has not sent a whole request head this long after it
    #: opened or after its last answer is closed (slowly sent headers, idle keep-alive),
    #: and one whose client has taken nothing the gateway sends it (an answer, WebSocket
    #: messages) for this long is aborted; a gRPC connection that has not finished its
    #: handshake in this time, or has had no call for this long, too.
    idle_timeout_ms: int = 30_000
    #: An HTTP request body must arrive whole within this long after its head; else
    #: 408 ``request_timeout`` and the connection is closed. A public gRPC call's
    #: message likewise, after its headers; else DEADLINE_EXCEEDED.
    body_timeout_ms: int = 30_000
    #: ML-DSA-87 key file (0600) the gateway signs *unsigned* submissions with: a client
    #: identity of this gateway, never a validator key. Empty: unsigned submissions are
    #: refused (422 signature_required); clients then sign their vertices themselves.
    submitter_key: str = ""
    #: Web origins (``scheme://host[:port]``) whose pages may submit and subscribe. A
    #: browser names the page's origin in ``Origin``; a submission or stream request
    #: carrying any other origin gets 403 ``origin_not_allowed``: else any web page its
    #: visitor opens could make the browser submit vertices the gateway signs, to a
    #: gateway only the visitor's machine reaches. Clients that are not browsers send no
    #: ``Origin`` and are not affected.
    allowed_origins: tuple[str, ...] = ()


#: Most vertices in one batch submission (the gateway's REST and gRPC batches, and
#: consensus's SubmitVertices).
MAX_SUBMISSION_VERTICES = 256
#: The largest batch a node may be configured for (see validate: frames and persists).
MAX_BATCH_BYTES = 8 * 1024 * 1024
#: What a PRE-PREPARE's frame holds besides its bodies: hashes, signature, framing.
BATCH_FRAME_OVERHEAD = 64 * 1024


def new_view_bytes_bound(n: int, window: int, batch_max_count: int) -> int:
    """An upper bound on the bytes of a NEW-VIEW envelope (ML-DSA-87 signatures).

    A VIEW-CHANGE carries the stable checkpoint's proof and a prepared certificate (a
    PRE-PREPARE with up to ``batch_max_count`` hashes and q-1 PREPAREs) for every seq of
    the watermark window; a NEW-VIEW carries q VIEW-CHANGEs and a PRE-PREPARE per seq. A
    Byzantine primary can fill the window with PRE-PREPAREs that honest replicas prepare
    and never execute, so every honest VIEW-CHANGE then holds ``window`` certificates: it
    and the NEW-VIEW must still fit a transport frame, or no view change ever completes.
    Framing is over-counted (tags, lengths, varints): tests check it against the codec.
    """
    from cretoai.crypto.backend import SIGNATURE_SIZE

    q = 2 * ((n - 1) // 3) + 1

    def signed(body: int) -> int:  # body, signature, signer and their framing
        return body + SIGNATURE_SIZE + 32

    vote = signed(64)  # PREPARE, COMMIT, CHECKPOINT: view, seq, a 32-byte digest
    pre_prepare = signed(64 + 35 * batch_max_count)
    certificate = pre_prepare + (q - 1) * vote + 16
    view_change = signed(32 + q * vote + window * certificate)
    return signed(32 + q * view_change + window * pre_prepare) + 1024


#: The shortest consensus timeout a config may set (view change, request, progress).
MIN_CONSENSUS_TIMEOUT_MS = 100
#: The largest memtables_mb or block_cache_mb a config may set (MiB): a typo caught.
STORAGE_BUDGET_MAX_MB = 65_536


@dataclass(frozen=True, kw_only=True)
class ConsensusSection:
    #: Bind address of the internal gRPC service.
    listen: str = "127.0.0.1:7001"
    #: What this node's other services dial (e.g. a container name); empty: ``listen``.
    advertise: str = ""
    metrics: str = "127.0.0.1:9181"
    tick_ms: int = 10
    batch_max_count: int = 256
    #: A cluster parameter (docs/config.md). 2 MiB: at saturation the PBFT messages'
    #: signatures, storage's certificate checks and the internal calls are paid once per
    #: ~240 vertices instead of ~120 (docs/benchmarks.md; 1 MiB before 2026-12-06).
    batch_max_bytes: int = 2_097_152
    batch_timeout_ms: int = 20
    #: Pipelining depth: partial batches are cut only while fewer are unexecuted.
    max_inflight_batches: int = 1
    #: ... and full batches only while fewer than this many are unexecuted (4 MiB of
    #: bodies multicast and not executed, as four 1-MiB batches were).
    max_inflight_full_batches: int = 2
    #: A checkpoint every this many seqs. A VIEW-CHANGE carries a prepared certificate
    #: per seq above the stable checkpoint, each checked by every replica: 16 keeps a
    #: view change under a second on a loaded 2-core machine (64 took 0.3-0.8 s more);
    #: a checkpoint costs one signature and n-1 verifications per replica.
    checkpoint_interval: int = 16
    #: Seqs above the stable checkpoint a primary may use. Bounded by
    #: transport.max_frame_bytes: a NEW-VIEW may carry q x window prepared certificates
    #: (new_view_bytes_bound). 0 (the default): the largest multiple of
    #: checkpoint_interval, at most 256, that fits (48 at n = 4, 16 at n = 7).
    watermark_window: int = 0
    view_change_timeout_ms: int = 2_000
    request_timeout_ms: int = 4_000
    #: A backup suspects the primary when requests wait and nothing executed for this
    #: long (from the last executed batch, the oldest waiting request's arrival or the
    #: view's start, whichever is latest); at half of it the oldest waiting requests
    #: go to every replica. At most request_timeout_ms.
    progress_timeout_ms: int = 1_500
    #: Period of STATUS (what a replica has executed; peers resend what it misses) and
    #: of VIEW-CHANGE resends. Below progress_timeout_ms.
    status_interval_ms: int = 200
    #: A quiet replica (nothing pending, in step with every peer heard from lately)
    #: sends an unchanged STATUS only every this many intervals (a heartbeat).
    status_quiet_intervals: int = 5
    #: New submissions get 429 while a pending request waited longer than this
    #: (admission control: below request_timeout_ms, so overload sheds load instead
    #: of ending in relays and view changes). 0: a quarter of request_timeout_ms.
    admission_max_wait_ms: int = 0
    #: Requests waiting in the pool, at most: this many ...
    pool_max: int = 20_000
    #: ... and this many bytes (a peer's forwards at most a validator's share of it, or
    #: one batch's worth): bounds the memory a Byzantine peer or a flood of large
    #: vertices can hold. At least batch_max_bytes.
    pool_max_bytes: int = 67_108_864
    #: Peers whose reputation falls below this score are banned.
    reputation_threshold: int = -100
    #: Threads that verify ML-DSA-87 signatures (verification releases the GIL).
    verify_threads: int = 2
    #: Vouched verification: vouch to peers for the vertex copies this node verified,
    #: and take a copy as valid without verifying it when f+1 members vouched for it
    #: (docs/consensus.md). Off: every copy is verified here, and nothing is vouched.
    vouch: bool = True
    #: ... for groups of at least this many copies: an entry node's forward, a batch. For
    #: fewer, claims are not sent on their own nor waited for (a message costs more than
    #: the verifications it saves); claims beside bodies always go.
    vouch_min_copies: int = 8
    #: Execution decides most batches' vertex statuses from what this process finalized
    #: lately, without a storage read (docs/consensus.md). On: it reads storage as well,
    #: uses storage's answer, and logs and counts any difference
    #: (cretoai_consensus_recent_mismatches_total). A check for tests and audits: one
    #: storage read more per batch.
    cross_check_recent: bool = False


@dataclass(frozen=True, kw_only=True)
class TransportSection:
    #: gRPC endpoint offered to the local consensus service (bind address).
    listen: str = "127.0.0.1:7002"
    #: What this node's other services dial; empty: ``listen``.
    advertise: str = ""
    metrics: str = "127.0.0.1:9182"
    #: QUIC listen address; empty means this node's [[validators]] address.
    quic_listen: str = ""
    max_frame_bytes: int = 4 * 1024 * 1024
    send_queue_max: int = 4096
    idle_timeout_ms: int = 30_000
    keepalive_ms: int = 5_000
    reconnect_min_ms: int = 200
    reconnect_max_ms: int = 10_000
    #: Optional discovery; both off by default (no public servers preconfigured).
    mdns: bool = False
    stun_server: str = ""
    #: Bytes bound of one peer's send queue (besides send_queue_max messages); oldest dropped.
    send_queue_max_bytes: int = 64 * 1024 * 1024
    #: Bytes sent to one peer but not yet acknowledged by its transport (backpressure window).
    inflight_max_bytes: int = 1_048_576
    #: Inbound messages buffered per peer for consensus before the oldest are dropped ...
    recv_queue_max: int = 4096
    #: ... and their bytes per peer (at least max_frame_bytes): 4096 frames of 4 MiB
    #: would be 16 GiB from one peer while consensus is slow.
    recv_queue_max_bytes: int = 32 * 1024 * 1024
    #: Deadline for the QUIC handshake plus the ML-DSA-87 peer authentication.
    handshake_timeout_ms: int = 5_000
    #: Connections not yet authenticated, at most (a flood bound).
    max_pending_connections: int = 64
    #: Largest UDP payload QUIC sends (no path MTU discovery in aioquic).
    max_datagram_bytes: int = 1350
    #: Address announced in peer exchange; empty: the STUN-learned one, else quic_listen.
    advertise_address: str = ""
    #: How often signed address records are exchanged with connected members.
    peer_exchange_ms: int = 15_000
    #: How often the STUN server (when set) is asked for this node's public address.
    stun_interval_ms: int = 300_000
    #: Comma-separated interface addresses mDNS binds to; empty: all interfaces.
    mdns_interfaces: str = ""
    #: Compress large messages to peers that offer it too (zstd; docs/transport.md):
    #: about a third fewer bytes for a PRE-PREPARE whose clients send several vertices.
    compress_messages: bool = True
    #: Packets of up to 60,000 bytes (instead of 15,000) to members on this host that
    #: offer it too (docs/transport.md): aioquic's cost is per packet.
    large_loopback_datagrams: bool = True


@dataclass(frozen=True, kw_only=True)
class StorageSection:
    #: Bind address of the internal gRPC service.
    listen: str = "127.0.0.1:7003"
    #: What this node's other services dial; empty: ``listen``.
    advertise: str = ""
    metrics: str = "127.0.0.1:9183"
    #: RocksDB directory; empty means <data_dir>/db.
    path: str = ""
    #: RocksDB's memtables, every column family together (MiB; at least 48: each
    #: column family holds 4 MiB from its first write, and below 48 the write buffer
    #: manager flushes nearly empty memtables, at much more CPU). More: larger flushes.
    memtables_mb: int = 48
    #: RocksDB's block cache (MiB; at least 4): recently read table blocks, and the index
    #: and filter blocks of every table file, shared by the column families.
    block_cache_mb: int = 32


@dataclass(frozen=True, kw_only=True)
class TlsSection:
    """Mutual TLS between this node's services (``cluster init`` writes the files).

    All three paths, or none. Without them an internal service listens only on
    loopback (it refuses any other address)."""

    #: The node's CA certificate (PEM): callers must present a certificate it signed.
    ca: str = ""
    #: The certificate and key (PEM, key mode 0600) this node's services present.
    cert: str = ""
    key: str = ""
    #: The gateway's own client certificate and key (both, or neither): the internal
    #: services let it call only what a gateway needs. Without them the gateway presents
    #: the services' certificate, which every internal service obeys (configs written
    #: before 2026-12-03; ``cluster init --reuse-keys`` issues them).
    gateway_cert: str = ""
    gateway_key: str = ""


@dataclass(frozen=True, kw_only=True)
class TelemetrySection:
    #: OTLP/gRPC endpoint (e.g. http://127.0.0.1:4317); empty disables export.
    otlp_endpoint: str = ""
    #: The share of traces started here that are recorded (parent-based: a sampled
    #: caller's trace is always continued). 0 turns tracing off. Keep equal to
    #: ``cretoai.telemetry.DEFAULT_SAMPLING_RATIO``.
    sampling_ratio: float = 0.01
    log_level: str = "info"
    #: Log lines as "logfmt" (key=value) or "json" (one object per line).
    log_format: str = "logfmt"


@dataclass(frozen=True, kw_only=True)
class CryptoSection:
    #: "auto" (liboqs when its library loads, else cryptography), "cryptography" or "oqs".
    backend: str = "auto"


@dataclass(frozen=True, kw_only=True)
class FaultInjectionSection:
    #: Lets the transport's fault-injection RPCs (drop, delay, partition) act. Tests only.
    enabled: bool = False
    #: Byzantine behaviour of this node for cluster tests ("" = honest).
    byzantine: str = ""


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    node: NodeSection
    validators: tuple[Validator, ...]
    gateway: GatewaySection = field(default_factory=GatewaySection)
    consensus: ConsensusSection = field(default_factory=ConsensusSection)
    transport: TransportSection = field(default_factory=TransportSection)
    storage: StorageSection = field(default_factory=StorageSection)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    crypto: CryptoSection = field(default_factory=CryptoSection)
    fault_injection: FaultInjectionSection = field(default_factory=FaultInjectionSection)
    tls: TlsSection = field(default_factory=TlsSection)
    #: The file this was loaded from (for messages and relative paths).
    source: Path = Path("<memory>")

    @property
    def watermark_window(self) -> int:
        """consensus.watermark_window, or the largest multiple of checkpoint_interval (at
        most 256, at least one interval) whose NEW-VIEW fits a transport frame."""
        c = self.consensus
        if c.watermark_window:
            return c.watermark_window
        window = c.checkpoint_interval
        while window + c.checkpoint_interval <= 256 and (
            new_view_bytes_bound(
                len(self.validators), window + c.checkpoint_interval, c.batch_max_count
            )
            <= self.transport.max_frame_bytes
        ):
            window += c.checkpoint_interval
        return window

    @property
    def replica_index(self) -> int:
        """This node's position in the validator set (its replica id)."""
        for index, member in enumerate(self.validators):
            if member.name == self.node.name:
                return index
        raise ConfigError(f"{self.source}: node.name {self.node.name!r} is not in [[validators]]")

    @property
    def key_path(self) -> Path:
        return self._resolve(self.node.key)

    @property
    def submitter_key_path(self) -> Path | None:
        """The gateway's submitter key file, or None (unsigned submissions refused)."""
        return (
            self._resolve(Path(self.gateway.submitter_key)) if self.gateway.submitter_key else None
        )

    @property
    def data_dir(self) -> Path:
        return self._resolve(self.node.data_dir)

    @property
    def storage_path(self) -> Path:
        return self._resolve(Path(self.storage.path)) if self.storage.path else self.data_dir / "db"

    @property
    def signing_mark_path(self) -> Path:
        """The consensus signing mark (outside storage; never restored from a backup)."""
        return self.data_dir / "consensus" / "signing-mark.json"

    @functools.cached_property
    def internal_tls(self) -> InternalTls | None:
        """The node's internal TLS material (read from disk once), or None when not configured."""
        t = self.tls
        if not t.ca:
            return None
        try:
            return load_internal_tls(
                self._resolve(Path(t.ca)), self._resolve(Path(t.cert)), self._resolve(Path(t.key))
            )
        except TlsError as exc:
            raise ConfigError(f"{self.source}: tls: {exc}") from None

    @functools.cached_property
    def gateway_tls(self) -> InternalTls | None:
        """What the gateway presents to the node's internal services: its own certificate
        when configured, else the services' (:attr:`internal_tls`)."""
        t = self.tls
        if not (t.ca and t.gateway_cert):
            return self.internal_tls
        try:
            return load_internal_tls(
                self._resolve(Path(t.ca)),
                self._resolve(Path(t.gateway_cert)),
                self._resolve(Path(t.gateway_key)),
            )
        except TlsError as exc:
            raise ConfigError(f"{self.source}: tls: {exc}") from None

    @property
    def quic_listen(self) -> str:
        return self.transport.quic_listen or self.validators[self.replica_index].address

    @property
    def validator_public_keys(self) -> tuple[bytes, ...]:
        return tuple(v.public_key_bytes for v in self.validators)

    @property
    def validator_set_digest(self) -> str:
        """SHA3-256 (hex) of the validators' public keys, in order: the cluster's identity
        (replica ids are positions in it). Names and addresses are not part of it."""
        return hashlib.sha3_256(
            b"cretoai.v1.validator-set\x00" + b"".join(self.validator_public_keys)
        ).hexdigest()

    @property
    def cluster_parameters(self) -> tuple[tuple[str, str], ...]:
        """What every node of the cluster must run with, as (name, value) pairs.

        Replica ids are positions in the validator set, and a replica judges its peers'
        PBFT messages by these limits: a node whose values differ takes honest peers
        for faulty ones (a batch over its ``batch_max_count`` is charged to the primary,
        which it then bans) or is taken for one. The transports compare them when they
        connect and refuse a peer that differs (docs/config.md, "Cluster parameters").
        The validator set counts by its keys, in order (names and addresses are local).
        """
        validators = self.validator_set_digest
        return (
            ("validators", f"{len(self.validators)} keys, set digest {validators[:16]}"),
            ("consensus.batch_max_count", str(self.consensus.batch_max_count)),
            ("consensus.batch_max_bytes", str(self.consensus.batch_max_bytes)),
            ("consensus.checkpoint_interval", str(self.consensus.checkpoint_interval)),
            ("consensus.watermark_window", str(self.watermark_window)),
            ("transport.max_frame_bytes", str(self.transport.max_frame_bytes)),
        )

    def _resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.source.parent / path


SECTIONS: dict[str, type[Any]] = {
    "node": NodeSection,
    "gateway": GatewaySection,
    "consensus": ConsensusSection,
    "transport": TransportSection,
    "storage": StorageSection,
    "telemetry": TelemetrySection,
    "crypto": CryptoSection,
    "fault_injection": FaultInjectionSection,
    "tls": TlsSection,
}

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if tp == tuple[str, ...]:
        return "an array of strings"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "a path string" if tp is Path else str(tp)
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path and isinstance(value, str) and value:
        return Path(value)
    elif (
        tp == tuple[str, ...] and isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: missing (required)")
    return cls(**kwargs)


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Merge ``CRETOAI_<SECTION>_<FIELD>`` variables into ``data``; return the names applied."""
    applied = []
    by_length = sorted(SECTIONS, key=len, reverse=True)
    for var, text in sorted(environ.items()):
        if not var.startswith("CRETOAI_"):
            continue
        rest = var[len("CRETOAI_") :].lower()
        for section in by_length:
            if rest.startswith(section + "_"):
                name = rest[len(section) + 1 :]
                known = {f.name for f in dataclasses.fields(SECTIONS[section])}
                if name not in known:
                    raise ConfigError(f"environment {var}: [{section}] has no field {name!r}")
                data.setdefault(section, {})[name] = _parse_env_value(text)
                applied.append(var)
                break
    return applied


def _check_address(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: expected host:port, got {value!r}")


def _validate(cfg: NodeConfig) -> None:
    src = cfg.source
    if not cfg.validators:
        raise ConfigError(f"{src}: [[validators]] is empty; a cluster needs at least one member")
    names = [v.name for v in cfg.validators]
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: [[validators]] has duplicate names")
    keys: set[str] = set()
    for i, v in enumerate(cfg.validators):
        where = f"{src}: validators[{i}]"
        try:
            raw = bytes.fromhex(v.public_key)
        except ValueError:
            raise ConfigError(f"{where}.public_key: not hex") from None
        if len(raw) != PUBLIC_KEY_SIZE:
            raise ConfigError(
                f"{where}.public_key: {len(raw)} bytes, an ML-DSA-87 key is {PUBLIC_KEY_SIZE}"
            )
        if v.public_key in keys:
            raise ConfigError(f"{where}.public_key: the same key appears twice")
        keys.add(v.public_key)
        _check_address(v.address, f"{where}.address")
    cfg.replica_index  # noqa: B018 - raises when node.name is not a member
    for section, attr in (
        ("gateway", "http"),
        ("gateway", "grpc"),
        ("consensus", "listen"),
        ("transport", "listen"),
        ("storage", "listen"),
    ):
        _check_address(getattr(getattr(cfg, section), attr), f"{src}: {section}.{attr}")
    for section in ("consensus", "transport", "storage"):
        advertise = getattr(cfg, section).advertise
        if advertise:
            _check_address(advertise, f"{src}: {section}.advertise")
    tls = [cfg.tls.ca, cfg.tls.cert, cfg.tls.key]
    if any(tls) and not all(tls):
        raise ConfigError(f"{src}: tls: set ca, cert and key together (or none of them)")
    if bool(cfg.tls.gateway_cert) != bool(cfg.tls.gateway_key) or (
        cfg.tls.gateway_cert and not all(tls)
    ):
        raise ConfigError(
            f"{src}: tls: set gateway_cert and gateway_key together, with ca, cert and key"
        )
    if not all(tls):
        for section in ("consensus", "transport", "storage"):
            listen = getattr(cfg, section).listen
            if not is_loopback(listen):
                raise ConfigError(
                    f"{src}: {section}.listen: {listen} is not a loopback address; an internal "
                    "service listens beyond loopback only with mutual TLS ([tls] ca, cert, key)"
                )
            # Without TLS a caller would send plaintext there and trust whoever answers.
            advertise = getattr(cfg, section).advertise
            if advertise and not is_loopback(advertise):
                raise ConfigError(
                    f"{src}: {section}.advertise: {advertise} is not a loopback address; the "
                    "other services dial an internal service beyond loopback only with mutual "
                    "TLS ([tls] ca, cert, key)"
                )
    for name in (
        "max_body_bytes",
        "max_payload_bytes",
        "wait_timeout_ms",
        "max_submissions_in_progress",
        "client_vertices_per_s",
        "client_burst_vertices",
        "max_request_bytes_in_progress",
        "grpc_max_concurrent_rpcs",
        "grpc_max_concurrent_rpcs_per_client",
        "max_answer_bytes_in_progress",
        "stream_buffer_bytes",
        "max_streams",
        "max_streams_per_client",
        "max_connections",
        "max_connections_per_client",
        "idle_timeout_ms",
        "body_timeout_ms",
    ):
        if getattr(cfg.gateway, name) <= 0:
            raise ConfigError(f"{src}: gateway.{name}: must be positive")
    if not math.isfinite(cfg.gateway.client_vertices_per_s):
        raise ConfigError(f"{src}: gateway.client_vertices_per_s: must be a finite number")
    if cfg.gateway.client_burst_vertices < MAX_SUBMISSION_VERTICES:
        raise ConfigError(
            f"{src}: gateway.client_burst_vertices: {cfg.gateway.client_burst_vertices} is "
            f"less than the largest batch ({MAX_SUBMISSION_VERTICES} vertices), which could then "
            "never be submitted"
        )
    for origin in cfg.gateway.allowed_origins:
        scheme, sep, host = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not host or "/" in host:
            raise ConfigError(
                f"{src}: gateway.allowed_origins: {origin!r} is not an origin "
                "(scheme://host[:port], e.g. https://explorer.example.org)"
            )
    c = cfg.consensus
    for name in (
        "tick_ms",
        "batch_max_count",
        "batch_max_bytes",
        "batch_timeout_ms",
        "checkpoint_interval",
        "view_change_timeout_ms",
        "request_timeout_ms",
        "progress_timeout_ms",
        "status_interval_ms",
        "status_quiet_intervals",
        "pool_max",
        "pool_max_bytes",
        "verify_threads",
        "vouch_min_copies",
        "max_inflight_batches",
        "max_inflight_full_batches",
    ):
        if getattr(c, name) <= 0:
            raise ConfigError(f"{src}: consensus.{name}: must be positive")
    if c.pool_max_bytes < c.batch_max_bytes:
        raise ConfigError(
            f"{src}: consensus.pool_max_bytes: must be at least batch_max_bytes "
            f"({c.batch_max_bytes}): the largest request must fit in an empty pool"
        )
    if not 0 <= c.admission_max_wait_ms < c.request_timeout_ms:
        raise ConfigError(
            f"{src}: consensus.admission_max_wait_ms: must be within [0, request_timeout_ms) "
            f"(request_timeout_ms is {c.request_timeout_ms}; 0 means a quarter of it)"
        )
    for name in ("view_change_timeout_ms", "request_timeout_ms", "progress_timeout_ms"):
        if getattr(c, name) < MIN_CONSENSUS_TIMEOUT_MS:
            # an audit (2026-12-04): a node with 30-60 ms timeouts moved on to a view of its
            # own and stayed there, the cluster one fault short, without a word
            raise ConfigError(
                f"{src}: consensus.{name}: must be at least {MIN_CONSENSUS_TIMEOUT_MS} (a "
                "replica that times out before its peers can answer leaves them for a view "
                "of its own)"
            )
    if c.reputation_threshold >= 0:
        raise ConfigError(
            f"{src}: consensus.reputation_threshold: must be negative (scores start at 0; "
            f"default {ConsensusSection.reputation_threshold})"
        )
    if c.progress_timeout_ms > c.request_timeout_ms:
        raise ConfigError(
            f"{src}: consensus.progress_timeout_ms: must be at most request_timeout_ms "
            f"({c.request_timeout_ms})"
        )
    if not c.tick_ms <= c.status_interval_ms < c.progress_timeout_ms:
        raise ConfigError(
            f"{src}: consensus.status_interval_ms: must be within [tick_ms, "
            f"progress_timeout_ms) (tick_ms is {c.tick_ms}, progress_timeout_ms is "
            f"{c.progress_timeout_ms}): a lost message is repaired through STATUS, which "
            "must happen before the progress timer suspects an honest primary"
        )
    if c.watermark_window < 0:
        raise ConfigError(f"{src}: consensus.watermark_window: must be 0 (automatic) or more")
    if c.watermark_window and c.watermark_window < c.checkpoint_interval:
        raise ConfigError(
            f"{src}: consensus.watermark_window: must be >= checkpoint_interval "
            f"({c.checkpoint_interval})"
        )
    for name, least in (("memtables_mb", 48), ("block_cache_mb", 4)):
        value = getattr(cfg.storage, name)
        if not least <= value <= STORAGE_BUDGET_MAX_MB:
            raise ConfigError(
                f"{src}: storage.{name}: must be within [{least}, {STORAGE_BUDGET_MAX_MB}] "
                f"(MiB), got {value}"
            )
    if not 0.0 <= cfg.telemetry.sampling_ratio <= 1.0:
        raise ConfigError(f"{src}: telemetry.sampling_ratio: must be within [0, 1]")
    if cfg.telemetry.log_format not in ("logfmt", "json"):
        raise ConfigError(
            f"{src}: telemetry.log_format: expected logfmt or json, "
            f"got {cfg.telemetry.log_format!r}"
        )
    if cfg.crypto.backend not in ("auto", "cryptography", "oqs"):
        raise ConfigError(f"{src}: crypto.backend: expected auto, cryptography or oqs")
    fi = cfg.fault_injection
    if fi.byzantine and fi.byzantine not in ("equivocate", "forge", "flood", "hoard", "vouch"):
        raise ConfigError(
            f"{src}: fault_injection.byzantine: expected equivocate, forge, flood, hoard or vouch "
            "(or empty)"
        )
    if fi.byzantine and not fi.enabled:
        raise ConfigError(f"{src}: fault_injection.byzantine: requires fault_injection.enabled")
    if cfg.transport.max_frame_bytes < 1024:
        raise ConfigError(f"{src}: transport.max_frame_bytes: must be at least 1024")
    # The signing mark must stay outside the database: a restore or a reset moves the
    # database directory aside, and a mark moved with it lets the node sign twice.
    database = cfg.storage_path.resolve()
    mark = cfg.signing_mark_path.resolve()
    if mark.is_relative_to(database):
        raise ConfigError(
            f"{src}: storage.path: {database} holds the consensus signing mark ({mark}); "
            "give the database a directory of its own (the default is <data_dir>/db)"
        )
    # A PRE-PREPARE carries its batch's bodies in one transport frame, and a replica
    # persists them in one storage record (channels take 16 MiB; persists go in 8).
    most = min(cfg.transport.max_frame_bytes - BATCH_FRAME_OVERHEAD, MAX_BATCH_BYTES)
    if cfg.consensus.batch_max_bytes > most:
        raise ConfigError(
            f"{src}: consensus.batch_max_bytes: at most {most} (transport.max_frame_bytes "
            f"less {BATCH_FRAME_OVERHEAD} for a PRE-PREPARE's own bytes, and at most "
            f"{MAX_BATCH_BYTES})"
        )
    c = cfg.consensus
    frame, window = cfg.transport.max_frame_bytes, cfg.watermark_window
    needed = new_view_bytes_bound(len(cfg.validators), window, c.batch_max_count)
    if needed > frame:
        raise ConfigError(
            f"{src}: consensus.watermark_window: {window} needs NEW-VIEWs of up to {needed} "
            f"bytes, over transport.max_frame_bytes ({frame}) with {len(cfg.validators)} "
            f"validators and batch_max_count {c.batch_max_count}: a VIEW-CHANGE carries a "
            "prepared certificate per seq of the window and a NEW-VIEW q of them, and one "
            "that does not fit a frame is never sent (no view change would complete); lower "
            "the window (at least checkpoint_interval) or batch_max_count, or raise the frame"
        )


def parse_config(data: Mapping[str, Any], source: Path) -> NodeConfig:
    where = str(source)
    allowed = set(SECTIONS) | {"validators"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown section [{unknown[0]}] (known: {', '.join(sorted(allowed))})"
        )
    if "node" not in data:
        raise ConfigError(f"{where}: missing section [node]")
    raw_validators = data.get("validators", [])
    if not isinstance(raw_validators, list):
        raise ConfigError(f"{where}: validators: expected [[validators]] entries")
    validators = tuple(
        _build(Validator, v, f"{where}: validators[{i}]") for i, v in enumerate(raw_validators)
    )
    sections = {
        name: _build(cls, data[name], f"{where}: {name}")
        for name, cls in SECTIONS.items()
        if name in data
    }
    cfg = NodeConfig(validators=validators, source=source, **sections)
    _validate(cfg)
    return cfg


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, override from the environment, and validate a node's TOML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    apply_env_overrides(data, os.environ if environ is None else environ)
    return parse_config(data, path.resolve())


def to_toml_dict(cfg: NodeConfig) -> dict[str, Any]:
    """A plain dict of ``cfg`` suitable for tomli_w (paths as strings)."""

    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, tuple | list):
            return [plain(x) for x in obj]
        return obj

    out = plain(cfg)
    out.pop("source")
    return typing.cast(dict[str, Any], out)


__all__ = [
    "ConfigError",
    "NodeConfig",
    "Validator",
    "load_config",
    "parse_config",
    "to_toml_dict",
]
