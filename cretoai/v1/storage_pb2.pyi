from cretoai.v1 import pbft_pb2 as _pbft_pb2
from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecutionResult(_message.Message):
    __slots__ = ("hash", "rejected", "reject_reason")
    HASH_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    rejected: bool
    reject_reason: str
    def __init__(self, hash: _Optional[bytes] = ..., rejected: _Optional[bool] = ..., reject_reason: _Optional[str] = ...) -> None: ...

class CommitBatchRequest(_message.Message):
    __slots__ = ("batch", "results", "voted_batch_key")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    VOTED_BATCH_KEY_FIELD_NUMBER: _ClassVar[int]
    batch: _vertex_pb2.FinalizedBatch
    results: _containers.RepeatedCompositeFieldContainer[ExecutionResult]
    voted_batch_key: bytes
    def __init__(self, batch: _Optional[_Union[_vertex_pb2.FinalizedBatch, _Mapping]] = ..., results: _Optional[_Iterable[_Union[ExecutionResult, _Mapping]]] = ..., voted_batch_key: _Optional[bytes] = ...) -> None: ...

class CommitBatchResponse(_message.Message):
    __slots__ = ("last_seq", "already_committed", "heights")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ALREADY_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    HEIGHTS_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    already_committed: bool
    heights: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, last_seq: _Optional[int] = ..., already_committed: _Optional[bool] = ..., heights: _Optional[_Iterable[int]] = ...) -> None: ...

class StateEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class KeyRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ...) -> None: ...

class WriteStateRequest(_message.Message):
    __slots__ = ("puts", "deletes", "delete_prefixes", "delete_ranges")
    PUTS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    DELETE_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    DELETE_RANGES_FIELD_NUMBER: _ClassVar[int]
    puts: _containers.RepeatedCompositeFieldContainer[StateEntry]
    deletes: _containers.RepeatedScalarFieldContainer[bytes]
    delete_prefixes: _containers.RepeatedScalarFieldContainer[bytes]
    delete_ranges: _containers.RepeatedCompositeFieldContainer[KeyRange]
    def __init__(self, puts: _Optional[_Iterable[_Union[StateEntry, _Mapping]]] = ..., deletes: _Optional[_Iterable[bytes]] = ..., delete_prefixes: _Optional[_Iterable[bytes]] = ..., delete_ranges: _Optional[_Iterable[_Union[KeyRange, _Mapping]]] = ...) -> None: ...

class WriteStateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScanStateRequest(_message.Message):
    __slots__ = ("prefix", "after", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    after: bytes
    limit: int
    def __init__(self, prefix: _Optional[bytes] = ..., after: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class ScanStateResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[StateEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[StateEntry, _Mapping]]] = ...) -> None: ...

