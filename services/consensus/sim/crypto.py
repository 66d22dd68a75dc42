"""Signature schemes for the simulator, behind the core's Signer/Verifier protocols.

``FastScheme`` is a stand-in: keyed BLAKE2b per replica (a MAC, so the
verifier holds every key; only the simulator sees them, and a Byzantine
replica is only ever given its own). ``MlDsaScheme`` is the real ML-DSA-87.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from services.consensus.core.crypto import MlDsaSigner, MlDsaVerifier, Signer, Verifier


def _mac(key: bytes, message: bytes, size: int) -> bytes:
    """Keyed BLAKE2b of ``message``, padded to ``size`` bytes (a signature's size)."""
    return hashlib.blake2b(message, key=key, digest_size=32).digest().ljust(size, b"\1")


class FastSigner:
    def __init__(self, key: bytes, signature_size: int = 32) -> None:
        self._key, self._size = key, signature_size

    def sign(self, message: bytes) -> bytes:
        return _mac(self._key, message, self._size)


class FastVerifier:
    def __init__(self, keys: Sequence[bytes], signature_size: int = 32) -> None:
        self._keys, self._size = tuple(keys), signature_size

    def verify(self, signer: int, message: bytes, signature: bytes) -> bool:
        if not 0 <= signer < len(self._keys):
            return False
        return hmac.compare_digest(_mac(self._keys[signer], message, self._size), signature)


class Scheme:
    """Keys for a validator set of ``n``: a signer per replica and one verifier."""

    name = "abstract"

    def __init__(self, signers: Sequence[Signer], verifier: Verifier) -> None:
        self._signers = tuple(signers)
        self.verifier = verifier

    def signer(self, replica: int) -> Signer:
        return self._signers[replica]


class FastScheme(Scheme):
    """``signature_size``: signatures padded to that many bytes (ML-DSA-87's 4627, to test
    what message sizes do), 32 by default."""

    name = "fast"

    def __init__(self, n: int, seed: int, signature_size: int = 32) -> None:
        keys = [hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=32).digest() for i in range(n)]
        super().__init__(
            [FastSigner(k, signature_size) for k in keys], FastVerifier(keys, signature_size)
        )


class MlDsaScheme(Scheme):
    """Real ML-DSA-87 (``cryptography`` backend) with keys derived from the seed."""

    name = "ml-dsa-87"

    def __init__(self, n: int, seed: int) -> None:
        from cretoai.crypto import get_backend

        backend = get_backend("cryptography")
        keys = [
            backend.private_key_from_seed(hashlib.sha3_256(f"{seed}/{i}".encode()).digest())
            for i in range(n)
        ]
        self.public_keys = tuple(k.public_key for k in keys)
        super().__init__([MlDsaSigner(k) for k in keys], MlDsaVerifier(self.public_keys, backend))


def fast_request_hash(body: bytes) -> bytes:
    """The simulator's request hash (vertices are SHA3-256 of their canonical encoding)."""
    return hashlib.sha3_256(body).digest()
