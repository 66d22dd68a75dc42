"""Conversion between the core's values and the ``cretoai.v1`` protobuf types.

Decoding never trusts its input: anything structurally wrong raises
:class:`DecodeError` (the driver reports it as a ``MALFORMED`` fault of the
sending peer). Signatures are not checked here; that is the driver's job for
the outer signature and the core's for nested ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError as _ProtobufDecodeError

from cretoai.protowire import length_delimited, tag, varint
from cretoai.v1 import pbft_pb2, vertex_pb2
from services.consensus.core.messages import (
    HASH_SIZE,
    BatchEnvelope,
    Certificate,
    Checkpoint,
    CheckpointProofEnvelope,
    Commit,
    Envelope,
    EvidenceEnvelope,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
    StateRequestEnvelope,
    StateResponseEnvelope,
    StatusEnvelope,
    TransferBatch,
    ViewChange,
)

#: Computes a request's hash from its body; raises ValueError for a body that
#: is not a request (e.g. not a serialized vertex).
RequestHasher = Callable[[bytes], bytes]

M = TypeVar("M", PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)


class DecodeError(ValueError):
    """Bytes from a peer that are not a well-formed message."""


# --- protocol messages --------------------------------------------------------------


def encode_body(msg: Message) -> bytes:
    """The bytes a replica signs: the serialized ``PbftMessage``."""
    return _message_to_pb(msg).SerializeToString()


def _message_to_pb(msg: Message) -> pbft_pb2.PbftMessage:
    if isinstance(msg, PrePrepare):
        return pbft_pb2.PbftMessage(
            pre_prepare=pbft_pb2.PrePrepare(
                view=msg.view,
                seq=msg.seq,
                batch_digest=msg.digest,
                request_hashes=msg.request_hashes,
            )
        )
    if isinstance(msg, Prepare):
        return pbft_pb2.PbftMessage(
            prepare=pbft_pb2.Prepare(view=msg.view, seq=msg.seq, batch_digest=msg.digest)
        )
    if isinstance(msg, Commit):
        return pbft_pb2.PbftMessage(
            commit=pbft_pb2.Commit(view=msg.view, seq=msg.seq, batch_digest=msg.digest)
        )
    if isinstance(msg, Checkpoint):
        return pbft_pb2.PbftMessage(
            checkpoint=pbft_pb2.Checkpoint(seq=msg.seq, state_digest=msg.state_digest)
        )
    if isinstance(msg, ViewChange):
        return pbft_pb2.PbftMessage(
            view_change=pbft_pb2.ViewChange(
                new_view=msg.new_view,
                stable_seq=msg.stable_seq,
                checkpoint_proof=[signed_to_pb(s) for s in msg.checkpoint_proof],
                prepared=[_prepared_to_pb(c) for c in msg.prepared],
            )
        )
    return pbft_pb2.PbftMessage(
        new_view=pbft_pb2.NewView(
            view=msg.view,
            view_changes=[signed_to_pb(s) for s in msg.view_changes],
            pre_prepares=[signed_to_pb(s) for s in msg.pre_prepares],
        )
    )


def _digest(value: bytes, what: str) -> bytes:
    if len(value) != HASH_SIZE:
        raise DecodeError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")
    return bytes(value)


#: The message class of each ``PbftMessage`` kind.
_KINDS: dict[str, type[Message]] = {
    "pre_prepare": PrePrepare,
    "prepare": Prepare,
    "commit": Commit,
    "checkpoint": Checkpoint,
    "view_change": ViewChange,
    "new_view": NewView,
}


def decode_body(body: bytes, expected: type[Message] | None = None) -> Message:
    """The protocol message in signed bytes ``body`` (of kind ``expected``, if given).

    The kind is checked before any nested message is decoded: nested signed messages
    are ``bytes`` fields, so protobuf's own recursion limit does not apply, and a NEW-VIEW
    nested in a NEW-VIEW a few hundred times deep would otherwise exhaust the stack.
    With the check, nesting stops at NEW-VIEW > VIEW-CHANGE > PRE-PREPARE.

    ``body`` must be exactly the message's canonical encoding (:func:`encode_body`, what
    an honest replica signs): protobuf would accept unknown fields, repeated scalars and
    other encodings of the same values, and a signer padding its own messages (a COMMIT
    or VIEW-CHANGE of megabytes) would have them copied into certificates, VIEW-CHANGEs
    and NEW-VIEWs that honest replicas must then send, over the transport's frame limit.
    """
    msg = _decode_body(body, expected)
    if encode_body(msg) != body:
        raise DecodeError(f"a signed {type(msg).__name__} that is not its canonical encoding")
    return msg


def _decode_body(body: bytes, expected: type[Message] | None) -> Message:
    try:
        pb = pbft_pb2.PbftMessage.FromString(body)
    except _ProtobufDecodeError as exc:
        raise DecodeError(f"not a PbftMessage: {exc}") from None
    kind = pb.WhichOneof("kind")
    if expected is not None and (kind is None or _KINDS[kind] is not expected):
        got = "no kind" if kind is None else _KINDS[kind].__name__
        raise DecodeError(f"expected a signed {expected.__name__}, got {got}")
    if kind == "pre_prepare":
        pp = pb.pre_prepare
        return PrePrepare(
            view=pp.view,
            seq=pp.seq,
            digest=_digest(pp.batch_digest, "batch digest"),
            request_hashes=tuple(_digest(h, "request hash") for h in pp.request_hashes),
        )
    if kind == "prepare":
        p = pb.prepare
        return Prepare(view=p.view, seq=p.seq, digest=_digest(p.batch_digest, "batch digest"))
    if kind == "commit":
        c = pb.commit
        return Commit(view=c.view, seq=c.seq, digest=_digest(c.batch_digest, "batch digest"))
    if kind == "checkpoint":
        cp = pb.checkpoint
        return Checkpoint(seq=cp.seq, state_digest=_digest(cp.state_digest, "state digest"))
    if kind == "view_change":
        vc = pb.view_change
        return ViewChange(
            new_view=vc.new_view,
            stable_seq=vc.stable_seq,
            checkpoint_proof=tuple(signed_from_pb(s, Checkpoint) for s in vc.checkpoint_proof),
            prepared=tuple(_prepared_from_pb(c) for c in vc.prepared),
        )
    if kind == "new_view":
        nv = pb.new_view
        return NewView(
            view=nv.view,
            view_changes=tuple(signed_from_pb(s, ViewChange) for s in nv.view_changes),
            pre_prepares=tuple(signed_from_pb(s, PrePrepare) for s in nv.pre_prepares),
        )
    raise DecodeError("PbftMessage without a kind")


def signed_to_pb(signed: Signed[Message]) -> vertex_pb2.SignedMessage:
    return vertex_pb2.SignedMessage(
        body=signed.body, signature=signed.signature, signer=signed.signer
    )


def signed_from_pb(pb: vertex_pb2.SignedMessage, expected: type[M]) -> Signed[M]:
    """A nested signed message whose body must be of kind ``expected``."""
    msg = decode_body(pb.body, expected)
    if not isinstance(msg, expected):
        raise DecodeError(f"expected a signed {expected.__name__}, got {type(msg).__name__}")
    return Signed(body=bytes(pb.body), signature=bytes(pb.signature), signer=pb.signer, msg=msg)


def decode_signed(pb: vertex_pb2.SignedMessage) -> Signed[Message]:
    """A signed message of any kind."""
    return Signed(
        body=bytes(pb.body),
        signature=bytes(pb.signature),
        signer=pb.signer,
        msg=decode_body(pb.body),
    )


def _prepared_to_pb(cert: PreparedCert) -> pbft_pb2.PreparedCertificate:
    return pbft_pb2.PreparedCertificate(
        pre_prepare=signed_to_pb(cert.pre_prepare),
        prepares=[signed_to_pb(p) for p in cert.prepares],
    )


def _prepared_from_pb(pb: pbft_pb2.PreparedCertificate) -> PreparedCert:
    if not pb.HasField("pre_prepare"):
        raise DecodeError("prepared certificate without a pre-prepare")
    return PreparedCert(
        pre_prepare=signed_from_pb(pb.pre_prepare, PrePrepare),
        prepares=tuple(signed_from_pb(p, Prepare) for p in pb.prepares),
    )


def prepared_to_bytes(cert: PreparedCert) -> bytes:
    return _prepared_to_pb(cert).SerializeToString()


def prepared_from_bytes(data: bytes) -> PreparedCert:
    try:
        return _prepared_from_pb(pbft_pb2.PreparedCertificate.FromString(data))
    except _ProtobufDecodeError as exc:
        raise DecodeError(f"not a PreparedCertificate: {exc}") from None


# --- finality certificates ---------------------------------------------------------


def certificate_to_pb(cert: Certificate) -> vertex_pb2.FinalityCertificate:
    return vertex_pb2.FinalityCertificate(
        view=cert.view,
        seq=cert.seq,
        batch_digest=cert.digest,
        commits=[signed_to_pb(c) for c in cert.commits],
    )


def certificate_from_pb(pb: vertex_pb2.FinalityCertificate) -> Certificate:
    return Certificate(
        view=pb.view,
        seq=pb.seq,
        digest=_digest(pb.batch_digest, "batch digest"),
        commits=tuple(signed_from_pb(c, Commit) for c in pb.commits),
    )


# --- envelopes ---------------------------------------------------------------------


def _requests(bodies: Iterable[bytes], request_hash: RequestHasher) -> tuple[Request, ...]:
    out = []
    for body in bodies:
        try:
            digest = request_hash(body)
        except ValueError as exc:
            raise DecodeError(f"not a request: {exc}") from None
        out.append(Request(hash=digest, body=bytes(body)))
    return tuple(out)


def envelope_to_pb(env: Envelope) -> pbft_pb2.ConsensusEnvelope:
    if isinstance(env, SignedEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            signed=signed_to_pb(env.signed), request_bodies=[r.body for r in env.requests]
        )
    if isinstance(env, RequestsEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            requests=pbft_pb2.Requests(bodies=[r.body for r in env.requests])
        )
    if isinstance(env, BatchEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            batch=pbft_pb2.BatchBodies(bodies=[r.body for r in env.requests])
        )
    if isinstance(env, EvidenceEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            evidence=pbft_pb2.Evidence(
                first=signed_to_pb(env.first), second=signed_to_pb(env.second)
            )
        )
    if isinstance(env, StatusEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            status=pbft_pb2.Status(
                view=env.view,
                active=env.active,
                last_executed=env.last_executed,
                stable_seq=env.stable_seq,
            )
        )
    if isinstance(env, CheckpointProofEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            checkpoint_proof=pbft_pb2.CheckpointProof(
                checkpoints=[signed_to_pb(c) for c in env.checkpoints]
            )
        )
    if isinstance(env, StateRequestEnvelope):
        return pbft_pb2.ConsensusEnvelope(
            state_request=pbft_pb2.StateRequest(from_seq=env.from_seq, to_seq=env.to_seq)
        )
    return pbft_pb2.ConsensusEnvelope(
        state_response=pbft_pb2.StateResponse(
            batches=[
                pbft_pb2.TransferBatch(
                    request_bodies=[r.body for r in b.requests],
                    certificate=certificate_to_pb(b.certificate),
                )
                for b in env.batches
            ]
        )
    )


def encode_envelope(env: Envelope, *, tail: bytes = b"") -> bytes:
    """The bytes of a ``ConsensusEnvelope`` to hand to the transport; ``tail``: encoded
    fields that follow the envelope's own (a member's claim), in the same concatenation.

    An envelope of request bodies (a PRE-PREPARE's, forwarded requests, a batch's) is
    written by concatenation, the bodies copied once, byte for byte what serializing its
    message gives (a message copies them in and its serialization out again: two more
    copies of a 2-MiB PRE-PREPARE, into buffers glibc may fault in anew each time)."""
    if isinstance(env, SignedEnvelope):
        head = length_delimited(_SIGNED, signed_to_pb(env.signed).SerializeToString())
        return b"".join((head, *_bodies(_REQUEST_BODIES, env.requests), tail))
    if isinstance(env, RequestsEnvelope | BatchEnvelope):
        inner = _bodies(_BODIES, env.requests)
        kind = _REQUESTS if isinstance(env, RequestsEnvelope) else _BATCH
        return b"".join((tag(kind), varint(sum(map(len, inner))), *inner, tail))
    return envelope_to_pb(env).SerializeToString() + tail


#: ConsensusEnvelope's ``signed``, ``requests``, ``batch`` and ``request_bodies``, and the
#: ``bodies`` of Requests and BatchBodies (cretoai/v1/pbft.proto).
_SIGNED, _REQUESTS, _BATCH, _REQUEST_BODIES, _BODIES = 1, 2, 3, 9, 1


def _bodies(field: int, requests: tuple[Request, ...]) -> list[bytes]:
    """Each request's body as field ``field``: key, length, bytes."""
    key = tag(field)
    parts: list[bytes] = []
    for r in requests:
        parts += (key, varint(len(r.body)), r.body)
    return parts


