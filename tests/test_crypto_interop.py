"""ML-DSA-87 interoperability against an independent FIPS 204 implementation (dilithium-py)."""

from __future__ import annotations

import os

import pytest
from dilithium_py.ml_dsa import ML_DSA_87

from cretoai.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, available_backends, get_backend

BACKENDS = available_backends()
CONTEXT = b"cretoai.v1.test"


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_same_seed_same_public_key(backend_name: str) -> None:
    seed = os.urandom(32)
    ours = get_backend(backend_name).private_key_from_seed(seed)
    theirs_pk, _ = ML_DSA_87.key_derive(seed)
    assert ours.public_key == theirs_pk
    assert len(ours.public_key) == PUBLIC_KEY_SIZE


def test_reference_verifies_our_signatures(backend_name: str) -> None:
    key = get_backend(backend_name).private_key_from_seed(os.urandom(32))
    message = os.urandom(200)
    signature = key.sign(message, context=CONTEXT)
    assert len(signature) == SIGNATURE_SIZE
    assert ML_DSA_87.verify(key.public_key, message, signature, ctx=CONTEXT)
    assert not ML_DSA_87.verify(key.public_key, message + b"x", signature, ctx=CONTEXT)
    assert not ML_DSA_87.verify(key.public_key, message, signature, ctx=b"other")
    tampered = bytearray(signature)
    tampered[100] ^= 1
    assert not ML_DSA_87.verify(key.public_key, message, bytes(tampered), ctx=CONTEXT)


def test_we_verify_reference_signatures(backend_name: str) -> None:
    backend = get_backend(backend_name)
    public, secret = ML_DSA_87.key_derive(os.urandom(32))
    message = os.urandom(100)
    signature = ML_DSA_87.sign(secret, message, ctx=CONTEXT)
    assert backend.verify(public, message, signature, context=CONTEXT)
    assert not backend.verify(public, message[:-1], signature, context=CONTEXT)
    assert not backend.verify(public, message, signature, context=CONTEXT + b"!")
    flipped = bytearray(signature)
    flipped[-1] ^= 0x80
    assert not backend.verify(public, message, bytes(flipped), context=CONTEXT)
    other_public, _ = ML_DSA_87.key_derive(os.urandom(32))
    assert not backend.verify(other_public, message, signature, context=CONTEXT)


def test_malformed_inputs_fail_cleanly(backend_name: str) -> None:
    backend = get_backend(backend_name)
    key = backend.private_key_from_seed(os.urandom(32))
    signature = key.sign(b"m", context=CONTEXT)
    assert not backend.verify(key.public_key[:-1], b"m", signature, context=CONTEXT)
    assert not backend.verify(key.public_key, b"m", signature[:-1], context=CONTEXT)
    assert not backend.verify(b"\x00" * PUBLIC_KEY_SIZE, b"m", signature, context=CONTEXT)
    assert not backend.verify(key.public_key, b"m", signature, context=b"x" * 300)
    with pytest.raises(ValueError, match="context"):
        key.sign(b"m", context=b"x" * 256)
    with pytest.raises(ValueError, match="seed"):
        backend.private_key_from_seed(b"short")


def test_backends_interoperate() -> None:
    """Every available backend accepts every other's signatures (cryptography alone here
    unless the liboqs library is installed, as in the container image)."""
    seed = os.urandom(32)
    for signer_name in BACKENDS:
        signer = get_backend(signer_name).private_key_from_seed(seed)
        signature = signer.sign(b"interop", context=CONTEXT)
        for verifier_name in BACKENDS:
            verifier = get_backend(verifier_name)
            assert verifier.verify(signer.public_key, b"interop", signature, context=CONTEXT)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown crypto backend"):
        get_backend("rsa")
