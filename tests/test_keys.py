"""Key files: 0600 on write, refused when too permissive or corrupt, node ids."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cretoai.crypto import KeyFileError, get_backend, load_private_key, node_id, write_keypair
from cretoai.crypto.keys import read_public_key
from tests.conftest import cli


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    path, nid = write_keypair(tmp_path / "k")
    assert path.stat().st_mode & 0o777 == 0o600
    key = load_private_key(path, "cryptography")
    assert key.node_id == nid == hashlib.sha3_256(key.public_key).hexdigest()
    assert read_public_key(tmp_path / "k" / "node.pub") == key.public_key
    signature = key.sign(b"hello", context=b"test")
    assert get_backend("cryptography").verify(key.public_key, b"hello", signature, context=b"test")
    assert "PRIVATE" not in repr(key) and nid[:16] in repr(key)


def test_existing_key_not_overwritten_without_force(tmp_path: Path) -> None:
    path, nid = write_keypair(tmp_path)
    with pytest.raises(KeyFileError, match="already exists"):
        write_keypair(tmp_path)
    assert load_private_key(path).node_id == nid
    _, new_id = write_keypair(tmp_path, force=True)
    assert new_id != nid


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_permissive_key_refused(tmp_path: Path, mode: int) -> None:
    path, _ = write_keypair(tmp_path)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as err:
        load_private_key(path)
    assert str(path) in str(err.value)
    assert f"chmod 600 {path}" in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        os.urandom(300),
    ],
)
def test_corrupt_key_refused(tmp_path: Path, content: bytes) -> None:
    path, _ = write_keypair(tmp_path)
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match="not a valid private key") as err:
        load_private_key(path)
    assert str(path) in str(err.value)


def test_truncated_key_refused(tmp_path: Path) -> None:
    path, _ = write_keypair(tmp_path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(KeyFileError, match="not a valid private key"):
        load_private_key(path)


def test_other_algorithm_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an ML-DSA-87 key"):
        load_private_key(path)


def test_missing_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_private_key(tmp_path / "nope.key")


def test_cli_keygen(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    proc = subprocess.run(
        cli("keygen", "--output", str(out)), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    key = load_private_key(out / "node.key")
    assert key.node_id in proc.stdout
    assert (out / "node.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        cli("keygen", "--output", str(out)), capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert load_private_key(out / "node.key").node_id == key.node_id


def test_node_id_is_hash_of_public_key() -> None:
    assert node_id(b"\x01" * 2592) == hashlib.sha3_256(b"\x01" * 2592).hexdigest()
