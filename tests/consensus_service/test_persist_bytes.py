"""Consensus's durable records written by concatenation: the same bytes, or the same
request, as the protobuf messages they replaced."""

from __future__ import annotations

import os

from cretoai.v1 import pbft_pb2, storage_pb2
from services.consensus.core.codec import encode_body, envelope_to_pb
from services.consensus.core.crypto import batch_digest
from services.consensus.core.durable import encode_batch
from services.consensus.core.messages import (
    PrePrepare,
    Request,
    RequestsEnvelope,
    Signed,
    SignedEnvelope,
)
from services.consensus.core.ready import Record
from services.consensus.driver import _encode, persist_writes


def test_a_voted_batch_is_what_protobuf_writes_byte_for_byte() -> None:
    for requests in (
        (),
        (Request(hash=os.urandom(32), body=b""),),
        tuple(Request(hash=os.urandom(32), body=os.urandom(n)) for n in (1, 127, 128, 9000)),
    ):
        expected = pbft_pb2.VotedBatch(
            request_hashes=[r.hash for r in requests], request_bodies=[r.body for r in requests]
        ).SerializeToString()
        assert encode_batch(requests) == expected


def test_a_write_state_request_holds_the_records_puts_and_deletes() -> None:
    records = [
        Record("batch/a", os.urandom(300_000)),
        Record("view", b""),  # an empty value is a put, not a delete
        Record("batch/old", None),
        Record("own/prepare/" + "9" * 20, b"p"),
        Record("stable", None),
    ]
    (encoded,) = persist_writes(records)
    request = storage_pb2.WriteStateRequest.FromString(encoded)
    assert request == storage_pb2.WriteStateRequest(
        puts=[
            storage_pb2.StateEntry(key=r.key.encode(), value=r.value)
            for r in records
            if r.value is not None
        ],
        deletes=[b"batch/old", b"stable"],
    )
    assert [e.key for e in request.puts] == [b"batch/a", b"view", b"own/prepare/" + b"9" * 20]
    assert persist_writes([]) == []


def test_a_claim_goes_after_the_envelope_as_its_message_puts_it() -> None:
    bodies = [os.urandom(n) for n in (10, 3000)]
    env = RequestsEnvelope(tuple(Request(hash=os.urandom(32), body=b) for b in bodies))
    vouch = pbft_pb2.Vouch(copies=[os.urandom(32)], signer=2, signature=b"s" * 20)
    pb = envelope_to_pb(env)
    pb.vouch.CopyFrom(vouch)
    assert _encode(env, vouch) == pb.SerializeToString()
    assert _encode(env) == envelope_to_pb(env).SerializeToString()


def test_a_claim_beside_a_pre_prepare_goes_where_its_message_puts_it() -> None:
    requests = tuple(Request(hash=os.urandom(32), body=os.urandom(500)) for _ in range(3))
    pp = PrePrepare(
        view=1, seq=2, digest=batch_digest(tuple(r.hash for r in requests)),
        request_hashes=tuple(r.hash for r in requests),
    )  # fmt: skip
    env = SignedEnvelope(Signed(encode_body(pp), b"sig", 1, pp), requests=requests)
    vouch = pbft_pb2.Vouch(copies=[r.hash for r in requests], signer=0, signature=b"v" * 20)
    pb = envelope_to_pb(env)
    pb.vouch.CopyFrom(vouch)
    assert _encode(env, vouch) == pb.SerializeToString()
