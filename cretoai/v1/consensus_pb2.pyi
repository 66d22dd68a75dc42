from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitVertexRequest(_message.Message):
    __slots__ = ("vertex",)
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    vertex: _vertex_pb2.Vertex
    def __init__(self, vertex: _Optional[_Union[_vertex_pb2.Vertex, _Mapping]] = ...) -> None: ...

class SubmitVertexResponse(_message.Message):
    __slots__ = ("hash", "status")
    HASH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    status: _vertex_pb2.VertexStatus
    def __init__(self, hash: _Optional[bytes] = ..., status: _Optional[_Union[_vertex_pb2.VertexStatus, str]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "replica", "view", "primary", "last_executed_seq", "stable_checkpoint", "pool_size", "banned")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    LAST_EXECUTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    replica: int
    view: int
    primary: int
    last_executed_seq: int
    stable_checkpoint: int
    pool_size: int
    banned: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., replica: _Optional[int] = ..., view: _Optional[int] = ..., primary: _Optional[int] = ..., last_executed_seq: _Optional[int] = ..., stable_checkpoint: _Optional[int] = ..., pool_size: _Optional[int] = ..., banned: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchFinalizedRequest(_message.Message):
    __slots__ = ("from_seq",)
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    def __init__(self, from_seq: _Optional[int] = ...) -> None: ...
