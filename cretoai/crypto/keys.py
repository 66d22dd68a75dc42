"""Node key files.

A node's private key is stored as an unencrypted PKCS#8 PEM holding the
32-byte ML-DSA-87 seed (the standard, backend-neutral form), written with mode
0600. Loading refuses a key that the group or others can read. The public key
is stored beside it as hex (``node.pub``). A node's id is SHA3-256 of its
public key, printed as hex.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cretoai.crypto.backend import SEED_SIZE, Backend, PrivateKey, get_backend
from cretoai.files import foreign_problem, write_atomically

PRIVATE_KEY_FILE = "node.key"
PUBLIC_KEY_FILE = "node.pub"


class KeyFileError(Exception):
    """A key file is missing, unreadable, too permissive or corrupt (message names the file)."""


def node_id(public_key: bytes) -> str:
    """The printable id of a node: hex SHA3-256 of its ML-DSA-87 public key."""
    return hashlib.sha3_256(public_key).hexdigest()


@dataclass(frozen=True)
class NodeKey:
    """A node's loaded private key."""

    private: PrivateKey
    path: Path

    @property
    def public_key(self) -> bytes:
        return self.private.public_key

    @property
    def node_id(self) -> str:
        return node_id(self.public_key)

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        return self.private.sign(message, context=context)

    def __repr__(self) -> str:  # never print key material
        return f"NodeKey(node_id={self.node_id[:16]}…, path={str(self.path)!r})"


def _seed_to_pem(seed: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import mldsa
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = mldsa.MLDSA87PrivateKey.from_seed_bytes(seed)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _pem_to_seed(pem: bytes, path: Path) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import mldsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a valid private key file ({exc})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for other key types
        raise KeyFileError(f"{path}: not a valid private key file ({exc})") from None
    if not isinstance(key, mldsa.MLDSA87PrivateKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}, not an ML-DSA-87 key")
    seed = key.private_bytes_raw()
    if len(seed) != SEED_SIZE:
        raise KeyFileError(f"{path}: unexpected ML-DSA-87 seed length {len(seed)}")
    return bytes(seed)


def write_keypair(directory: Path, *, force: bool = False, stem: str = "node") -> tuple[Path, str]:
    """Generate a key pair into ``directory`` (``<stem>.key``, ``<stem>.pub``); return the
    private key path and the key's id.

    Refuses to overwrite existing key files unless ``force``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{stem}.key"
    public_path = directory / f"{stem}.pub"
    if not force:
        for existing in (private_path, public_path):
            if existing.exists():
                raise KeyFileError(f"{existing}: already exists (use --force to overwrite)")
    seed = os.urandom(SEED_SIZE)
    pem = _seed_to_pem(seed)
    public = get_backend("cryptography").private_key_from_seed(seed).public_key
    # A new file, 0600 from the start (never readable by others, not even briefly), created
    # under a random name without following links, then renamed into place.
    write_atomically(private_path, pem, 0o600)
    write_atomically(public_path, (public.hex() + "\n").encode())
    return private_path, node_id(public)


def load_private_key(path: Path, backend: Backend | str = "auto") -> NodeKey:
    """Load a private key file; refuse it when it is group/world-accessible or corrupt."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: private key file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: private key is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    foreign = foreign_problem(path, st)
    if foreign is not None:  # another user's key, e.g. swapped into a directory they write
        raise KeyFileError(f"{path}: private key {foreign}")
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key ({exc.strerror})") from None
    seed = _pem_to_seed(pem, path)
    chosen = get_backend(backend) if isinstance(backend, str) else backend
    return NodeKey(private=chosen.private_key_from_seed(seed), path=path)


def read_public_key(path: Path) -> bytes:
    """Read a ``node.pub`` file (hex)."""
    from cretoai.crypto.backend import PUBLIC_KEY_SIZE

    try:
        text = path.read_text().strip()
        public = bytes.fromhex(text)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: public key file not found") from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a hex public key ({exc})") from None
    if len(public) != PUBLIC_KEY_SIZE:
        raise KeyFileError(f"{path}: public key is {len(public)} bytes, expected {PUBLIC_KEY_SIZE}")
    return public
