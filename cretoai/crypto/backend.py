"""The ML-DSA-87 backends: ``cryptography`` (OpenSSL) and ``oqs`` (liboqs-python)."""

from __future__ import annotations

import functools
from typing import Any, Protocol

PUBLIC_KEY_SIZE = 2592
SIGNATURE_SIZE = 4627
SEED_SIZE = 32
MAX_CONTEXT = 255  # FIPS 204: the context string is at most 255 bytes


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used on this machine."""


class PrivateKey(Protocol):
    """A loaded ML-DSA-87 private key of one backend."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes, *, context: bytes) -> bytes: ...


class Backend(Protocol):
    name: str

    def private_key_from_seed(self, seed: bytes) -> PrivateKey: ...

    def verify(
        self, public_key: bytes, message: bytes, signature: bytes, *, context: bytes
    ) -> bool: ...


def _check_context(context: bytes) -> None:
    if len(context) > MAX_CONTEXT:
        raise ValueError(f"context string is {len(context)} bytes; the limit is {MAX_CONTEXT}")


class _OpenSSLPrivateKey:
    def __init__(self, seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import mldsa
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = mldsa.MLDSA87PrivateKey.from_seed_bytes(seed)
        self._public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        _check_context(context)
        return bytes(self._key.sign(message, context))


class CryptographyBackend:
    """OpenSSL's ML-DSA-87 through the ``cryptography`` package."""

    name = "cryptography"

    def private_key_from_seed(self, seed: bytes) -> PrivateKey:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an ML-DSA-87 seed is {SEED_SIZE} bytes, got {len(seed)}")
        return _OpenSSLPrivateKey(seed)

    def verify(
        self, public_key: bytes, message: bytes, signature: bytes, *, context: bytes
    ) -> bool:
        from cryptography.exceptions import InvalidSignature

        if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        if len(context) > MAX_CONTEXT:
            return False
        try:
            key = _openssl_public_key(public_key)
            key.verify(signature, message, context)
        except (InvalidSignature, ValueError):
            return False
        return True


@functools.lru_cache(maxsize=1024)
def _openssl_public_key(public_key: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import mldsa

    return mldsa.MLDSA87PublicKey.from_public_bytes(public_key)


class _OqsPrivateKey:
    def __init__(self, oqs: Any, seed: bytes) -> None:
        signer = oqs.Signature("ML-DSA-87")
        keygen = getattr(signer, "generate_keypair_seed", None) or getattr(
            signer, "generate_keypair_from_seed", None
        )
        if keygen is None:
            raise BackendUnavailable(
                "this liboqs-python cannot derive a key pair from a seed; "
                'set crypto.backend = "cryptography"'
            )
        self._public = bytes(keygen(seed))
        self._signer = signer

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        _check_context(context)
        return bytes(self._signer.sign_with_ctx_str(message, context))


class OqsBackend:
    """liboqs's ML-DSA-87 through liboqs-python (needs the liboqs shared library)."""

    name = "oqs"

    def __init__(self) -> None:
        try:
            import oqs
        except (ImportError, RuntimeError, OSError, SystemExit) as exc:
            # liboqs-python tries to build/download liboqs when the library is
            # missing; we never let it, and report the library as unavailable.
            raise BackendUnavailable(f"liboqs-python is not usable: {exc}") from exc
        if "ML-DSA-87" not in oqs.get_enabled_sig_mechanisms():
            raise BackendUnavailable("liboqs was built without ML-DSA-87")
        self._oqs = oqs
        self._verifier = oqs.Signature("ML-DSA-87")

    def private_key_from_seed(self, seed: bytes) -> PrivateKey:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an ML-DSA-87 seed is {SEED_SIZE} bytes, got {len(seed)}")
        return _OqsPrivateKey(self._oqs, seed)

    def verify(
        self, public_key: bytes, message: bytes, signature: bytes, *, context: bytes
    ) -> bool:
        if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        if len(context) > MAX_CONTEXT:
            return False
        try:
            return bool(self._verifier.verify_with_ctx_str(message, signature, context, public_key))
        except Exception:  # liboqs raises on malformed input; that is a failed verification
            return False


def _oqs_importable() -> bool:
    import ctypes.util
    import importlib.util

    # Importing liboqs-python without the C library makes it try to build one;
    # only attempt the import when the shared library is present.
    return (
        importlib.util.find_spec("oqs") is not None and ctypes.util.find_library("oqs") is not None
    )


def available_backends() -> list[str]:
    names = ["cryptography"]
    if _oqs_importable():
        try:
            OqsBackend()
        except BackendUnavailable:
            pass
        else:
            names.append("oqs")
    return names


@functools.lru_cache(maxsize=4)
def get_backend(name: str = "auto") -> Backend:
    """The backend called ``name``: "cryptography", "oqs" or "auto" (oqs when it loads)."""
    if name == "cryptography":
        return CryptographyBackend()
    if name == "oqs":
        if not _oqs_importable():
            raise BackendUnavailable(
                "the liboqs shared library is not installed (liboqs-python needs it)"
            )
        return OqsBackend()
    if name == "auto":
        if "oqs" in available_backends():
            return OqsBackend()
        return CryptographyBackend()
    raise ValueError(f"unknown crypto backend {name!r} (expected auto, cryptography or oqs)")
