from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("to", "payload", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    to: str
    payload: bytes
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, to: _Optional[str] = ..., payload: _Optional[bytes] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., **kwargs) -> None: ...

class EnvelopeBatch(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "address", "connected", "banned", "rtt_ms", "name", "direction", "send_queue_depth", "send_queue_bytes", "inflight_bytes", "messages_out", "messages_in", "bytes_out", "bytes_in", "dropped", "reconnects", "partitioned", "address_source", "refuses_us", "max_datagram_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SEND_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SEND_QUEUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_OUT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    REFUSES_US_FIELD_NUMBER: _ClassVar[int]
    MAX_DATAGRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    connected: bool
    banned: bool
    rtt_ms: float
    name: str
    direction: str
    send_queue_depth: int
    send_queue_bytes: int
    inflight_bytes: int
    messages_out: int
    messages_in: int
    bytes_out: int
    bytes_in: int
    dropped: int
    reconnects: int
    partitioned: bool
    address_source: str
    refuses_us: bool
    max_datagram_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., connected: _Optional[bool] = ..., banned: _Optional[bool] = ..., rtt_ms: _Optional[float] = ..., name: _Optional[str] = ..., direction: _Optional[str] = ..., send_queue_depth: _Optional[int] = ..., send_queue_bytes: _Optional[int] = ..., inflight_bytes: _Optional[int] = ..., messages_out: _Optional[int] = ..., messages_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., bytes_in: _Optional[int] = ..., dropped: _Optional[int] = ..., reconnects: _Optional[int] = ..., partitioned: _Optional[bool] = ..., address_source: _Optional[str] = ..., refuses_us: _Optional[bool] = ..., max_datagram_bytes: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers", "self_node_id", "advertised_address")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SELF_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    self_node_id: str
    advertised_address: str
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., self_node_id: _Optional[str] = ..., advertised_address: _Optional[str] = ...) -> None: ...

class BanPeerRequest(_message.Message):
    __slots__ = ("node_id", "reason", "duration_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    duration_ms: int
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class BanPeerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingPeerRequest(_message.Message):
    __slots__ = ("node_id", "timeout_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    timeout_ms: int
    def __init__(self, node_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class PingPeerResponse(_message.Message):
    __slots__ = ("rtt_ms",)
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    rtt_ms: float
    def __init__(self, rtt_ms: _Optional[float] = ...) -> None: ...

class GetTransportStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TransportStats(_message.Message):
    __slots__ = ("counters",)
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.ScalarMap[str, int]
    def __init__(self, counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SetFaultsRequest(_message.Message):
    __slots__ = ("node_id", "drop_rate", "delay_ms", "partitioned")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_RATE_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    drop_rate: float
    delay_ms: int
    partitioned: bool
    def __init__(self, node_id: _Optional[str] = ..., drop_rate: _Optional[float] = ..., delay_ms: _Optional[int] = ..., partitioned: _Optional[bool] = ...) -> None: ...

class SetFaultsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WireHello(_message.Message):
    __slots__ = ("version", "node_id", "nonce", "boot_id", "parameters", "features")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    version: int
    node_id: str
    nonce: bytes
    boot_id: bytes
    parameters: _containers.RepeatedCompositeFieldContainer[ClusterParameter]
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., node_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., boot_id: _Optional[bytes] = ..., parameters: _Optional[_Iterable[_Union[ClusterParameter, _Mapping]]] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class ClusterParameter(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class WireAuth(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class WirePing(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class WireAck(_message.Message):
    __slots__ = ("consumed",)
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    consumed: int
    def __init__(self, consumed: _Optional[int] = ...) -> None: ...

class AddressRecord(_message.Message):
    __slots__ = ("node_id", "address", "issued_unix_ms", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    issued_unix_ms: int
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., issued_unix_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WirePeers(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AddressRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AddressRecord, _Mapping]]] = ...) -> None: ...
