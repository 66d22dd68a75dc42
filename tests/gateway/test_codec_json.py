"""The gateway's JSON writer (orjson, with the standard library as the fallback), and its
records' encoding."""

from __future__ import annotations

import json
import os
from typing import Any

from cretoai.v1 import vertex_pb2
from services.gateway.codec import dumps, dumps_bytes, record_json


def _record(seq: int) -> dict[str, object]:
    return {
        "hash": os.urandom(32).hex(),
        "status": "finalized",
        "seq": seq,
        "height": None,
        "ready": True,
        "rtt_ms": 0.25,
        "big": 2**64 - 1,
        "vertex": {"payload": os.urandom(64).hex(), "parents": [os.urandom(32).hex()]},
        "certificate": {"view": 0, "commits": [os.urandom(100).hex()]},
    }


def test_an_ascii_document_is_written_byte_for_byte_as_the_standard_library_does() -> None:
    data = {"results": [_record(i) for i in range(8)], "rejected": []}
    assert dumps_bytes(data) == json.dumps(data, separators=(",", ":")).encode()
    assert dumps(data) == json.dumps(data, separators=(",", ":"))


def test_non_ascii_text_is_utf8_and_reads_back_the_same() -> None:
    data = {"message": "vertex café ✓ 𝄞", "n": [1, 2.5, None, True]}
    out = dumps_bytes(data)
    out.decode("utf-8")  # valid UTF-8
    assert json.loads(out) == data


def test_a_lone_surrogate_is_escaped_not_an_error() -> None:
    # json.loads accepts "\ud800" from a client; orjson refuses to write it
    data = {"message": json.loads('"field \\ud800"')}
    out = dumps_bytes(data)
    assert out == b'{"message":"field \\ud800"}'
    assert json.loads(out) == data


def test_a_batch_answer_encodes_a_shared_certificate_once_and_keeps_each_records_own() -> None:
    """The vertices of one PBFT batch share a certificate, encoded once per answer; a
    record of another batch (or another quorum's certificate for it) keeps its own."""

    def certificate(seq: int, signers: tuple[int, ...]) -> vertex_pb2.FinalityCertificate:
        cert = vertex_pb2.FinalityCertificate(view=0, seq=seq, batch_digest=bytes([seq]) * 32)
        for signer in signers:
            cert.commits.add(signer=signer, body=b"b%d" % signer, signature=bytes([signer]) * 64)
        return cert

    certs = [certificate(1, (0, 1, 2)), certificate(1, (0, 1, 2)), certificate(1, (1, 2, 3))]
    certs.append(certificate(2, (0, 1, 2)))
    records = [
        vertex_pb2.VertexRecord(
            hash=bytes([i]) * 32,
            vertex=vertex_pb2.Vertex(payload=b"p%d" % i, creator=b"k", signature=b"s"),
            status=vertex_pb2.VERTEX_STATUS_FINALIZED,
            seq=cert.seq,
            certificate=cert,
        )
        for i, cert in enumerate(certs)
    ]
    shared: dict[bytes, Any] = {}
    answers = [record_json(record, shared) for record in records]
    assert answers == [record_json(record) for record in records]
    assert answers[0]["certificate"] is answers[1]["certificate"]  # encoded once
    assert len(shared) == 3
    assert [a["certificate"]["commits"][0]["signer"] for a in answers] == [0, 0, 1, 0]
    assert [a["certificate"]["seq"] for a in answers] == [1, 1, 1, 2]
