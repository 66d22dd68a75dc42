"""ML-DSA-87 (FIPS 204) signatures behind one small interface.

Two backends produce and accept the same signatures:

- ``cryptography`` (OpenSSL) — always available, the default;
- ``oqs`` (liboqs-python) — used when the liboqs shared library loads.

Every signature carries a *context string* (FIPS 204 §5.2) that separates the
domains in which this project signs (vertices, consensus messages, transport
handshakes), so a signature made for one can never be replayed as another.
"""

from __future__ import annotations

from cretoai.crypto.backend import (
    PUBLIC_KEY_SIZE,
    SEED_SIZE,
    SIGNATURE_SIZE,
    Backend,
    BackendUnavailable,
    PrivateKey,
    available_backends,
    get_backend,
)
from cretoai.crypto.keys import (
    KeyFileError,
    NodeKey,
    load_private_key,
    node_id,
    write_keypair,
)

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "Backend",
    "BackendUnavailable",
    "KeyFileError",
    "NodeKey",
    "PrivateKey",
    "available_backends",
    "get_backend",
    "load_private_key",
    "node_id",
    "write_keypair",
]
