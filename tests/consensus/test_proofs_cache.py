"""The cache of verified PBFT signatures (services/consensus/core/proofs.py): a message
verified once is not verified again, another signature or signer of the same body is,
and the cache holds digests, not the 4.6-KB ML-DSA-87 signatures themselves."""

from __future__ import annotations

import os
import tracemalloc

from services.consensus.core.messages import Commit, Signed
from services.consensus.core.proofs import Proofs

SIGNATURE_SIZE = 4627  # ML-DSA-87


class CountingVerifier:
    def __init__(self) -> None:
        self.calls = 0

    def verify(self, signer: int, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        return signature[:1] != b"\x00"


def _proofs(verifier: CountingVerifier) -> Proofs:
    return Proofs(n=4, q=3, verifier=verifier, checkpoint_interval=10, window=20)


def _commit(seq: int, signer: int = 1, signature: bytes | None = None) -> Signed[Commit]:
    msg = Commit(view=0, seq=seq, digest=bytes(32))
    body = b"commit %d" % seq
    sig = signature if signature is not None else b"\x01" + os.urandom(SIGNATURE_SIZE - 1)
    return Signed(body=body, signature=sig, signer=signer, msg=msg)


def test_a_verified_signature_is_not_verified_again_but_another_copy_is() -> None:
    verifier = CountingVerifier()
    proofs = _proofs(verifier)
    signed = _commit(1)
    assert proofs.signature_ok(signed) and proofs.signature_ok(signed)
    assert verifier.calls == 1
    # the same body under another signature, or by another signer: checked on its own
    other = _commit(1, signature=b"\x00" + signed.signature[1:])
    assert not proofs.signature_ok(other)
    assert proofs.signature_ok(_commit(1, signer=2, signature=signed.signature))
    assert verifier.calls == 3
    # what the driver verified before the replica saw it is remembered too
    seen = _commit(2)
    proofs.remember(seen)
    assert proofs.signature_ok(seen) and verifier.calls == 3


def test_the_cache_does_not_hold_the_signatures() -> None:
    """A full cache held 8192 signatures of 4.6 KB, ~40 MB per consensus process (its
    RSS rose for minutes under ordinary load); digests are 32 bytes."""
    proofs = _proofs(CountingVerifier())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for seq in range(Proofs._CACHE_MAX - 1):
            proofs.remember(_commit(seq))  # the message itself is dropped at once
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(proofs._verified) == Proofs._CACHE_MAX - 1
    assert held - before < 2_000_000, f"{(held - before) / 1e6:.1f} MB held"