def decode_envelope(data: bytes, *, request_hash: RequestHasher) -> Envelope:
    """The envelope in ``data``; request hashes are computed with ``request_hash``."""
    try:
        pb = pbft_pb2.ConsensusEnvelope.FromString(data)
    except _ProtobufDecodeError as exc:
        raise DecodeError(f"not a ConsensusEnvelope: {exc}") from None
    return envelope_from_pb(pb, request_hash=request_hash)


def envelope_from_pb(pb: pbft_pb2.ConsensusEnvelope, *, request_hash: RequestHasher) -> Envelope:
    kind = pb.WhichOneof("kind")
    if kind != "signed" and pb.request_bodies:
        raise DecodeError("request bodies travel only beside a signed PRE-PREPARE")
    if kind == "signed":
        signed = decode_signed(pb.signed)
        if pb.request_bodies and not isinstance(signed.msg, PrePrepare):
            raise DecodeError("request bodies travel only beside a signed PRE-PREPARE")
        return SignedEnvelope(signed=signed, requests=_requests(pb.request_bodies, request_hash))
    if kind == "requests":
        return RequestsEnvelope(requests=_requests(pb.requests.bodies, request_hash))
    if kind == "batch":
        return BatchEnvelope(requests=_requests(pb.batch.bodies, request_hash))
    if kind == "evidence":
        ev = pb.evidence
        if not (ev.HasField("first") and ev.HasField("second")):
            raise DecodeError("evidence needs two signed messages")
        return EvidenceEnvelope(first=decode_signed(ev.first), second=decode_signed(ev.second))
    if kind == "status":
        st = pb.status
        return StatusEnvelope(
            view=st.view, active=st.active, last_executed=st.last_executed, stable_seq=st.stable_seq
        )
    if kind == "checkpoint_proof":
        return CheckpointProofEnvelope(
            checkpoints=tuple(
                signed_from_pb(c, Checkpoint) for c in pb.checkpoint_proof.checkpoints
            )
        )
    if kind == "state_request":
        sr = pb.state_request
        return StateRequestEnvelope(from_seq=sr.from_seq, to_seq=sr.to_seq)
    if kind == "state_response":
        batches = []
        for b in pb.state_response.batches:
            if not b.HasField("certificate"):
                raise DecodeError("transferred batch without a certificate")
            batches.append(
                TransferBatch(
                    requests=_requests(b.request_bodies, request_hash),
                    certificate=certificate_from_pb(b.certificate),
                )
            )
        return StateResponseEnvelope(batches=tuple(batches))
    raise DecodeError("ConsensusEnvelope without a kind")
