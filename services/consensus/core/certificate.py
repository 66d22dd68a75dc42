"""Finality certificates: verification that needs only the validator set.

A client holding the ordered list of validator public keys (replica index =
position) checks that a batch is final without trusting the node it asked::

    from services.consensus.core import verify_certificate
    cert = verify_certificate(record.certificate, validator_public_keys)  # raises if not
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cretoai.v1 import vertex_pb2
from services.consensus.core import quorum
from services.consensus.core.codec import DecodeError, certificate_from_pb
from services.consensus.core.crypto import MlDsaVerifier, Verifier
from services.consensus.core.messages import Certificate, Message, Signed
from services.consensus.core.proofs import ProofError, check_commits

if TYPE_CHECKING:
    from cretoai.crypto.backend import Backend


class InvalidCertificate(ValueError):
    """A finality certificate that does not prove its batch final."""


def check_certificate(
    cert: vertex_pb2.FinalityCertificate | Certificate, *, n: int, verifier: Verifier
) -> Certificate:
    """Check ``cert`` against a validator set of ``n`` replicas and any signature scheme."""
    try:
        decoded = cert if isinstance(cert, Certificate) else certificate_from_pb(cert)
    except DecodeError as exc:
        raise InvalidCertificate(f"malformed certificate: {exc}") from None

    def signature_ok(signed: Signed[Message]) -> bool:
        return 0 <= signed.signer < n and verifier.verify(
            signed.signer, signed.body, signed.signature
        )

    try:
        check_commits(decoded, q=quorum.quorum_size(n), signature_ok=signature_ok)
    except ProofError as exc:
        raise InvalidCertificate(str(exc)) from None
    return decoded


def verify_certificate(
    cert: vertex_pb2.FinalityCertificate,
    validator_public_keys: Sequence[bytes],
    *,
    backend: Backend | None = None,
) -> Certificate:
    """Check an ML-DSA-87 finality certificate; return it decoded or raise InvalidCertificate.

    ``backend`` defaults to ``cretoai.crypto.get_backend("auto")``.
    """
    if backend is None:
        from cretoai.crypto.backend import get_backend

        backend = get_backend("auto")
    verifier = MlDsaVerifier(validator_public_keys, backend)
    return check_certificate(cert, n=len(validator_public_keys), verifier=verifier)
