from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VertexStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERTEX_STATUS_UNSPECIFIED: _ClassVar[VertexStatus]
    VERTEX_STATUS_PENDING: _ClassVar[VertexStatus]
    VERTEX_STATUS_FINALIZED: _ClassVar[VertexStatus]
    VERTEX_STATUS_REJECTED: _ClassVar[VertexStatus]
VERTEX_STATUS_UNSPECIFIED: VertexStatus
VERTEX_STATUS_PENDING: VertexStatus
VERTEX_STATUS_FINALIZED: VertexStatus
VERTEX_STATUS_REJECTED: VertexStatus

class Vertex(_message.Message):
    __slots__ = ("payload", "parents", "creator", "timestamp_ms", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    parents: _containers.RepeatedScalarFieldContainer[bytes]
    creator: bytes
    timestamp_ms: int
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., parents: _Optional[_Iterable[bytes]] = ..., creator: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignedMessage(_message.Message):
    __slots__ = ("body", "signature", "signer")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    signer: int
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer: _Optional[int] = ...) -> None: ...

class FinalityCertificate(_message.Message):
    __slots__ = ("view", "seq", "batch_digest", "commits")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    batch_digest: bytes
    commits: _containers.RepeatedCompositeFieldContainer[SignedMessage]
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ..., commits: _Optional[_Iterable[_Union[SignedMessage, _Mapping]]] = ...) -> None: ...

class FinalizedBatch(_message.Message):
    __slots__ = ("seq", "batch_digest", "vertices", "rejected", "certificate", "state_digest")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    batch_digest: bytes
    vertices: _containers.RepeatedCompositeFieldContainer[Vertex]
    rejected: _containers.RepeatedScalarFieldContainer[bytes]
    certificate: FinalityCertificate
    state_digest: bytes
    def __init__(self, seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ..., vertices: _Optional[_Iterable[_Union[Vertex, _Mapping]]] = ..., rejected: _Optional[_Iterable[bytes]] = ..., certificate: _Optional[_Union[FinalityCertificate, _Mapping]] = ..., state_digest: _Optional[bytes] = ...) -> None: ...

class VertexRecord(_message.Message):
    __slots__ = ("hash", "vertex", "status", "seq", "height", "certificate", "reject_reason")
    HASH_FIELD_NUMBER: _ClassVar[int]
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    vertex: Vertex
    status: VertexStatus
    seq: int
    height: int
    certificate: FinalityCertificate
    reject_reason: str
    def __init__(self, hash: _Optional[bytes] = ..., vertex: _Optional[_Union[Vertex, _Mapping]] = ..., status: _Optional[_Union[VertexStatus, str]] = ..., seq: _Optional[int] = ..., height: _Optional[int] = ..., certificate: _Optional[_Union[FinalityCertificate, _Mapping]] = ..., reject_reason: _Optional[str] = ...) -> None: ...