class AppendEvidenceRequest(_message.Message):
    __slots__ = ("evidence", "kind")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    evidence: _pbft_pb2.Evidence
    kind: str
    def __init__(self, evidence: _Optional[_Union[_pbft_pb2.Evidence, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class AppendEvidenceResponse(_message.Message):
    __slots__ = ("id", "duplicate")
    ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    duplicate: bool
    def __init__(self, id: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class EvidenceRecord(_message.Message):
    __slots__ = ("id", "digest", "offender", "kind", "evidence", "recorded_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFENDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    digest: bytes
    offender: int
    kind: str
    evidence: _pbft_pb2.Evidence
    recorded_ms: int
    def __init__(self, id: _Optional[int] = ..., digest: _Optional[bytes] = ..., offender: _Optional[int] = ..., kind: _Optional[str] = ..., evidence: _Optional[_Union[_pbft_pb2.Evidence, _Mapping]] = ..., recorded_ms: _Optional[int] = ...) -> None: ...

class GetVertexRequest(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    def __init__(self, hash: _Optional[bytes] = ...) -> None: ...

class GetVertexResponse(_message.Message):
    __slots__ = ("found", "record")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    found: bool
    record: _vertex_pb2.VertexRecord
    def __init__(self, found: _Optional[bool] = ..., record: _Optional[_Union[_vertex_pb2.VertexRecord, _Mapping]] = ...) -> None: ...

class GetVertexStatusesRequest(_message.Message):
    __slots__ = ("hashes",)
    HASHES_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetVertexStatusesResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.VertexRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[_vertex_pb2.VertexRecord, _Mapping]]] = ...) -> None: ...

class ListParentsRequest(_message.Message):
    __slots__ = ("hash", "with_certificates")
    HASH_FIELD_NUMBER: _ClassVar[int]
    WITH_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    with_certificates: bool
    def __init__(self, hash: _Optional[bytes] = ..., with_certificates: _Optional[bool] = ...) -> None: ...

class ListChildrenRequest(_message.Message):
    __slots__ = ("hash", "after", "limit", "with_certificates")
    HASH_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WITH_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    after: bytes
    limit: int
    with_certificates: bool
    def __init__(self, hash: _Optional[bytes] = ..., after: _Optional[bytes] = ..., limit: _Optional[int] = ..., with_certificates: _Optional[bool] = ...) -> None: ...

class GetFinalizedRequest(_message.Message):
    __slots__ = ("from_seq", "to_seq", "limit", "omit_vertices")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OMIT_VERTICES_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    to_seq: int
    limit: int
    omit_vertices: bool
    def __init__(self, from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., limit: _Optional[int] = ..., omit_vertices: _Optional[bool] = ...) -> None: ...

class FinalizedEntry(_message.Message):
    __slots__ = ("batch", "results")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    batch: _vertex_pb2.FinalizedBatch
    results: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.VertexRecord]
    def __init__(self, batch: _Optional[_Union[_vertex_pb2.FinalizedBatch, _Mapping]] = ..., results: _Optional[_Iterable[_Union[_vertex_pb2.VertexRecord, _Mapping]]] = ...) -> None: ...

class ListVerticesByHeightRequest(_message.Message):
    __slots__ = ("from_height", "to_height", "after", "limit", "with_certificates")
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TO_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WITH_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    to_height: int
    after: bytes
    limit: int
    with_certificates: bool
    def __init__(self, from_height: _Optional[int] = ..., to_height: _Optional[int] = ..., after: _Optional[bytes] = ..., limit: _Optional[int] = ..., with_certificates: _Optional[bool] = ...) -> None: ...

class ListVerticesByTimeRequest(_message.Message):
    __slots__ = ("from_ms", "to_ms", "after", "limit", "with_certificates")
    FROM_MS_FIELD_NUMBER: _ClassVar[int]
    TO_MS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WITH_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    from_ms: int
    to_ms: int
    after: bytes
    limit: int
    with_certificates: bool
    def __init__(self, from_ms: _Optional[int] = ..., to_ms: _Optional[int] = ..., after: _Optional[bytes] = ..., limit: _Optional[int] = ..., with_certificates: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ColumnFamilyStats(_message.Message):
    __slots__ = ("name", "estimated_keys", "sst_bytes", "memtable_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_KEYS_FIELD_NUMBER: _ClassVar[int]
    SST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMTABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    estimated_keys: int
    sst_bytes: int
    memtable_bytes: int
    def __init__(self, name: _Optional[str] = ..., estimated_keys: _Optional[int] = ..., sst_bytes: _Optional[int] = ..., memtable_bytes: _Optional[int] = ...) -> None: ...

class StorageStats(_message.Message):
    __slots__ = ("last_seq", "vertices", "finalized_vertices", "rejected_vertices", "edges", "evidence", "disk_bytes", "column_families", "path", "schema_version", "halted", "halt_reason", "owner_node", "owner_key", "owner_validator_set")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_VERTICES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERTICES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FAMILIES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    HALT_REASON_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_FIELD_NUMBER: _ClassVar[int]
    OWNER_KEY_FIELD_NUMBER: _ClassVar[int]
    OWNER_VALIDATOR_SET_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    vertices: int
    finalized_vertices: int
    rejected_vertices: int
    edges: int
    evidence: int
    disk_bytes: int
    column_families: _containers.RepeatedCompositeFieldContainer[ColumnFamilyStats]
    path: str
    schema_version: int
    halted: bool
    halt_reason: str
    owner_node: str
    owner_key: str
    owner_validator_set: str
    def __init__(self, last_seq: _Optional[int] = ..., vertices: _Optional[int] = ..., finalized_vertices: _Optional[int] = ..., rejected_vertices: _Optional[int] = ..., edges: _Optional[int] = ..., evidence: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., column_families: _Optional[_Iterable[_Union[ColumnFamilyStats, _Mapping]]] = ..., path: _Optional[str] = ..., schema_version: _Optional[int] = ..., halted: _Optional[bool] = ..., halt_reason: _Optional[str] = ..., owner_node: _Optional[str] = ..., owner_key: _Optional[str] = ..., owner_validator_set: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("path", "last_seq", "vertices", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    last_seq: int
    vertices: int
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., last_seq: _Optional[int] = ..., vertices: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class StoredVertex(_message.Message):
    __slots__ = ("vertex", "creator_id", "voted_body")
    VERTEX_FIELD_NUMBER: _ClassVar[int]
    CREATOR_ID_FIELD_NUMBER: _ClassVar[int]
    VOTED_BODY_FIELD_NUMBER: _ClassVar[int]
    vertex: bytes
    creator_id: bytes
    voted_body: bytes
    def __init__(self, vertex: _Optional[bytes] = ..., creator_id: _Optional[bytes] = ..., voted_body: _Optional[bytes] = ...) -> None: ...

class StoredVertexMeta(_message.Message):
    __slots__ = ("status", "seq", "height", "index", "reject_reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    status: _vertex_pb2.VertexStatus
    seq: int
    height: int
    index: int
    reject_reason: str
    def __init__(self, status: _Optional[_Union[_vertex_pb2.VertexStatus, str]] = ..., seq: _Optional[int] = ..., height: _Optional[int] = ..., index: _Optional[int] = ..., reject_reason: _Optional[str] = ...) -> None: ...

class StoredBatch(_message.Message):
    __slots__ = ("header", "results")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    header: _vertex_pb2.FinalizedBatch
    results: _containers.RepeatedCompositeFieldContainer[StoredResult]
    def __init__(self, header: _Optional[_Union[_vertex_pb2.FinalizedBatch, _Mapping]] = ..., results: _Optional[_Iterable[_Union[StoredResult, _Mapping]]] = ...) -> None: ...

class StoredResult(_message.Message):
    __slots__ = ("hash", "rejected", "height", "reject_reason", "signature")
    HASH_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    rejected: bool
    height: int
    reject_reason: str
    signature: bytes
    def __init__(self, hash: _Optional[bytes] = ..., rejected: _Optional[bool] = ..., height: _Optional[int] = ..., reject_reason: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class StoredCounters(_message.Message):
    __slots__ = ("last_seq", "vertices", "finalized_vertices", "rejected_vertices", "edges", "evidence", "writes")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_VERTICES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERTICES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    vertices: int
    finalized_vertices: int
    rejected_vertices: int
    edges: int
    evidence: int
    writes: int
    def __init__(self, last_seq: _Optional[int] = ..., vertices: _Optional[int] = ..., finalized_vertices: _Optional[int] = ..., rejected_vertices: _Optional[int] = ..., edges: _Optional[int] = ..., evidence: _Optional[int] = ..., writes: _Optional[int] = ...) -> None: ...
