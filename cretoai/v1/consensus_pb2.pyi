from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchAdmissionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdmissionState(_message.Message):
    __slots__ = ("overloaded",)
    OVERLOADED_FIELD_NUMBER: _ClassVar[int]
    overloaded: bool
    def __init__(self, overloaded: _Optional[bool] = ...) -> None: ...

class SubmitVertexRequest(_message.Message):
    __slots__ = ("vertex",)
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    vertex: _vertex_pb2.Vertex
    def __init__(self, vertex: _Optional[_Union[_vertex_pb2.Vertex, _Mapping]] = ...) -> None: ...

class SubmitVertexResponse(_message.Message):
    __slots__ = ("hash", "status", "duplicate", "copy")
    HASH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    status: _vertex_pb2.VertexStatus
    duplicate: bool
    copy: bytes
    def __init__(self, hash: _Optional[bytes] = ..., status: _Optional[_Union[_vertex_pb2.VertexStatus, str]] = ..., duplicate: _Optional[bool] = ..., copy: _Optional[bytes] = ...) -> None: ...

class SubmitVerticesRequest(_message.Message):
    __slots__ = ("vertices", "traceparents", "admitted")
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENTS_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    vertices: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.Vertex]
    traceparents: _containers.RepeatedScalarFieldContainer[str]
    admitted: bool
    def __init__(self, vertices: _Optional[_Iterable[_Union[_vertex_pb2.Vertex, _Mapping]]] = ..., traceparents: _Optional[_Iterable[str]] = ..., admitted: _Optional[bool] = ...) -> None: ...

class SubmitVertexError(_message.Message):
    __slots__ = ("code", "message", "error_code")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    error_code: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class SubmitVertexResult(_message.Message):
    __slots__ = ("accepted", "error")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    accepted: SubmitVertexResponse
    error: SubmitVertexError
    def __init__(self, accepted: _Optional[_Union[SubmitVertexResponse, _Mapping]] = ..., error: _Optional[_Union[SubmitVertexError, _Mapping]] = ...) -> None: ...

class SubmitVerticesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitVertexResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitVertexResult, _Mapping]]] = ...) -> None: ...

class GetPendingRequest(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    def __init__(self, hash: _Optional[bytes] = ...) -> None: ...

class GetPendingResponse(_message.Message):
    __slots__ = ("found", "vertex")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    found: bool
    vertex: _vertex_pb2.Vertex
    def __init__(self, found: _Optional[bool] = ..., vertex: _Optional[_Union[_vertex_pb2.Vertex, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("name", "node_id", "replica", "connected", "banned", "reputation", "rtt_ms", "refuses_this_node")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    REFUSES_THIS_NODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    node_id: str
    replica: int
    connected: bool
    banned: bool
    reputation: int
    rtt_ms: float
    refuses_this_node: bool
    def __init__(self, name: _Optional[str] = ..., node_id: _Optional[str] = ..., replica: _Optional[int] = ..., connected: _Optional[bool] = ..., banned: _Optional[bool] = ..., reputation: _Optional[int] = ..., rtt_ms: _Optional[float] = ..., refuses_this_node: _Optional[bool] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "replica", "view", "primary", "last_executed_seq", "stable_checkpoint", "pool_size", "banned", "node_name", "n", "f", "ready", "view_changes", "peers", "view_changing", "evidence", "alone_in_view")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    LAST_EXECUTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGING_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ALONE_IN_VIEW_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    replica: int
    view: int
    primary: int
    last_executed_seq: int
    stable_checkpoint: int
    pool_size: int
    banned: _containers.RepeatedScalarFieldContainer[str]
    node_name: str
    n: int
    f: int
    ready: bool
    view_changes: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    view_changing: bool
    evidence: int
    alone_in_view: bool
    def __init__(self, node_id: _Optional[str] = ..., replica: _Optional[int] = ..., view: _Optional[int] = ..., primary: _Optional[int] = ..., last_executed_seq: _Optional[int] = ..., stable_checkpoint: _Optional[int] = ..., pool_size: _Optional[int] = ..., banned: _Optional[_Iterable[str]] = ..., node_name: _Optional[str] = ..., n: _Optional[int] = ..., f: _Optional[int] = ..., ready: _Optional[bool] = ..., view_changes: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., view_changing: _Optional[bool] = ..., evidence: _Optional[int] = ..., alone_in_view: _Optional[bool] = ...) -> None: ...

class WatchFinalizedRequest(_message.Message):
    __slots__ = ("from_seq",)
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    def __init__(self, from_seq: _Optional[int] = ...) -> None: ...

class FinalizedNotice(_message.Message):
    __slots__ = ("batch", "results", "copies")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    batch: _vertex_pb2.FinalizedBatch
    results: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.VertexRecord]
    copies: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, batch: _Optional[_Union[_vertex_pb2.FinalizedBatch, _Mapping]] = ..., results: _Optional[_Iterable[_Union[_vertex_pb2.VertexRecord, _Mapping]]] = ..., copies: _Optional[_Iterable[bytes]] = ...) -> None: ...
