from cretoai.v1 import vertex_pb2 as _vertex_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrePrepare(_message.Message):
    __slots__ = ("view", "seq", "batch_digest", "request_hashes")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HASHES_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    batch_digest: bytes
    request_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ..., request_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("view", "seq", "batch_digest")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    batch_digest: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("view", "seq", "batch_digest")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    batch_digest: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("seq", "state_digest")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    state_digest: bytes
    def __init__(self, seq: _Optional[int] = ..., state_digest: _Optional[bytes] = ...) -> None: ...

class PreparedCertificate(_message.Message):
    __slots__ = ("pre_prepare", "prepares")
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    pre_prepare: _vertex_pb2.SignedMessage
    prepares: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.SignedMessage]
    def __init__(self, pre_prepare: _Optional[_Union[_vertex_pb2.SignedMessage, _Mapping]] = ..., prepares: _Optional[_Iterable[_Union[_vertex_pb2.SignedMessage, _Mapping]]] = ...) -> None: ...

class ViewChange(_message.Message):
    __slots__ = ("new_view", "stable_seq", "checkpoint_proof", "prepared")
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    STABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PROOF_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    new_view: int
    stable_seq: int
    checkpoint_proof: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.SignedMessage]
    prepared: _containers.RepeatedCompositeFieldContainer[PreparedCertificate]
    def __init__(self, new_view: _Optional[int] = ..., stable_seq: _Optional[int] = ..., checkpoint_proof: _Optional[_Iterable[_Union[_vertex_pb2.SignedMessage, _Mapping]]] = ..., prepared: _Optional[_Iterable[_Union[PreparedCertificate, _Mapping]]] = ...) -> None: ...

class NewView(_message.Message):
    __slots__ = ("view", "view_changes", "pre_prepares")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGES_FIELD_NUMBER: _ClassVar[int]
    PRE_PREPARES_FIELD_NUMBER: _ClassVar[int]
    view: int
    view_changes: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.SignedMessage]
    pre_prepares: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.SignedMessage]
    def __init__(self, view: _Optional[int] = ..., view_changes: _Optional[_Iterable[_Union[_vertex_pb2.SignedMessage, _Mapping]]] = ..., pre_prepares: _Optional[_Iterable[_Union[_vertex_pb2.SignedMessage, _Mapping]]] = ...) -> None: ...

class PbftMessage(_message.Message):
    __slots__ = ("pre_prepare", "prepare", "commit", "checkpoint", "view_change", "new_view")
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGE_FIELD_NUMBER: _ClassVar[int]
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    pre_prepare: PrePrepare
    prepare: Prepare
    commit: Commit
    checkpoint: Checkpoint
    view_change: ViewChange
    new_view: NewView
    def __init__(self, pre_prepare: _Optional[_Union[PrePrepare, _Mapping]] = ..., prepare: _Optional[_Union[Prepare, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., view_change: _Optional[_Union[ViewChange, _Mapping]] = ..., new_view: _Optional[_Union[NewView, _Mapping]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: _vertex_pb2.SignedMessage
    second: _vertex_pb2.SignedMessage
    def __init__(self, first: _Optional[_Union[_vertex_pb2.SignedMessage, _Mapping]] = ..., second: _Optional[_Union[_vertex_pb2.SignedMessage, _Mapping]] = ...) -> None: ...

class CheckpointProof(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[_vertex_pb2.SignedMessage]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[_vertex_pb2.SignedMessage, _Mapping]]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("view", "active", "last_executed", "stable_seq")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    STABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    view: int
    active: bool
    last_executed: int
    stable_seq: int
    def __init__(self, view: _Optional[int] = ..., active: _Optional[bool] = ..., last_executed: _Optional[int] = ..., stable_seq: _Optional[int] = ...) -> None: ...

class Requests(_message.Message):
    __slots__ = ("bodies",)
    BODIES_FIELD_NUMBER: _ClassVar[int]
    bodies: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, bodies: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BatchBodies(_message.Message):
    __slots__ = ("bodies",)
    BODIES_FIELD_NUMBER: _ClassVar[int]
    bodies: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, bodies: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("from_seq", "to_seq")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    to_seq: int
    def __init__(self, from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ...) -> None: ...

class TransferBatch(_message.Message):
    __slots__ = ("request_bodies", "certificate")
    REQUEST_BODIES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    request_bodies: _containers.RepeatedScalarFieldContainer[bytes]
    certificate: _vertex_pb2.FinalityCertificate
    def __init__(self, request_bodies: _Optional[_Iterable[bytes]] = ..., certificate: _Optional[_Union[_vertex_pb2.FinalityCertificate, _Mapping]] = ...) -> None: ...

class StateResponse(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[TransferBatch]
    def __init__(self, batches: _Optional[_Iterable[_Union[TransferBatch, _Mapping]]] = ...) -> None: ...

class ConsensusEnvelope(_message.Message):
    __slots__ = ("signed", "requests", "batch", "evidence", "status", "checkpoint_proof", "state_request", "state_response", "request_bodies", "vouch")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PROOF_FIELD_NUMBER: _ClassVar[int]
    STATE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BODIES_FIELD_NUMBER: _ClassVar[int]
    VOUCH_FIELD_NUMBER: _ClassVar[int]
    signed: _vertex_pb2.SignedMessage
    requests: Requests
    batch: BatchBodies
    evidence: Evidence
    status: Status
    checkpoint_proof: CheckpointProof
    state_request: StateRequest
    state_response: StateResponse
    request_bodies: _containers.RepeatedScalarFieldContainer[bytes]
    vouch: Vouch
    def __init__(self, signed: _Optional[_Union[_vertex_pb2.SignedMessage, _Mapping]] = ..., requests: _Optional[_Union[Requests, _Mapping]] = ..., batch: _Optional[_Union[BatchBodies, _Mapping]] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., checkpoint_proof: _Optional[_Union[CheckpointProof, _Mapping]] = ..., state_request: _Optional[_Union[StateRequest, _Mapping]] = ..., state_response: _Optional[_Union[StateResponse, _Mapping]] = ..., request_bodies: _Optional[_Iterable[bytes]] = ..., vouch: _Optional[_Union[Vouch, _Mapping]] = ...) -> None: ...

class Vouch(_message.Message):
    __slots__ = ("copies", "signer", "signature")
    COPIES_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    copies: _containers.RepeatedScalarFieldContainer[bytes]
    signer: int
    signature: bytes
    def __init__(self, copies: _Optional[_Iterable[bytes]] = ..., signer: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ViewState(_message.Message):
    __slots__ = ("view", "active")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    view: int
    active: bool
    def __init__(self, view: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class VotedBatch(_message.Message):
    __slots__ = ("request_hashes", "request_bodies")
    REQUEST_HASHES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BODIES_FIELD_NUMBER: _ClassVar[int]
    request_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    request_bodies: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, request_hashes: _Optional[_Iterable[bytes]] = ..., request_bodies: _Optional[_Iterable[bytes]] = ...) -> None: ...
