"""Digests, and the injected signing interface (ML-DSA-87 in production).

The core signs and verifies through two tiny protocols so that the simulator
can use a fast stand-in; both are pure functions from the core's point of view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cretoai.crypto.backend import Backend, PrivateKey

#: ML-DSA-87 context string (FIPS 204 §5.2) of every consensus signature.
CONTEXT = b"cretoai.v1.pbft"
_BATCH_DOMAIN = b"cretoai.v1.pbft.batch\x00"
_STATE_DOMAIN = b"cretoai.v1.pbft.state\x00"

#: The state digest before anything executed (sequence number 0).
GENESIS_STATE = hashlib.sha3_256(b"cretoai.v1.pbft.genesis").digest()


def batch_digest(request_hashes: Iterable[bytes]) -> bytes:
    """The digest of a batch: SHA3-256 over its (fixed-size) request hashes in order."""
    return hashlib.sha3_256(_BATCH_DOMAIN + b"".join(request_hashes)).digest()


#: The digest of the null request (the empty batch) that fills gaps after a view change.
NULL_DIGEST = batch_digest(())


def next_state_digest(previous: bytes, seq: int, digest: bytes, outcomes: bytes) -> bytes:
    """The state digest after executing batch ``digest`` at ``seq``: a hash chain.

    ``outcomes`` is what execution decided, one byte per request in batch order
    (:func:`outcome_bytes`). The chain covers the outcomes, not only the order, so
    two replicas that executed the same batches but decided differently about a
    vertex disagree at the next checkpoint instead of diverging silently.
    """
    return hashlib.sha3_256(
        _STATE_DOMAIN
        + previous
        + seq.to_bytes(8, "big")
        + digest
        + len(outcomes).to_bytes(4, "big")
        + outcomes
    ).digest()


def outcome_bytes(rejected: Iterable[bool]) -> bytes:
    """Execution outcomes in batch order: ``0`` finalized, ``1`` rejected."""
    return bytes(1 if r else 0 for r in rejected)


class Signer(Protocol):
    """Signs with this replica's key."""

    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    """Verifies a signature by replica ``signer`` of the validator set."""

    def verify(self, signer: int, message: bytes, signature: bytes) -> bool: ...


class MlDsaSigner:
    """ML-DSA-87 signing with context ``cretoai.v1.pbft``."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, context=CONTEXT)


class MlDsaVerifier:
    """ML-DSA-87 verification against the validator set (replica index = position)."""

    def __init__(self, public_keys: Sequence[bytes], backend: Backend) -> None:
        self._keys = tuple(public_keys)
        self._backend = backend

    def verify(self, signer: int, message: bytes, signature: bytes) -> bool:
        if not 0 <= signer < len(self._keys):
            return False
        return self._backend.verify(self._keys[signer], message, signature, context=CONTEXT)
