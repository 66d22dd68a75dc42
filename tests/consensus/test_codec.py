"""Wire format: every message round-trips through cretoai.v1.pbft_pb2; garbage is a DecodeError."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cretoai.v1 import pbft_pb2, vertex_pb2
from services.consensus.core import codec
from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    BatchEnvelope,
    Certificate,
    Checkpoint,
    CheckpointProofEnvelope,
    Commit,
    EvidenceEnvelope,
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
from services.consensus.sim.crypto import fast_request_hash

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=2**20)
digest32 = st.binary(min_size=32, max_size=32)
signer = st.integers(min_value=0, max_value=2**32 - 1)
bodies = st.lists(st.binary(max_size=64), max_size=4)


def signed(msg_strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        lambda m, sig, who: Signed(body=codec.encode_body(m), signature=sig, signer=who, msg=m),
        msg_strategy,
        st.binary(max_size=48),
        signer,
    )


pre_prepares = st.lists(digest32, max_size=4).flatmap(
    lambda hs: st.builds(
        PrePrepare,
        view=u64,
        seq=u64,
        digest=st.just(batch_digest(hs)),
        request_hashes=st.just(tuple(hs)),
    )
)
prepares = st.builds(Prepare, view=u64, seq=u64, digest=digest32)
commits = st.builds(Commit, view=u64, seq=u64, digest=digest32)
checkpoints = st.builds(Checkpoint, seq=u64, state_digest=digest32)
prepared_certs = st.builds(
    PreparedCert,
    pre_prepare=signed(pre_prepares),
    prepares=st.lists(signed(prepares), max_size=3).map(tuple),
)
view_changes = st.builds(
    ViewChange,
    new_view=u64,
    stable_seq=u64,
    checkpoint_proof=st.lists(signed(checkpoints), max_size=3).map(tuple),
    prepared=st.lists(prepared_certs, max_size=2).map(tuple),
)
new_views = st.builds(
    NewView,
    view=u64,
    view_changes=st.lists(signed(view_changes), max_size=2).map(tuple),
    pre_prepares=st.lists(signed(pre_prepares), max_size=2).map(tuple),
)
messages = st.one_of(pre_prepares, prepares, commits, checkpoints, view_changes, new_views)


def requests_of(raw: list[bytes]) -> tuple[Request, ...]:
    return tuple(Request(hash=fast_request_hash(b), body=b) for b in raw)


certificates = st.builds(
    Certificate,
    view=u64,
    seq=u64,
    digest=digest32,
    commits=st.lists(signed(commits), max_size=3).map(tuple),
)
envelopes = st.one_of(
    st.builds(SignedEnvelope, signed=signed(st.one_of(prepares, commits, view_changes, new_views))),
    st.builds(SignedEnvelope, signed=signed(pre_prepares), requests=bodies.map(requests_of)),
    st.builds(RequestsEnvelope, requests=bodies.map(requests_of)),
    st.builds(BatchEnvelope, requests=bodies.map(requests_of)),
    st.builds(EvidenceEnvelope, first=signed(messages), second=signed(messages)),
    st.builds(StatusEnvelope, view=u64, active=st.booleans(), last_executed=u64, stable_seq=u64),
    st.builds(CheckpointProofEnvelope, checkpoints=st.lists(signed(checkpoints)).map(tuple)),
    st.builds(StateRequestEnvelope, from_seq=u64, to_seq=u64),
    st.builds(
        StateResponseEnvelope,
        batches=st.lists(
            st.builds(TransferBatch, requests=bodies.map(requests_of), certificate=certificates),
            max_size=2,
        ).map(tuple),
    ),
)


@settings(max_examples=100, deadline=None)
@given(messages)
def test_signed_body_round_trips(msg) -> None:
    body = codec.encode_body(msg)
    assert codec.decode_body(body) == msg
    # Signatures cover these exact bytes; re-encoding gives the same bytes.
    assert codec.encode_body(codec.decode_body(body)) == body


@settings(max_examples=100, deadline=None)
@given(envelopes)
def test_envelope_round_trips(env) -> None:
    data = codec.encode_envelope(env)
    assert codec.decode_envelope(data, request_hash=fast_request_hash) == env


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_an_envelope_written_by_hand_is_what_protobuf_serializes(env) -> None:
    """Envelopes of bodies are concatenated (codec.encode_envelope): byte for byte what
    their message serializes to."""
    assert codec.encode_envelope(env) == codec.envelope_to_pb(env).SerializeToString()


@settings(max_examples=100, deadline=None)
@given(certificates)
def test_certificate_round_trips_through_the_shared_proto(cert) -> None:
    pb = codec.certificate_to_pb(cert)
    assert isinstance(pb, vertex_pb2.FinalityCertificate)
    again = vertex_pb2.FinalityCertificate.FromString(pb.SerializeToString())
    assert codec.certificate_from_pb(again) == cert


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_decode_error_or_a_valid_envelope(data: bytes) -> None:
    try:
        env = codec.decode_envelope(data, request_hash=fast_request_hash)
    except codec.DecodeError:
        return
    assert codec.decode_envelope(codec.encode_envelope(env), request_hash=fast_request_hash) == env


def test_truncated_and_trailing_garbage_never_crash() -> None:
    pp = PrePrepare(view=1, seq=2, digest=batch_digest(()), request_hashes=())
    env = SignedEnvelope(Signed(codec.encode_body(pp), b"sig", 1, pp))
    data = codec.encode_envelope(env)
    for cut in range(len(data)):
        with contextlib.suppress(codec.DecodeError):
            codec.decode_envelope(data[:cut], request_hash=fast_request_hash)
    with pytest.raises(codec.DecodeError):
        codec.decode_envelope(data + b"\xff", request_hash=fast_request_hash)


def signed_pb(body: bytes) -> vertex_pb2.SignedMessage:
    return vertex_pb2.SignedMessage(body=body, signature=b"s", signer=0)


@pytest.mark.parametrize(
    "envelope",
    [
        pbft_pb2.ConsensusEnvelope(),
        pbft_pb2.ConsensusEnvelope(signed=signed_pb(b"")),
        pbft_pb2.ConsensusEnvelope(signed=signed_pb(b"\x08")),
        pbft_pb2.ConsensusEnvelope(
            signed=signed_pb(
                pbft_pb2.PbftMessage(
                    prepare=pbft_pb2.Prepare(batch_digest=b"short")
                ).SerializeToString()
            )
        ),
        pbft_pb2.ConsensusEnvelope(status=pbft_pb2.Status(), request_bodies=[b"x"]),
        pbft_pb2.ConsensusEnvelope(
            signed=signed_pb(
                pbft_pb2.PbftMessage(
                    commit=pbft_pb2.Commit(batch_digest=bytes(32))
                ).SerializeToString()
            ),
            request_bodies=[b"bodies only go with a PRE-PREPARE"],
        ),
        pbft_pb2.ConsensusEnvelope(
            checkpoint_proof=pbft_pb2.CheckpointProof(
                checkpoints=[
                    signed_pb(
                        pbft_pb2.PbftMessage(
                            commit=pbft_pb2.Commit(batch_digest=bytes(32))
                        ).SerializeToString()
                    )
                ]
            )
        ),
        pbft_pb2.ConsensusEnvelope(evidence=pbft_pb2.Evidence(first=signed_pb(b""))),
        pbft_pb2.ConsensusEnvelope(
            state_response=pbft_pb2.StateResponse(batches=[pbft_pb2.TransferBatch()])
        ),
    ],
    ids=[
        "no-kind",
        "empty-body",
        "bad-body",
        "short-digest",
        "bodies-beside-status",
        "bodies-beside-commit",
        "proof-of-commits",
        "half-evidence",
        "batch-without-certificate",
    ],
)
def test_malformed_envelopes_are_rejected(envelope: pbft_pb2.ConsensusEnvelope) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode_envelope(envelope.SerializeToString(), request_hash=fast_request_hash)


def test_request_hash_failure_is_a_decode_error() -> None:
    def strict(body: bytes) -> bytes:
        raise ValueError("not a vertex")

    data = codec.encode_envelope(RequestsEnvelope(requests_of([b"x"])))
    with pytest.raises(codec.DecodeError, match="not a request"):
        codec.decode_envelope(data, request_hash=strict)


def test_request_hashes_are_recomputed_on_decode() -> None:
    """A peer cannot pair a body with another hash: the receiver computes it."""
    liar = Request(hash=bytes(32), body=b"payload")
    data = codec.encode_envelope(RequestsEnvelope((liar,)))
    decoded = codec.decode_envelope(data, request_hash=fast_request_hash)
    assert isinstance(decoded, RequestsEnvelope)
    assert decoded.requests[0].hash == fast_request_hash(b"payload")


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def _padded(body: bytes, size: int = 1000) -> bytes:
    """``body`` with an unknown length-delimited field (number 1000) of ``size`` bytes."""
    return body + _varint(1000 << 3 | 2) + _varint(size) + b"\x00" * size


@settings(max_examples=60, deadline=None)
@given(messages)
def test_a_signed_body_must_be_its_canonical_encoding(msg) -> None:
    """A signer padding its own messages (unknown fields, a field repeated) must not get
    them copied into certificates, VIEW-CHANGEs and NEW-VIEWs that honest replicas send:
    megabytes of padding made those larger than a transport frame (an audit found one
    padded VIEW-CHANGE blocked every later view change, and padded COMMITs state transfer)."""
    body = codec.encode_body(msg)
    with pytest.raises(codec.DecodeError, match="not its canonical encoding"):
        codec.decode_body(_padded(body))
    pb = pbft_pb2.PbftMessage.FromString(body)
    kind = pb.WhichOneof("kind")
    inner = getattr(pb, kind)
    repeated = pbft_pb2.PbftMessage()
    getattr(repeated, kind).CopyFrom(inner)
    twice = body + repeated.SerializeToString()  # the same message, its fields given twice
    if twice != body:
        with pytest.raises(codec.DecodeError):
            codec.decode_body(twice)


def test_padding_nested_in_a_view_change_is_refused() -> None:
    commit = Commit(view=0, seq=1, digest=b"\x01" * 32)
    pp = PrePrepare(view=0, seq=1, digest=batch_digest(()), request_hashes=())
    padded_pp = Signed(_padded(codec.encode_body(pp)), b"s", 0, pp)
    vc = ViewChange(
        new_view=1,
        stable_seq=0,
        checkpoint_proof=(),
        prepared=(PreparedCert(pre_prepare=padded_pp, prepares=()),),
    )
    with pytest.raises(codec.DecodeError, match="PrePrepare that is not its canonical"):
        codec.decode_body(codec.encode_body(vc))
    with pytest.raises(codec.DecodeError, match="Commit that is not its canonical"):
        codec.decode_signed(vertex_pb2.SignedMessage(body=_padded(codec.encode_body(commit))))


@pytest.mark.parametrize(("n", "window", "hashes"), [(4, 8, 256), (7, 4, 64), (1, 4, 1)])
def test_the_new_view_bound_holds_a_worst_case_new_view(n: int, window: int, hashes: int) -> None:
    """cretoai.config.new_view_bytes_bound, which bounds the watermark window by the
    transport frame, against a real worst case: every seq of the window prepared, full
    PRE-PREPAREs, ML-DSA-87-sized signatures, q VIEW-CHANGEs."""
    from cretoai.config import new_view_bytes_bound
    from cretoai.crypto.backend import SIGNATURE_SIZE

    q = 2 * ((n - 1) // 3) + 1
    big = 2**63  # varints at their longest

    def sign(msg: Any, signer: int = 2**31) -> Signed[Any]:
        return Signed(codec.encode_body(msg), b"\xab" * SIGNATURE_SIZE, signer, msg)

    def pre_prepare(seq: int) -> PrePrepare:
        hs = tuple(bytes([seq % 256, i % 256]) * 16 for i in range(hashes))
        return PrePrepare(view=big, seq=big + seq, digest=batch_digest(hs), request_hashes=hs)

    def certificate(seq: int) -> PreparedCert:
        pp = pre_prepare(seq)
        votes = tuple(
            sign(Prepare(view=big, seq=big + seq, digest=pp.digest)) for _ in range(q - 1)
        )
        return PreparedCert(pre_prepare=sign(pp), prepares=votes)

    proof = tuple(sign(Checkpoint(seq=big, state_digest=b"\x05" * 32)) for _ in range(q))
    vc = ViewChange(
        new_view=big,
        stable_seq=big,
        checkpoint_proof=proof,
        prepared=tuple(certificate(s) for s in range(window)),
    )
    nv = NewView(
        view=big,
        view_changes=tuple(sign(vc) for _ in range(q)),
        pre_prepares=tuple(sign(pre_prepare(s)) for s in range(window)),
    )
    actual = len(codec.encode_envelope(SignedEnvelope(sign(nv))))
    bound = new_view_bytes_bound(n, window, hashes)
    assert actual <= bound <= actual * 1.05 + 2048  # a bound, and not a loose one
