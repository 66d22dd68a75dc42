"""The PBFT replica as a pure state machine (no I/O, no clock, no threads).

See docs/consensus.md. The public surface::

    replica = Replica(config, signer=..., verifier=..., records=..., executed=...)
    replica.propose(request) / replica.step(sender, envelope) / replica.tick()
    replica.report_fault(peer, kind)
    rd = replica.ready()   # persist, then send, then execute; then the rest
"""

from services.consensus.core.certificate import (
    InvalidCertificate,
    check_certificate,
    verify_certificate,
    verify_inclusion,
)
from services.consensus.core.codec import (
    DecodeError,
    certificate_from_pb,
    certificate_to_pb,
    decode_envelope,
    encode_envelope,
)
from services.consensus.core.config import Config
from services.consensus.core.crypto import (
    CONTEXT,
    GENESIS_STATE,
    NULL_DIGEST,
    MlDsaSigner,
    MlDsaVerifier,
    Signer,
    Verifier,
    batch_digest,
    next_state_digest,
    outcome_bytes,
)
from services.consensus.core.durable import CorruptState, ExecutedState
from services.consensus.core.messages import Certificate, Envelope, Request, TransferBatch
from services.consensus.core.quorum import max_faulty, quorum_size
from services.consensus.core.ready import Committed, Outbound, Ready, Record, ServeState
from services.consensus.core.replica import (
    ConsensusHalted,
    ProposeResult,
    Replica,
    ReplicaStatus,
)
from services.consensus.core.reputation import Fault, FaultKind

__all__ = [
    "CONTEXT",
    "GENESIS_STATE",
    "NULL_DIGEST",
    "Certificate",
    "Committed",
    "Config",
    "ConsensusHalted",
    "CorruptState",
    "DecodeError",
    "Envelope",
    "ExecutedState",
    "Fault",
    "FaultKind",
    "InvalidCertificate",
    "MlDsaSigner",
    "MlDsaVerifier",
    "Outbound",
    "ProposeResult",
    "Ready",
    "Record",
    "Replica",
    "ReplicaStatus",
    "Request",
    "ServeState",
    "Signer",
    "TransferBatch",
    "Verifier",
    "batch_digest",
    "certificate_from_pb",
    "certificate_to_pb",
    "check_certificate",
    "decode_envelope",
    "encode_envelope",
    "max_faulty",
    "next_state_digest",
    "outcome_bytes",
    "quorum_size",
    "verify_certificate",
    "verify_inclusion",
]
