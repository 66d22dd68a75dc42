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
from services.consensus.core.crypto import MlDsaVerifier, Verifier, batch_digest
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


def verify_inclusion(
    vertex: vertex_pb2.Vertex,
    batch: vertex_pb2.FinalizedBatch,
    validator_public_keys: Sequence[bytes],
    *,
    backend: Backend | None = None,
) -> int:
    """Check that ``vertex`` was ordered in ``batch`` and that the batch is final;
    return its index in the batch, or raise InvalidCertificate.

    A vertex record's certificate alone proves only that *a* batch at its seq was
    final, not that the vertex is in it: any record could carry another batch's
    genuine certificate (an audit, 2026-12-04). Checked here, from the validator set
    alone: the certificate verifies and is for the batch's seq and digest, the digest
    is over the signed digests of the batch's vertices in order (so the batch is
    complete and unaltered), and one of them is ``vertex``'s. Whether execution
    finalized or rejected it (``batch.rejected``) is not in the certificate: it follows
    from the log, which the state digest chain commits to (checkpoints sign it).
    """
    from cretoai.vertex import signed_digest

    cert = verify_certificate(batch.certificate, validator_public_keys, backend=backend)
    if cert.seq != batch.seq or cert.digest != batch.batch_digest:
        raise InvalidCertificate(
            f"the certificate is for seq {cert.seq}, digest {cert.digest.hex()[:16]}…, "
            f"not for this batch (seq {batch.seq}, digest {batch.batch_digest.hex()[:16]}…)"
        )
    digests = [signed_digest(v) for v in batch.vertices]
    if batch_digest(digests) != batch.batch_digest:
        raise InvalidCertificate("the batch's vertices do not hash to its batch digest")
    mine = signed_digest(vertex)
    if mine not in digests:
        raise InvalidCertificate(f"this vertex is not in the batch at seq {batch.seq}")
    return digests.index(mine)
