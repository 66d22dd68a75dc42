"""Finality certificates: q signed COMMITs, verifiable with the validator set alone (ML-DSA-87)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cretoai.crypto import get_backend
from services.consensus.core import (
    InvalidCertificate,
    certificate_to_pb,
    codec,
    verify_certificate,
)
from services.consensus.core.messages import Commit, Signed
from services.consensus.sim.crypto import MlDsaScheme
from tests.consensus.harness import Cluster, request


@pytest.fixture(scope="module")
def finalized():
    scheme = MlDsaScheme(4, seed=7)
    c = Cluster(4, scheme=scheme)
    c.propose(1, request("final"))
    c.tick(3)
    committed = c.log(3)[0]
    return scheme, committed


def test_a_real_certificate_verifies_with_the_validator_set_alone(finalized) -> None:
    scheme, committed = finalized
    pb = certificate_to_pb(committed.certificate)
    cert = verify_certificate(pb, scheme.public_keys, backend=get_backend("cryptography"))
    assert (cert.seq, cert.digest) == (committed.seq, committed.digest)
    assert len(cert.commits) == 3
    # The default backend works too.
    verify_certificate(pb, scheme.public_keys)


def test_tampered_certificates_are_rejected(finalized) -> None:
    scheme, committed = finalized
    cert = committed.certificate
    first = cert.commits[0]
    flipped = bytearray(first.signature)
    flipped[10] ^= 1
    other = Commit(view=cert.view, seq=cert.seq + 1, digest=cert.digest)
    body = codec.encode_body(other)
    elsewhere = Signed(
        body=body,
        signature=scheme.signer(first.signer).sign(body),
        signer=first.signer,
        msg=other,
    )
    cases = {
        "too few": replace(cert, commits=cert.commits[:2]),
        "same signer twice": replace(cert, commits=(first, first, cert.commits[1])),
        "bad signature": replace(
            cert, commits=(replace(first, signature=bytes(flipped)), *cert.commits[1:])
        ),
        "another seq": replace(cert, seq=cert.seq + 1),
        "a commit for another seq": replace(cert, commits=(elsewhere, *cert.commits[1:])),
        "non-member": replace(cert, commits=(replace(first, signer=7), *cert.commits[1:])),
        "impostor": replace(cert, commits=(replace(first, signer=0), *cert.commits[1:]))
        if first.signer != 0
        else replace(cert, commits=(replace(first, signer=1), *cert.commits[1:])),
    }
    for name, bad in cases.items():
        try:
            verify_certificate(certificate_to_pb(bad), scheme.public_keys)
        except InvalidCertificate:
            continue
        pytest.fail(f"accepted a certificate with {name}")


def test_a_certificate_for_another_validator_set_fails(finalized) -> None:
    _, committed = finalized
    other = MlDsaScheme(4, seed=8)
    with pytest.raises(InvalidCertificate):
        verify_certificate(certificate_to_pb(committed.certificate), other.public_keys)


def test_a_malformed_certificate_is_rejected(finalized) -> None:
    scheme, committed = finalized
    pb = certificate_to_pb(committed.certificate)
    pb.batch_digest = b"short"
    with pytest.raises(InvalidCertificate, match="malformed"):
        verify_certificate(pb, scheme.public_keys)
    pb = certificate_to_pb(committed.certificate)
    pb.commits[0].body = b"\xff"
    with pytest.raises(InvalidCertificate):
        verify_certificate(pb, scheme.public_keys)


def test_signed_commits_carry_their_exact_bytes(finalized) -> None:
    _, committed = finalized
    c: Signed[Commit] = committed.certificate.commits[0]
    pb = certificate_to_pb(committed.certificate)
    assert pb.commits[0].body == c.body
