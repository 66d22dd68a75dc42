from cretoai.v1 import consensus_pb2 as _consensus_pb2
from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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

class GatewayGetVertexRequest(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    def __init__(self, hash: _Optional[bytes] = ...) -> None: ...
