from cretoai.v1 import consensus_pb2 as _consensus_pb2
from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GatewaySubmitRequest(_message.Message):
    __slots__ = ("vertex", "wait")
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    vertex: _vertex_pb2.Vertex
    wait: bool
    def __init__(self, vertex: _Optional[_Union[_vertex_pb2.Vertex, _Mapping]] = ..., wait: _Optional[bool] = ...) -> None: ...

class GatewaySubmitResponse(_message.Message):
    __slots__ = ("hash", "status", "record")
    HASH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    status: _vertex_pb2.VertexStatus
    record: _vertex_pb2.VertexRecord
    def __init__(self, hash: _Optional[bytes] = ..., status: _Optional[_Union[_vertex_pb2.VertexStatus, str]] = ..., record: _Optional[_Union[_vertex_pb2.VertexRecord, _Mapping]] = ...) -> None: ...

class GatewaySubmitBatchRequest(_message.Message):
    __slots__ = ("vertices", "wait")
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    vertices: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.Vertex]
    wait: bool
    def __init__(self, vertices: _Optional[_Iterable[_Union[_vertex_pb2.Vertex, _Mapping]]] = ..., wait: _Optional[bool] = ...) -> None: ...

class GatewayError(_message.Message):
    __slots__ = ("code", "message", "status")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    status: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., status: _Optional[int] = ...) -> None: ...

class GatewaySubmitResult(_message.Message):
    __slots__ = ("hash", "status", "record", "duplicate", "error")
    HASH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    status: _vertex_pb2.VertexStatus
    record: _vertex_pb2.VertexRecord
    duplicate: bool
    error: GatewayError
    def __init__(self, hash: _Optional[bytes] = ..., status: _Optional[_Union[_vertex_pb2.VertexStatus, str]] = ..., record: _Optional[_Union[_vertex_pb2.VertexRecord, _Mapping]] = ..., duplicate: _Optional[bool] = ..., error: _Optional[_Union[GatewayError, _Mapping]] = ...) -> None: ...

class GatewaySubmitBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GatewaySubmitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[GatewaySubmitResult, _Mapping]]] = ...) -> None: ...

class GatewayGetVertexRequest(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    def __init__(self, hash: _Optional[bytes] = ...) -> None: ...
