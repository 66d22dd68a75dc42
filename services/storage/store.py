"""The node's RocksDB: one synchronous :class:`Store`, used by the service and by backup tools.

Threading: every *write* method runs on the one writer thread
(:mod:`services.storage.writer`), which syncs the WAL once per group of writes
and only then calls :meth:`Store.publish`. Reads may run on any thread; they
see only *published* (synced) data: everything stored under a seq above the
published ``last_seq`` is invisible, even though RocksDB already holds it.

Column families and key encodings are in :mod:`services.storage.keys`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from rocksdict import AccessType, Checkpoint, Rdict, ReadOptions, WriteBatch

from cretoai.errors import Aborted
from cretoai.protowire import length_delimited, read_varint, varint
from cretoai.v1 import pbft_pb2, storage_pb2, vertex_pb2

if TYPE_CHECKING:
    from cretoai.config import NodeConfig
from services.storage import keys
from services.storage.errors import (
    REMEDY,
    AlreadyExists,
    BackupFailed,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseOfAnotherCluster,
    DatabaseOfAnotherNode,
    FailedPrecondition,
    Halted,
    InvalidArgument,
    ReadFailed,
    ServiceError,
    WriteFailed,
    is_damage,
    write_error,
)
from services.storage.options import (
    DEFAULT_BUDGET,
    MemoryBudget,
    open_options,
    read_options,
    unsynced_write,
)
from services.storage.synced import MARK_FILE, MarkWriter, SyncedMark, identity_of, read_mark

log = logging.getLogger(__name__)

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
UNSPECIFIED = vertex_pb2.VERTEX_STATUS_UNSPECIFIED

#: A file written into every backup directory beside the RocksDB files.
BACKUP_MANIFEST = "CRETOAI-BACKUP.json"

#: Names RocksDB (and rocksdict) put in a database directory.
_ROCKSDB_FILES = ("LOCK", "LOG", "IDENTITY", "CURRENT", "rocksdict-config.json")
_ROCKSDB_PREFIXES = ("LOG.old", "MANIFEST-", "OPTIONS-")
_ROCKSDB_SUFFIXES = (".log", ".sst", ".blob", ".dbtmp")
#: What RocksDB writes into CURRENT: the name of the live MANIFEST and a newline.
_CURRENT = re.compile(rb"MANIFEST-[0-9]+\n")


#: :meth:`Store.verify` reports its progress every this many keys.
VERIFY_PROGRESS_KEYS = 200_000
#: :meth:`Store.verify` looks up the bodies vertices point at this many at a time.
VERIFY_POINTER_BATCH = 1024

#: Databases opened by this process (RocksDB's LOCK only excludes other processes).
_OPEN_PATHS: set[Path] = set()
_OPEN_LOCK = threading.RLock()

#: Creator keys remembered by each cache (a creator key is 2592 bytes).
CREATOR_CACHE = 4096

STATE_PAGE_ENTRIES = 256
STATE_PAGE_BYTES = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Counters:
    """What the ``counters`` record holds; :attr:`Store.published` is the synced one."""

    last_seq: int = 0
    vertices: int = 0
    finalized_vertices: int = 0
    rejected_vertices: int = 0
    edges: int = 0
    evidence: int = 0
    #: Atomic writes applied so far (each :meth:`Store._apply` adds one); see ``synced``.
    writes: int = 0

    def to_bytes(self) -> bytes:
        return storage_pb2.StoredCounters(**dataclasses.asdict(self)).SerializeToString()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Counters:
        stored = storage_pb2.StoredCounters.FromString(raw)
        return cls(**{f.name: getattr(stored, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, kw_only=True)
class CommitOutcome:
    last_seq: int
    already_committed: bool
    heights: list[int]
    vertices: int
    bytes: int


class _BodyMissing(Exception):
    """A vertex points at a body that is not there (see :meth:`Store.decode_vertex`)."""

    def __init__(self, body_key: bytes) -> None:
        super().__init__(body_key)
        self.body_key = body_key


class VotedRecord(NamedTuple):
    """A consensus-state record as stored: ``value``, and ``bodies`` when it is a voted
    batch stored split (``value`` is then the record without them)."""

    value: bytes
    bodies: list[bytes] | None

    def whole(self) -> bytes:
        return self.value if self.bodies is None else join_voted(self.value, self.bodies)


@dataclass(frozen=True, kw_only=True)
class DatabaseInfo:
    path: Path
    last_seq: int
    vertices: int
    schema_version: int


def stored_vertex(body: bytes, creator_id: bytes = b"") -> bytes:
    """``StoredVertex(vertex=body, creator_id=creator_id)`` serialized, without copying the
    body through a message: field 1 and field 2, both length-delimited (wire type 2)."""
    parts = [b"\x0a", varint(len(body)), body] if body else []
    if creator_id:
        parts += [b"\x12", varint(len(creator_id)), creator_id]
    return b"".join(parts)


def stored_pointer(body_key: bytes) -> bytes:
    """``StoredVertex(voted_body=body_key)`` serialized: the vertex is the body stored
    under ``body_key`` (a voted batch's, stored once)."""
    return length_delimited(3, body_key)


#: The key of a VotedBatch's ``request_hashes`` and ``request_bodies`` entries.
_HASH_TAG, _BODY_TAG = 0x0A, 0x12


def split_voted(value: bytes) -> tuple[bytes, list[bytes]] | None:
    """A VotedBatch encoded as the consensus encodes it (``core.durable.encode_batch``):
    its ``request_hashes``, then at least one of its ``request_bodies``, nothing else, each
    body's length a minimal varint. Returns the bytes before the first body and the
    bodies, so that ``join_voted(head, bodies) == value``; None for any other value
    (stored whole)."""
    pos, end = 0, len(value)
    try:
        while pos < end and value[pos] == _HASH_TAG:
            length, pos = read_varint(value, pos + 1)
            pos += length
        head = pos
        bodies: list[bytes] = []
        while pos < end:
            if value[pos] != _BODY_TAG:
                return None
            length, start = read_varint(value, pos + 1)
            if start - pos - 1 != len(varint(length)):
                return None
            pos = start + length
            bodies.append(value[start:pos])
    except ValueError:
        return None
    if pos != end or not bodies:
        return None
    return value[:head], bodies


def join_voted(head: bytes, bodies: Sequence[bytes]) -> bytes:
    """The record :func:`split_voted` split, byte for byte."""
    return b"".join([head, *(length_delimited(2, body) for body in bodies)])


def _fields(vertex: vertex_pb2.Vertex, creator: bytes) -> bytes:
    """``vertex`` serialized with ``creator`` as its creator (b"": none) and without
    unknown fields; ``vertex`` itself is not changed."""
    return vertex_pb2.Vertex(
        payload=vertex.payload,
        parents=vertex.parents,
        creator=creator,
        timestamp_ms=vertex.timestamp_ms,
        signature=vertex.signature,
    ).SerializeToString()


def decode_vertex(
    raw: bytes,
    creator_of: Callable[[bytes], bytes],
    into: vertex_pb2.Vertex | None = None,
    body_of: Callable[[bytes], bytes] | None = None,
) -> vertex_pb2.Vertex:
    """A ``vertices`` value (``StoredVertex``) back into the vertex; ``creator_of`` resolves
    ids, ``body_of`` reads a body stored once (``voted_body``)."""
    stored = storage_pb2.StoredVertex.FromString(raw)
    vertex = vertex_pb2.Vertex() if into is None else into
    if stored.voted_body:
        if body_of is None:
            raise ValueError("a vertex stored by reference, and no way to read its body")
        vertex.ParseFromString(body_of(stored.voted_body))
        return vertex
    vertex.ParseFromString(stored.vertex)
    if stored.creator_id:
        vertex.creator = creator_of(stored.creator_id)
    return vertex


def batch_header(batch: vertex_pb2.FinalizedBatch) -> vertex_pb2.FinalizedBatch:
    """Every field of ``batch`` but its vertices (without copying them)."""
    header = vertex_pb2.FinalizedBatch()
    for field, value in batch.ListFields():
        if field.name == "vertices":
            continue
        target = getattr(header, field.name)
        if field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(header, field.name, value)
    return header


def _identity(header: vertex_pb2.FinalizedBatch) -> bytes:
    """What makes two headers the same batch: everything but the certificate (another
    quorum of COMMITs proves the same batch)."""
    copy = vertex_pb2.FinalizedBatch()
    copy.CopyFrom(header)
    copy.ClearField("certificate")
    return copy.SerializeToString(deterministic=True)


def evidence_digest(evidence: pbft_pb2.Evidence) -> bytes:
    """SHA3-256 over both signed messages, independent of their order."""
    parts = sorted(
        m.SerializeToString(deterministic=True) for m in (evidence.first, evidence.second)
    )
    h = hashlib.sha3_256(b"cretoai.v1.evidence\x00")
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _is_rocksdb_file(name: str) -> bool:
    return (
        name in (BACKUP_MANIFEST, MARK_FILE)
        or name in _ROCKSDB_FILES
        or name.startswith(_ROCKSDB_PREFIXES)
        or name.endswith(_ROCKSDB_SUFFIXES)
    )


def _some(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, … ({len(names)} in all)" if len(names) > limit else shown


def _corrupt(path: Path, what: str) -> DatabaseCorrupt:
    return DatabaseCorrupt(f"the database at {path} is corrupt: {what}; {REMEDY}")


def _classify_open_error(path: Path, exc: Exception) -> DatabaseError:
    message = str(exc)
    lowered = message.lower()
    if "lock" in lowered and (
        "hold" in lowered or "unavailable" in lowered or "lock file" in lowered
    ):
        return DatabaseLocked(
            f"the database at {path} is in use by another process (its RocksDB LOCK is held); "
            f"is another storage service of this node running? ({message})"
        )
    if "corruption" in lowered or "checksum" in lowered:
        return _corrupt(path, message)
    return DatabaseError(f"cannot open the database at {path}: {message}")


def _unreachable_mark(path: Path, doing: str, exc: OSError) -> DatabaseError:
    return DatabaseError(
        f"cannot {doing} the database's synced mark {path / MARK_FILE}: "
        f"{exc.strerror or exc}; without it the storage service cannot tell synced writes "
        "lost at its next start. The storage service's user must own the database directory "
        "and its files (mode 0700 for the directory, 0600 for files)"
    )


def _check_existing(path: Path, entries: list[str]) -> list[str]:
    """Check, reading only, that the non-empty directory ``path`` holds a database of this
    service: a CURRENT naming a MANIFEST that exists and that RocksDB reads, and every column
    family. Returns the column families; raises :class:`DatabaseError`.

    RocksDB writes into the directory (LOCK, LOG, rocksdict's config) even when an open
    fails, and with ``create_if_missing`` it makes a new, empty database beside the files of
    an old one: so nothing is opened until this passes, and an existing database is never
    opened with ``create_if_missing`` or ``create_missing_column_families``."""
    if "CURRENT" not in entries:
        ours = [name for name in entries if _is_rocksdb_file(name)]
        if not ours:
            raise DatabaseError(
                f"the database path {path} is a non-empty directory that holds no RocksDB "
                f"database (it holds {_some(entries)}); refusing to create one among other "
                "files: set [storage] path to a missing or empty directory, or, if this "
                f"was the node's database, {REMEDY}"
            )
        raise _corrupt(path, f"it holds RocksDB files ({_some(ours)}) but no CURRENT file")
    try:
        with (path / "CURRENT").open("rb") as f:
            current = f.read(256)
    except PermissionError as exc:
        # not damage: moving the database aside, as a corrupt one's remedy says, would
        # throw a whole history away for a mode bit (a storage audit, 2026-12-04)
        raise DatabaseError(
            f"cannot read the database at {path}: {exc.strerror} ({path / 'CURRENT'}): the "
            "storage service's user must own the database directory and its files (mode "
            f"0700 for the directory, 0600 for files; e.g. chown -R USER {path})"
        ) from None
    except OSError as exc:
        raise _corrupt(path, f"its CURRENT file cannot be read ({exc})") from None
    if not _CURRENT.fullmatch(current):
        raise _corrupt(path, f"its CURRENT file does not name a MANIFEST ({current!r})")
    manifest = current.decode().strip()
    if manifest not in entries or not (path / manifest).is_file():
        raise _corrupt(path, f"its CURRENT file names {manifest}, which is missing")
    if (path / manifest).stat().st_size == 0:
        raise _corrupt(path, f"its CURRENT file names {manifest}, which is empty")
    try:
        existing: list[str] = Rdict.list_cf(str(path))
    except Exception as exc:
        raise _classify_open_error(path, exc) from None
    missing = [name for name in keys.COLUMN_FAMILIES if name not in existing]
    if missing:
        raise _corrupt(
            path,
            f"it lacks the column families {', '.join(missing)} (it was not written by "
            "this service, its first start was interrupted, or it is damaged)",
        )
    return existing


def _check_iterator(it: Any, where: str) -> None:
    """Raise :class:`ReadFailed` when an iterator stopped on damaged data, not at the end:
    a scan must fail, never come back shorter (docs/security.md §5)."""
    try:
        it.status()
    except Exception as exc:  # said and counted by the reader (Store.on_damage)
        raise ReadFailed(f"the database at {where} is damaged: {exc}; {REMEDY}") from None


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _reading(method: _Method) -> _Method:
    """A :class:`Store` method that reads the database: RocksDB's error for a damaged
    block (a bare ``Exception`` saying "Corruption: block checksum mismatch ...") becomes
    :class:`ReadFailed` (DATA_LOSS) saying what to do, and :attr:`Store.on_damage` is
    told. A storage audit (2026-12-04) had such reads answer INTERNAL "internal error",
    uncounted, with the service healthy, and a write meeting the block halt the store
    with "free disk space" as the hint."""

    @functools.wraps(method)
    def read(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ReadFailed as exc:
            self._damaged(str(exc))
            raise
        except ServiceError:
            raise
        except Exception as exc:
            if not is_damage(str(exc)):
                raise
            message = f"the database at {self.path} is damaged: {exc}; {REMEDY}"
            self._damaged(message)
            raise ReadFailed(message) from None

    return read  # type: ignore[return-value]


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (files deleted meanwhile are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a file RocksDB just deleted
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Store:
    """The database of one node. Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, db: Rdict, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._db = db
        self._read = read_options()
        self._read_uncached = read_options(fill_cache=False)
        self._write = unsynced_write()
        self._cf = {name: db.get_column_family(name) for name in keys.COLUMN_FAMILIES}
        self._handle = {name: db.get_column_family_handle(name) for name in keys.COLUMN_FAMILIES}
        self._closed = False
        self.halt_reason: str | None = None
        #: Called (from any thread) with the message of each read that met damaged data.
        self.on_damage: Callable[[str], None] | None = None
        #: True when something was written since the last sync.
        self.dirty = False
        self.schema_version = keys.SCHEMA_VERSION
        # a published batch's certificate never changes; lists repeat the same few seqs
        self._certificate_cache = functools.lru_cache(maxsize=1024)(self._certificate)
        # creator key -> id (writer thread) and id -> key (readers), bounded
        self._creator_ids: dict[bytes, bytes] = {}
        self._creators: dict[bytes, bytes] = {}
        self._written = Counters()
        self.published = Counters()
        self._mark: MarkWriter | None = None

    def _load(self, is_new: bool, mark: SyncedMark | None) -> None:
        counters = self._load_counters()
        self._written = counters
        self.published = counters
        # what was synced first: a young database whose write-ahead log was deleted
        # holds nothing, not even its schema version, and said only "never initialised"
        identity = identity_of(self.path)
        self._check_synced(mark, identity)
        self._check_schema(is_new)
        if not self.read_only:
            self._mark = MarkWriter(self.path, identity)
            try:
                self._mark.open()
            except OSError as exc:
                raise _unreachable_mark(self.path, "write", exc) from None

    def _check_synced(self, mark: SyncedMark | None, identity: bytes) -> None:
        """Refuse a database that opens behind what was synced (module ``synced``)."""
        if mark is None:
            return
        if mark.identity != identity:
            log.info(
                "the synced mark belongs to another database; not checked",
                extra={"fields": {"path": str(self.path)}},
            )
            return
        opened = self.published
        if opened.writes < mark.writes:
            raise _corrupt(
                self.path,
                f"synced writes are missing: write {mark.writes} (last_seq {mark.last_seq}) "
                f"was synced, but the database opens at write {opened.writes} (last_seq "
                f"{opened.last_seq}). Its write-ahead log is damaged (RocksDB recovered up to "
                "the damage and dropped the rest), or its files were replaced by older ones "
                f"({MARK_FILE} records the last synced write)",
            )

    # ------------------------------------------------------------------ open/close

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool = True,
        read_only: bool = False,
        owner: Owner | None = None,
        budget: MemoryBudget = DEFAULT_BUDGET,
    ) -> Store:
        """Open the database at ``path``; :class:`DatabaseError`.

        With ``create``, a missing or empty directory gets a new, empty database. A directory
        that holds anything else must hold an intact database of this service, checked
        before RocksDB touches it (:func:`_check_existing`): a damaged one fails every open
        and is left exactly as it is.

        With ``owner`` (the storage service passes its node's), a database stamped with
        another validator's key is refused (:class:`DatabaseOfAnotherNode`), and one not
        stamped yet (new, or written before stamps) is stamped, unless ``read_only``.

        ``budget``: RocksDB's memtables and block cache."""
        path = Path(path).absolute()
        if path.exists() and not path.is_dir():
            raise DatabaseError(f"the database path {path} exists and is not a directory")
        try:
            entries = sorted(os.listdir(path)) if path.exists() else []
        except OSError as exc:
            raise DatabaseError(f"cannot read the database directory {path}: {exc}") from None
        # a new database only where nothing is: never beside the files of a damaged one
        is_new = not entries
        # read before RocksDB replays the WAL: a live service may sync more meanwhile
        try:
            mark = None if is_new else read_mark(path, strict=not read_only)
        except OSError as exc:
            raise _unreachable_mark(path, "read", exc) from None
        existing: list[str] = []
        if is_new:
            if not create or read_only:
                raise DatabaseError(f"there is no database at {path}")
            if not path.parent.is_dir():
                # an unmounted volume or a wrong path: a new database there would start a
                # new history under keys that signed the old one (with every node so, a
                # second seq 1 with a valid certificate: a fork)
                raise DatabaseError(
                    f"the database's directory {path.parent} does not exist (a volume not "
                    "mounted, or a wrong data_dir / storage.path?): storage creates a new "
                    "database only inside an existing directory. For a new node, create "
                    f"it (cluster init does): mkdir -m 700 {path.parent}"
                )
            try:
                path.mkdir(exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create the database directory {path}: {exc}") from None
        else:
            existing = _check_existing(path, entries)
            if owner is not None and not read_only:
                # another node's database is refused before a read-write open, which
                # would already change its files (a new MANIFEST, the WAL replayed)
                cls.open(path, create=False, read_only=True, owner=owner).close()
        with _OPEN_LOCK:
            if path in _OPEN_PATHS and not read_only:
                raise DatabaseLocked(
                    f"the database at {path} is in use (already open in this process)"
                )
            try:
                access = (
                    AccessType.read_only(error_if_log_file_exist=False)
                    if read_only
                    else AccessType.read_write()
                )
                options, families = open_options(existing, create=is_new, budget=budget)
                db = Rdict(str(path), options, column_families=families, access_type=access)
            except DatabaseError:
                raise
            except Exception as exc:
                raise _classify_open_error(path, exc) from None
            store = cls(path, db, read_only=read_only)
            try:
                store._load(is_new, mark)
                if owner is not None:
                    store._check_owner(owner)
            except DatabaseError:
                store.close()
                raise
            except Exception as exc:
                store.close()
                raise _classify_open_error(path, exc) from None
            if not read_only:
                _OPEN_PATHS.add(path)
        if is_new:
            log.warning("created a new, empty database", extra={"fields": {"path": str(path)}})
        log.info(
            "database open",
            extra={
                "fields": {
                    "path": str(path),
                    "last_seq": store.published.last_seq,
                    "vertices": store.published.vertices,
                    "read_only": read_only,
                }
            },
        )
        return store

    def owner(self) -> Owner | None:
        """The validator this database belongs to, if it was stamped."""
        raw = self._db.get(keys.OWNER_KEY, read_opt=self._read)
        if raw is None:
            return None
        try:
            return Owner.from_bytes(raw)
        except ValueError as exc:
            raise DatabaseCorrupt(f"the database at {self.path}: unreadable owner: {exc}") from None

    def _check_validator_set(self, stamped: Owner, owner: Owner) -> None:
        """The database was written by this node in a cluster of ``stamped.validator_set``;
        refuse to go on under another set, or stamp the set on an older stamp.

        Found by an audit: node4 started once with a config listing only itself finalized
        batches alone on the cluster's data, and served a history of its own for good;
        ``cluster init --nodes 1 --reuse-keys`` over a 4-node cluster did the same. A
        cluster's validator set cannot change (there is no reconfiguration)."""
        if not owner.validator_set or stamped.validator_set == owner.validator_set:
            return
        if not stamped.validator_set:
            self._stamp(owner)
            return
        raise DatabaseOfAnotherCluster(
            f"the database at {self.path} was written by {stamped.node} in a cluster of "
            f"{stamped.validators} validators (set {stamped.validator_set[:16]}), but this "
            f"config lists {owner.validators} (set {owner.validator_set[:16]}): another "
            "validator list, order or key. A cluster's validator set cannot change: its "
            "certificates name replicas by their place in it, and the node would finalize "
            "a history of its own. Start with the cluster's own config (cluster init "
            "--reuse-keys with the cluster's --nodes), or, for a new cluster, move the "
            "data directory aside"
        )

    def _stamp(self, owner: Owner) -> None:
        """Write ``owner`` as the database's stamp (read-write opens only), synced."""
        if self.read_only:
            return
        self._db.put(keys.OWNER_KEY, owner.to_bytes(), self._write)
        self._db.flush_wal(True)
        log.info(
            "database stamped with its node",
            extra={"fields": {"path": str(self.path), "node": owner.node,
                              "key": owner.key_fingerprint,
                              "validators": owner.validators}},
        )  # fmt: skip

    def _check_owner(self, owner: Owner) -> None:
        stamped = self.owner()
        if stamped is None:
            if not self.read_only and (
                self.published.last_seq > 0 or any(self._scan(keys.CONSENSUS_STATE, b"", None, 1))
            ):
                # stamps exist since 2026-12-04: data without one is an older database,
                # or one whose stamp was removed (a storage audit moved node2's under node3;
                # consensus now refuses records another replica signed)
                log.warning(
                    "the database holds data but no identity stamp: stamped now as this "
                    "node's; if it is another node's, consensus will refuse its records",
                    extra={"fields": {"path": str(self.path), "node": owner.node}},
                )
            self._stamp(owner)
        elif stamped.key_fingerprint == owner.key_fingerprint:
            self._check_validator_set(stamped, owner)
        else:  # read-only opens too
            if stamped.node != owner.node:
                how = "it was copied from another node"
            elif (
                stamped.validator_set
                and owner.validator_set
                and stamped.validator_set != owner.validator_set
            ):
                how = (
                    "it comes from another cluster with a node of the same name (its "
                    "validator set differs too), or every key was replaced since"
                )
            else:
                how = "the node's validator key was changed since"
            raise DatabaseOfAnotherNode(
                f"the database at {self.path} belongs to {stamped.node} (validator key "
                f"{stamped.key_fingerprint}), not to this node, {owner.node} (key "
                f"{owner.key_fingerprint}): {how}. Its consensus "
                "records are what that node signed, and this node would take them for its own. "
                "Restore this node's own backup (cretoai-node restore --from DIR --force) or "
                "move the directory aside to start with an empty database (the node then "
                "rejoins the cluster by state transfer)",
                stamped_node=stamped.node,
                stamped_key=stamped.key_fingerprint,
                node=owner.node,
                key=owner.key_fingerprint,
            )

    def _load_counters(self) -> Counters:
        raw = self._db.get(keys.COUNTERS_KEY, read_opt=self._read)
        if raw is None:
            return Counters()
        try:
            return Counters.from_bytes(raw)
        except Exception as exc:
            raise DatabaseCorrupt(
                f"the database at {self.path}: unreadable counters: {exc}"
            ) from None

    def _check_schema(self, is_new: bool) -> None:
        raw = self._db.get(keys.SCHEMA_VERSION_KEY, read_opt=self._read)
        if raw is None:
            if not is_new and self._any_data():
                raise DatabaseCorrupt(
                    f"the database at {self.path} holds data but no schema version; "
                    "it was not written by this service or is damaged"
                )
            if self.read_only:
                raise DatabaseError(f"the database at {self.path} was never initialised")
            batch = WriteBatch(raw_mode=True)
            batch.put(keys.SCHEMA_VERSION_KEY, keys.u32(keys.SCHEMA_VERSION))
            batch.put(keys.COUNTERS_KEY, Counters().to_bytes())
            self._db.write(batch, self._write)
            self._db.flush_wal(True)
            return
        version = keys.read_u32(raw)
        self.schema_version = version
        if version not in keys.READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(str(v) for v in keys.READABLE_SCHEMA_VERSIONS)
            raise DatabaseError(
                f"the database at {self.path} has schema version {version}; "
                f"this build reads versions {readable}"
            )
        if version != keys.SCHEMA_VERSION and not self.read_only:
            # version 1 lacks only what version 2 adds (bodies stored once): nothing to
            # convert, but a build that reads only version 1 must refuse it from now on
            self._db.put(keys.SCHEMA_VERSION_KEY, keys.u32(keys.SCHEMA_VERSION), self._write)
            self._db.flush_wal(True)
            self.schema_version = keys.SCHEMA_VERSION
            log.info(
                "database schema upgraded",
                extra={
                    "fields": {"path": str(self.path), "from": version, "to": keys.SCHEMA_VERSION}
                },
            )
        last = self.published.last_seq
        if last and self._cf[keys.FINALIZED].get(keys.seq_key(last), read_opt=self._read) is None:
            raise DatabaseCorrupt(
                f"the database at {self.path} is corrupt: last_seq is {last} "
                "but its finalized entry is missing"
            )
        if self._cf[keys.FINALIZED].get(keys.seq_key(last + 1), read_opt=self._read) is not None:
            raise DatabaseCorrupt(
                f"the database at {self.path} is corrupt: a finalized entry exists "
                f"beyond last_seq {last}"
            )

    def _any_data(self) -> bool:
        """Whether any column family (``default`` included) holds a key."""
        for source in (self._db, *self._cf.values()):
            it = source.iter(self._read)
            it.seek_to_first()
            found = it.valid()
            if not found:
                try:
                    _check_iterator(it, str(self.path))
                except ReadFailed as exc:
                    raise DatabaseCorrupt(str(exc)) from None
            del it
            if found:
                return True
        return False

    def close(self) -> None:
        """Close every handle so that RocksDB releases the LOCK. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for cf in self._cf.values():
            try:
                cf.close()
            except Exception as exc:  # e.g. the flush at close fails after a write error
                errors.append(str(exc))
        self._cf.clear()
        self._handle.clear()
        if self._mark is not None:
            self._mark.close()
        try:
            self._db.close()
        except Exception as exc:
            errors.append(str(exc))
        with _OPEN_LOCK:
            _OPEN_PATHS.discard(self.path)
        if errors:
            log.warning(
                "database closed with errors",
                extra={"fields": {"path": str(self.path), "error": errors[0]}},
            )
        else:
            log.info("database closed", extra={"fields": {"path": str(self.path)}})

    def info(self) -> DatabaseInfo:
        return DatabaseInfo(
            path=self.path,
            last_seq=self.published.last_seq,
            vertices=self.published.vertices,
            schema_version=self.schema_version,
        )

    # ------------------------------------------------------------------ writes (writer thread)

    def _check_writable(self) -> None:
        if self.halt_reason is not None:
            if is_damage(self.halt_reason):  # a restart would halt again at the same block
                raise Halted(f"writes are halted: {self.halt_reason}; {REMEDY}")
            raise Halted(
                f"writes are halted after a write error ({self.halt_reason}); fix the cause "
                "(e.g. free disk space) and restart the storage service"
            )
        if self.read_only:
            raise Halted(f"the database at {self.path} is open read-only")

    def _apply(self, batch: WriteBatch, written: Counters) -> None:
        written = dataclasses.replace(written, writes=written.writes + 1)
        batch.put(keys.COUNTERS_KEY, written.to_bytes())
        try:
            self._db.write(batch, self._write)
        except Exception as exc:
            failure = write_error(str(exc))
            self.halt(str(failure))
            raise failure from None
        self._written = written
        self.dirty = True

    def sync(self) -> None:
        """Make every write so far durable (fsync the WAL), then publish it to readers."""
        if not self.dirty:
            return
        try:
            self._db.flush_wal(True)
        except Exception as exc:
            failure = write_error(f"WAL sync: {exc}")
            self.halt(str(failure))
            raise failure from None
        self.dirty = False
        self.published = self._written
        if self._mark is not None:
            self._mark.write(self._written.writes, self._written.last_seq)

    def _damaged(self, message: str) -> None:
        """Tell :attr:`on_damage` of damaged data a read met."""
        if self.on_damage is not None:
            self.on_damage(message)

    def halt(self, reason: str) -> None:
        if self.halt_reason is None:
            self.halt_reason = reason
            log.error("storage writes halted", extra={"fields": {"reason": reason}})

    @_reading
    def commit_batch(
        self, request: storage_pb2.CommitBatchRequest, voted: Sequence[bytes] | None = None
    ) -> CommitOutcome:
        """Write one executed batch (unsynced). The request passed :func:`check_commit`.

        ``voted``: the bodies its vertices were read from, when the request named them by
        reference to a record stored split; a vertex whose body is still exactly those
        bytes, and canonical, then points at it instead of being written again."""
        self._check_writable()
        batch = request.batch
        written = self._written
        if batch.seq <= written.last_seq:
            return self._recommit(request)
        if batch.seq != written.last_seq + 1:
            raise FailedPrecondition(
                f"batch.seq {batch.seq} does not follow last_seq {written.last_seq} "
                f"(expected {written.last_seq + 1}); the finalized log has no gaps"
            )
        seq = batch.seq
        results = request.results
        lookups = list({r.hash for r in results} | {p for v in batch.vertices for p in v.parents})
        stored = dict(zip(lookups, self._metas(lookups), strict=True))
        # this batch's own decisions so far: hash -> height (accepted) or None (rejected)
        local: dict[bytes, int | None] = {}
        wb = WriteBatch(raw_mode=True)
        h_vertices, h_meta = self._handle[keys.VERTICES], self._handle[keys.METADATA]
        h_edges = self._handle[keys.EDGES]
        h_height, h_time = self._handle[keys.INDEX_HEIGHT], self._handle[keys.INDEX_TIMESTAMP]
        vertices, finalized, rejected, edges = (
            written.vertices,
            written.finalized_vertices,
            written.rejected_vertices,
            written.edges,
        )
        heights: list[int] = []
        stored_results = []
        size = 0
        new_creators: dict[bytes, bytes] = {}
        voted_prefix = keys.voted(request.voted_batch_key)
        pointers = self._voted_pointers(voted_prefix, voted, batch.vertices)
        pointed = False

        def body_of(index: int, vertex: vertex_pb2.Vertex) -> bytes:
            nonlocal size, pointed
            pointer = pointers[index]
            if pointer is None:
                body = self._encode_vertex(vertex, wb, new_creators)
                size += len(body)
                return body
            assert voted is not None
            size += len(voted[index])
            pointed = True
            return stored_pointer(pointer)

        for index, (result, vertex) in enumerate(zip(results, batch.vertices, strict=True)):
            h = result.hash
            previous = stored[h]
            in_batch = h in local
            if result.rejected:
                heights.append(0)
                stored_results.append(
                    storage_pb2.StoredResult(
                        hash=h,
                        rejected=True,
                        reject_reason=result.reject_reason,
                        signature=vertex.signature,
                    )
                )
                if previous is None and not in_batch:
                    wb.put(h, body_of(index, vertex), h_vertices)
                    meta = storage_pb2.StoredVertexMeta(
                        status=REJECTED, seq=seq, index=index, reject_reason=result.reject_reason
                    )
                    wb.put(h, meta.SerializeToString(), h_meta)
                    vertices += 1
                    rejected += 1
                    local[h] = None
                continue
            if in_batch and local[h] is not None:
                at = seq
            elif previous is not None and previous.status == FINALIZED:
                at = previous.seq
            else:
                at = 0
            if at:
                raise FailedPrecondition(
                    f"results[{index}]: vertex {h.hex()} is already finalized (seq {at}); "
                    "a duplicate must be rejected"
                )
            if previous is not None:  # rejected before: its copy is replaced below
                self._release_body(h, wb)
            height = 0
            for parent in vertex.parents:
                if local.get(parent) is not None:
                    parent_height = local[parent]
                else:
                    parent_meta = stored[parent]
                    if parent_meta is None or parent_meta.status != FINALIZED or parent in local:
                        raise FailedPrecondition(
                            f"results[{index}]: vertex {h.hex()} is accepted but its parent "
                            f"{parent.hex()} is not finalized"
                        )
                    parent_height = parent_meta.height
                assert parent_height is not None
                height = max(height, parent_height + 1)
            wb.put(h, body_of(index, vertex), h_vertices)
            meta = storage_pb2.StoredVertexMeta(
                status=FINALIZED, seq=seq, height=height, index=index
            )
            wb.put(h, meta.SerializeToString(), h_meta)
            for parent in vertex.parents:
                wb.put(keys.edge_key(parent, h), b"", h_edges)
            wb.put(keys.position_key(height, seq, index), h, h_height)
            wb.put(keys.position_key(vertex.timestamp_ms, seq, index), h, h_time)
            if in_batch or previous is not None:  # was rejected: now finalized
                rejected -= 1
            else:
                vertices += 1
            finalized += 1
            edges += len(vertex.parents)
            local[h] = height
            heights.append(height)
            stored_results.append(storage_pb2.StoredResult(hash=h, height=height))
        record = storage_pb2.StoredBatch(header=batch_header(batch), results=stored_results)
        wb.put(keys.seq_key(seq), record.SerializeToString(), self._handle[keys.FINALIZED])
        if pointed:  # the bodies outlive their record from now on
            wb.put(keys.voted_final_key(voted_prefix), keys.u64(seq))
        if len(self._creator_ids) + len(new_creators) > CREATOR_CACHE:
            self._creator_ids.clear()
        self._apply(
            wb,
            dataclasses.replace(
                written,
                last_seq=seq,
                vertices=vertices,
                finalized_vertices=finalized,
                rejected_vertices=rejected,
                edges=edges,
            ),
        )
        self._creator_ids.update(new_creators)  # only once they are written
        return CommitOutcome(
            last_seq=seq,
            already_committed=False,
            heights=heights,
            vertices=len(results),
            bytes=size,
        )

    def _voted_pointers(
        self,
        prefix: bytes,
        voted: Sequence[bytes] | None,
        vertices: Sequence[vertex_pb2.Vertex],
    ) -> list[bytes | None]:
        """Per vertex, the key of the body it can point at, or None (written whole).

        Read on the writer thread, in the write's own turn: the checks passed on ``voted``
        as read before, and a write since (the record deleted or put again) may have
        changed the stored bodies; only a body that is still exactly those bytes is
        pointed at. And only a canonical one: bytes that the vertex's fields do not
        account for (unknown fields, a field twice) are covered by no proof, and the
        vertex is stored as its fields instead (as a full batch's)."""
        if voted is None:
            return [None] * len(vertices)
        body_keys = [keys.voted_body_key(prefix, i) for i in range(len(voted))]
        stored = self._uncached(self._db, body_keys)
        return [
            key if now == body and body == _fields(vertex, vertex.creator) else None
            for key, body, now, vertex in zip(body_keys, voted, stored, vertices, strict=True)
        ]

    def _encode_vertex(
        self, vertex: vertex_pb2.Vertex, wb: WriteBatch, new_creators: dict[bytes, bytes]
    ) -> bytes:
        """The ``vertices`` value; a long creator key is written once and referenced.

        Only the vertex's fields are stored: bytes of unknown fields are covered by no
        proof (the signed digest is over the fields), and ``vertex`` is not changed."""
        creator = vertex.creator
        if len(creator) < keys.CREATOR_INTERN_BYTES:
            return stored_vertex(_fields(vertex, creator))
        creator_id = self._creator_ids.get(creator) or new_creators.get(creator)
        if creator_id is None:
            creator_id = hashlib.sha3_256(creator).digest()
            key = keys.creator_key(creator_id)
            if self._db.get(key, read_opt=self._read) is None:
                wb.put(key, creator)
            new_creators[creator] = creator_id
        return stored_vertex(_fields(vertex, b""), creator_id)

    def _creator(self, creator_id: bytes) -> bytes:
        creator = self._creators.get(creator_id)
        if creator is None:
            creator = self._db.get(keys.creator_key(creator_id), read_opt=self._read)
            if creator is None:
                raise DatabaseCorrupt(
                    f"the database at {self.path}: creator {creator_id.hex()} is missing"
                )
            if len(self._creators) >= CREATOR_CACHE:
                self._creators.clear()
            self._creators[creator_id] = creator
        return creator

    def decode_vertex(
        self, h: bytes, raw: bytes, into: vertex_pb2.Vertex | None = None
    ) -> vertex_pb2.Vertex:
        """Vertex ``h``'s ``vertices`` value ``raw`` back into the vertex as executed.

        Readers do not hold the writer back: the body ``raw`` points at may have been
        deleted since ``raw`` was read, because a later batch finalized ``h`` and replaced
        the value (:meth:`_release_body`). Then the value is read again. A body missing
        while the value still points at it is damage."""
        for _ in range(3):
            try:
                return decode_vertex(raw, self._creator, into, self._voted_body)
            except _BodyMissing as missing:
                now = self._cf[keys.VERTICES].get(h, read_opt=self._read)
                if now is None or now == raw:
                    raise ReadFailed(
                        f"the database at {self.path} is damaged: the body of a finalized "
                        f"vertex ({missing.body_key!r}) is missing; {REMEDY}"
                    ) from None
                raw = now
        # a value changes once at most (a rejected copy replaced by the finalized one)
        raise Aborted(f"vertex {h.hex()} changed while it was read; read it again")

    def _voted_body(self, body_key: bytes) -> bytes:
        body: bytes | None = self._db.get(body_key, read_opt=self._read)
        if body is None:
            raise _BodyMissing(body_key)
        return body

    def _recommit(self, request: storage_pb2.CommitBatchRequest) -> CommitOutcome:
        batch = request.batch
        record = self._stored_batch(batch.seq)
        if record is None:  # pragma: no cover - excluded by the open-time and gap checks
            raise DatabaseCorrupt(f"finalized entry {batch.seq} is missing")
        same = _identity(record.header) == _identity(batch_header(batch)) and [
            (r.hash, r.rejected) for r in record.results
        ] == [(r.hash, r.rejected) for r in request.results]
        if not same:
            raise AlreadyExists(
                f"seq {batch.seq} already holds batch {record.header.batch_digest.hex()} "
                f"(this request is {batch.batch_digest.hex()} or differs in its results, "
                "rejected list or state digest)"
            )
        return CommitOutcome(
            last_seq=self._written.last_seq,
            already_committed=True,
            heights=[r.height for r in record.results],
            vertices=len(request.results),
            bytes=0,
        )

    @_reading
    def write_state(self, request: storage_pb2.WriteStateRequest) -> None:
        """Consensus durable state, one atomic write (the request passed check_write_state)."""
        self._check_writable()
        cf = self._handle[keys.CONSENSUS_STATE]
        wb = WriteBatch(raw_mode=True)
        # keys are at most 1024 bytes, so this is above every key that starts with a prefix
        beyond = b"\xff" * 1026
        dropped: set[bytes] = set()
        for key in request.deletes:
            wb.delete(key, cf)
            self._drop_voted(wb, key, dropped)
        ranges = [(p, keys.prefix_end(p) or p + beyond) for p in request.delete_prefixes]
        ranges += [(r.start, r.end or beyond) for r in request.delete_ranges]
        for start, end in ranges:
            for key in self._voted_records(start, end):
                self._drop_voted(wb, key, dropped)
            wb.delete_range(start, end, cf)
        for entry in request.puts:
            if entry.key.startswith(keys.VOTED_RECORD_PREFIX):
                self._put_voted(wb, entry.key, entry.value, dropped)
            else:
                wb.put(entry.key, entry.value, cf)
        self._apply(wb, self._written)

    # A voted batch's record (a consensus-state key under ``batch/``) is stored split: its
    # bodies under voted(K) in ``default``, the rest under K. A vertex finalized from it
    # points at its body, which is then kept when the record is deleted (docs/storage.md,
    # "Bodies stored once"). Reads give back the record byte for byte.

    def _put_voted(self, wb: WriteBatch, key: bytes, value: bytes, dropped: set[bytes]) -> None:
        self._drop_voted(wb, key, dropped)
        prefix = keys.voted(key)
        split = split_voted(value)
        final = self._db.get(keys.voted_final_key(prefix), read_opt=self._read_uncached)
        final = final is not None
        if split is None or final:  # not a voted batch, or its bodies are finalized (fixed)
            wb.put(key, value, self._handle[keys.CONSENSUS_STATE])
            return
        head, bodies = split
        wb.put(key, head, self._handle[keys.CONSENSUS_STATE])
        wb.put(keys.voted_split_key(prefix), keys.u32(len(bodies)))
        for index, body in enumerate(bodies):
            wb.put(keys.voted_body_key(prefix, index), body)

    def _drop_voted(self, wb: WriteBatch, key: bytes, dropped: set[bytes]) -> None:
        """Remove what the record ``key`` stored apart, but bodies that vertices point at."""
        if not key.startswith(keys.VOTED_RECORD_PREFIX) or key in dropped:
            return
        dropped.add(key)
        prefix = keys.voted(key)
        split_key = keys.voted_split_key(prefix)
        count = self._db.get(split_key, read_opt=self._read_uncached)
        if count is None:
            return  # stored whole, or absent
        final_key = keys.voted_final_key(prefix)
        final = self._db.get(final_key, read_opt=self._read_uncached)
        if final is None:  # the split mark and every body; nothing points at them
            wb.delete_range(split_key, final_key)
            return
        wb.delete(split_key)
        for index in self._unpointed(prefix, keys.read_u64(final), keys.read_u32(count)):
            wb.delete(keys.voted_body_key(prefix, index))

    def _release_body(self, h: bytes, wb: WriteBatch) -> None:
        """Vertex ``h``'s stored copy is about to be replaced: delete the body it points at
        if that body's record is gone (its count deleted), since nothing else points at it.
        While the record is there, its deletion will find the body no longer pointed at
        (:meth:`_unpointed`)."""
        raw = self._cf[keys.VERTICES].get(h, read_opt=self._read_uncached)
        if raw is None:
            return
        body_key = storage_pb2.StoredVertex.FromString(raw).voted_body
        if not body_key:
            return
        split_key = keys.voted_split_key(keys.voted_prefix_of_body(body_key))
        if self._db.get(split_key, read_opt=self._read_uncached) is None:
            wb.delete(body_key)

    def _unpointed(self, prefix: bytes, seq: int, count: int) -> list[int]:
        """The bodies of the split record ``prefix``, finalized at ``seq``, that no vertex
        points at any more: a copy rejected as a duplicate of its batch, one stored as its
        fields, one whose content a later batch finalized (the vertex then points there).
        Without them, a client sending copies of one content to several nodes would leave
        a body on every replica's disk for ever. Read in the writer's turn: no write can
        come between the check and the deletion, and a body once no longer pointed at is
        never pointed at again (a record put again after ``seq`` is stored whole)."""
        record = self._stored_batch(seq, self._read_uncached)
        if record is None or len(record.results) != count:
            return []  # not the batch it was finalized as: keep them all
        hashes = [r.hash for r in record.results]
        values = self._uncached(self._cf[keys.VERTICES], hashes)
        return [
            index
            for index, value in enumerate(values)
            if value != stored_pointer(keys.voted_body_key(prefix, index))
        ]

    def _voted_records(self, start: bytes, end: bytes) -> list[bytes]:
        """The voted batches' record keys in [start, end)."""
        low = max(start, keys.VOTED_RECORD_PREFIX)
        high = min(end, keys.prefix_end(keys.VOTED_RECORD_PREFIX) or end)
        if low >= high:
            return []
        return [k for k, _ in self._scan(keys.CONSENSUS_STATE, low, high, 1 << 62)]

    def _voted_bodies(self, key: bytes) -> list[bytes] | None:
        """The bodies of the record ``key`` if it is stored split."""
        if not key.startswith(keys.VOTED_RECORD_PREFIX):
            return None
        prefix = keys.voted(key)
        raw = self._db.get(keys.voted_split_key(prefix), read_opt=self._read_uncached)
        if raw is None:
            return None
        wanted = [keys.voted_body_key(prefix, i) for i in range(keys.read_u32(raw))]
        bodies = self._uncached(self._db, wanted)
        found = [body for body in bodies if body is not None]
        if len(found) != len(wanted):
            raise _BodyMissing(next(k for k, b in zip(wanted, bodies, strict=True) if b is None))
        return found

    @_reading
    def read_voted(self, key: bytes) -> VotedRecord | None:
        """The consensus-state record ``key``, its bodies apart when it is stored split."""
        return self._read_voted(key)

    def _read_voted(self, key: bytes) -> VotedRecord | None:
        for _ in range(3):
            value: bytes | None = self._cf[keys.CONSENSUS_STATE].get(
                key, read_opt=self._read_uncached
            )
            if value is None:
                return None
            record = self._joined(key, value)
            if record is not None:
                return record
        raise Aborted(f"the consensus-state record {key!r} changed while it was read; retry")

    def _joined(self, key: bytes, value: bytes) -> VotedRecord | None:
        """``value``, read under ``key``, with its bodies if it is stored split; None if
        ``key`` changed in the meantime (the caller reads it again).

        A record's value, its count and its bodies are written and deleted in one write,
        but read one after the other: a write in between (the record deleted, put again,
        or its batch's unneeded bodies removed) would join parts of two states, or make a
        body look lost. Reading the value again after the bodies tells: a write that
        changes the count or the bodies changes the value too (deleted, or put whole)."""
        if not key.startswith(keys.VOTED_RECORD_PREFIX):
            return VotedRecord(value, None)  # stored whole: one read
        try:
            bodies: list[bytes] | _BodyMissing | None = self._voted_bodies(key)
        except _BodyMissing as missing:
            bodies = missing
        if self._cf[keys.CONSENSUS_STATE].get(key, read_opt=self._read_uncached) != value:
            return None
        if isinstance(bodies, _BodyMissing):
            raise ReadFailed(
                f"the database at {self.path} is damaged: a body of the voted batch "
                f"{key!r} is missing; {REMEDY}"
            )
        return VotedRecord(value, bodies)

    @_reading
    def append_evidence(
        self, request: storage_pb2.AppendEvidenceRequest, *, now_ms: int
    ) -> tuple[int, bool]:
        """Record evidence once; returns (id, duplicate). The request passed check_evidence."""
        self._check_writable()
        evidence = request.evidence
        digest = evidence_digest(evidence)
        cf = self._cf[keys.EVIDENCE]
        known = cf.get(keys.evidence_digest_key(digest), read_opt=self._read)
        if known is not None:
            return keys.read_u64(known), True
        written = self._written
        evidence_id = written.evidence + 1
        record = storage_pb2.EvidenceRecord(
            id=evidence_id,
            digest=digest,
            offender=evidence.first.signer,
            kind=request.kind,
            evidence=evidence,
            recorded_ms=now_ms,
        )
        handle = self._handle[keys.EVIDENCE]
        wb = WriteBatch(raw_mode=True)
        wb.put(keys.evidence_key(evidence_id), record.SerializeToString(), handle)
        wb.put(keys.evidence_digest_key(digest), keys.u64(evidence_id), handle)
        self._apply(wb, dataclasses.replace(written, evidence=evidence_id))
        return evidence_id, False

    def checkpoint(self, target: Path) -> DatabaseInfo:
        """A consistent RocksDB checkpoint in ``target`` (which must not exist). Writer thread."""
        self._check_writable()
        if self.dirty:
            self.sync()
        target = Path(target)
        if not target.is_absolute():
            raise InvalidArgument(f"path: {target} is not absolute")
        if target.exists():
            raise AlreadyExists(
                f"path: {target} already exists; a backup goes into a new directory"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            Checkpoint(self._db).create_checkpoint(str(target))
        except Exception as exc:
            raise BackupFailed(f"backup into {target} failed: {exc}") from None
        return dataclasses.replace(self.info(), path=target)

    # ------------------------------------------------------------------ reads (any thread)

    def _metas(self, hashes: Sequence[bytes]) -> list[storage_pb2.StoredVertexMeta | None]:
        if not hashes:
            return []
        raws = self._multi_get(keys.METADATA, hashes)
        return [
            None if raw is None else storage_pb2.StoredVertexMeta.FromString(raw) for raw in raws
        ]

    def _multi_get(self, cf_name: str, wanted: Sequence[bytes]) -> list[bytes | None]:
        return self._get_many(self._cf[cf_name], wanted)

    def _uncached(self, source: Rdict, wanted: Sequence[bytes]) -> list[bytes | None]:
        """``wanted``'s values, read without filling the block cache: what storage reads
        for its own bookkeeping (a voted batch's bodies and record, checked and pointed at
        once; what a deletion must keep). In the cache they took its 32 MiB within
        minutes at 306 vertices/s, storage's memory, for blocks no client reads next. One
        by one: rocksdict's multi-get fills the cache whatever its options say."""
        read = self._read_uncached
        return [source.get(key, read_opt=read) for key in wanted]

    def _get_many(
        self, source: Rdict, wanted: Sequence[bytes], read_opt: ReadOptions | None = None
    ) -> list[bytes | None]:
        if not wanted:
            return []
        got = source.get(list[Any](wanted), read_opt=self._read if read_opt is None else read_opt)
        assert isinstance(got, list)
        return got

    def _visible(self, meta: storage_pb2.StoredVertexMeta | None) -> bool:
        return meta is not None and meta.seq <= self.published.last_seq

    def _stored_batch(
        self, seq: int, read_opt: ReadOptions | None = None
    ) -> storage_pb2.StoredBatch | None:
        read = self._read if read_opt is None else read_opt
        raw = self._cf[keys.FINALIZED].get(keys.seq_key(seq), read_opt=read)
        return None if raw is None else storage_pb2.StoredBatch.FromString(raw)

    def _certificate(self, seq: int) -> vertex_pb2.FinalityCertificate:
        record = self._stored_batch(seq)
        if record is None:  # never cached: lru_cache does not keep exceptions
            raise DatabaseCorrupt(f"the database at {self.path}: finalized entry {seq} is missing")
        return record.header.certificate

    def _certificates(self, seqs: Iterable[int]) -> dict[int, vertex_pb2.FinalityCertificate]:
        """Certificates of published batches (immutable, so cached: see __init__)."""
        return {seq: self._certificate_cache(seq) for seq in set(seqs)}

    @_reading
    def exists(self, h: bytes) -> bool:
        """Whether a vertex is stored (and published)."""
        return self._visible(self._metas([h])[0])

    def _records(
        self,
        hashes: Sequence[bytes],
        metas: Sequence[storage_pb2.StoredVertexMeta | None],
        *,
        bodies: bool,
        certificates: bool,
    ) -> list[vertex_pb2.VertexRecord]:
        """Records for visible ``metas``; an invisible one gives hash + UNSPECIFIED."""
        visible = [self._visible(m) for m in metas]
        raws: list[Any] = [None] * len(hashes)
        if bodies:
            wanted = [h for h, ok in zip(hashes, visible, strict=True) if ok]
            it = iter(self._multi_get(keys.VERTICES, wanted))
            raws = [next(it) if ok else None for ok in visible]
        certs = (
            self._certificates(m.seq for m, ok in zip(metas, visible, strict=True) if ok and m)
            if certificates
            else {}
        )
        out = []
        for h, meta, ok, raw in zip(hashes, metas, visible, raws, strict=True):
            if not ok or meta is None:
                out.append(vertex_pb2.VertexRecord(hash=h, status=UNSPECIFIED))
                continue
            record = vertex_pb2.VertexRecord(
                hash=h,
                status=meta.status,
                seq=meta.seq,
                height=meta.height,
                reject_reason=meta.reject_reason,
            )
            if raw is not None:
                self.decode_vertex(h, raw, record.vertex)
            if meta.seq in certs:
                record.certificate.CopyFrom(certs[meta.seq])
            out.append(record)
        return out

    @_reading
    def get_vertex(self, h: bytes, *, certificate: bool = True) -> vertex_pb2.VertexRecord | None:
        metas = self._metas([h])
        if not self._visible(metas[0]):
            return None
        return self._records([h], metas, bodies=True, certificates=certificate)[0]

    @_reading
    def vertex_statuses(self, hashes: Sequence[bytes]) -> list[vertex_pb2.VertexRecord]:
        return self._records(hashes, self._metas(hashes), bodies=False, certificates=False)

    @_reading
    def parents(self, h: bytes, *, certificates: bool) -> list[vertex_pb2.VertexRecord] | None:
        record = self.get_vertex(h, certificate=False)
        if record is None:
            return None
        parents = list(record.vertex.parents)
        return self._records(parents, self._metas(parents), bodies=True, certificates=certificates)

    def _scan(
        self, cf_name: str, start: bytes, end: bytes | None, limit: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, value) pairs with start <= key < end, in order."""
        it = self._cf[cf_name].iter(self._read)
        it.seek(start)
        count = 0
        while count < limit and it.valid():
            key = it.key()
            if end is not None and key >= end:
                break
            yield key, it.value()
            count += 1
            it.next()
        if not it.valid():  # the end, or a block it could not read: RocksDB tells which
            _check_iterator(it, f"{self.path}, column family {cf_name}")
        del it

    @_reading
    def children(
        self, h: bytes, *, after: bytes | None, limit: int, certificates: bool
    ) -> list[vertex_pb2.VertexRecord]:
        start = keys.successor(h + after) if after else h
        end = keys.prefix_end(h)
        hashes = [key[keys.HASH_SIZE :] for key, _ in self._scan(keys.EDGES, start, end, limit)]
        metas = self._metas(hashes)
        records = self._records(hashes, metas, bodies=True, certificates=certificates)
        return [r for r in records if r.status != UNSPECIFIED]

    def _position_of(self, h: bytes, what: str) -> tuple[int, int, int]:
        meta = self._metas([h])[0]
        if meta is None or not self._visible(meta) or meta.status != FINALIZED:
            raise InvalidArgument(f"{what}: {h.hex()} is not a finalized vertex")
        return meta.height, meta.seq, meta.index

    def _by_index(
        self,
        cf_name: str,
        start: bytes,
        end: bytes | None,
        limit: int,
        certificates: bool,
    ) -> tuple[list[vertex_pb2.VertexRecord], bytes | None]:
        """One page of an index; returns the records and the key to continue from (or None)."""
        cap = self.published.last_seq
        hashes, last_key, seen = [], None, 0
        for key, value in self._scan(cf_name, start, end, limit):
            seen += 1
            last_key = key
            if keys.read_u64(key[8:16]) <= cap:
                hashes.append(value)
        metas = self._metas(hashes)
        records = self._records(hashes, metas, bodies=True, certificates=certificates)
        more = keys.successor(last_key) if last_key is not None and seen == limit else None
        return [r for r in records if r.status != UNSPECIFIED], more

    @_reading
    def by_height(
        self,
        *,
        start: bytes,
        end: bytes | None,
        limit: int,
        certificates: bool,
    ) -> tuple[list[vertex_pb2.VertexRecord], bytes | None]:
        return self._by_index(keys.INDEX_HEIGHT, start, end, limit, certificates)

    @_reading
    def by_time(
        self,
        *,
        start: bytes,
        end: bytes | None,
        limit: int,
        certificates: bool,
    ) -> tuple[list[vertex_pb2.VertexRecord], bytes | None]:
        return self._by_index(keys.INDEX_TIMESTAMP, start, end, limit, certificates)

    @_reading
    def height_cursor(self, after: bytes) -> bytes:
        height, seq, index = self._position_of(after, "after")
        return keys.successor(keys.position_key(height, seq, index))

    @_reading
    def time_cursor(self, after: bytes) -> bytes:
        _, seq, index = self._position_of(after, "after")
        body = self._cf[keys.VERTICES].get(after, read_opt=self._read)
        assert body is not None
        timestamp = self.decode_vertex(after, body).timestamp_ms
        return keys.successor(keys.position_key(timestamp, seq, index))

    @_reading
    def finalized_entry(self, seq: int, *, vertices: bool) -> storage_pb2.FinalizedEntry | None:
        if seq < 1 or seq > self.published.last_seq:
            return None
        record = self._stored_batch(seq)
        if record is None:
            raise DatabaseCorrupt(f"the database at {self.path}: finalized entry {seq} is missing")
        entry = storage_pb2.FinalizedEntry(batch=record.header)
        batch = entry.batch
        hashes = [r.hash for r in record.results]
        if vertices and hashes:
            raws = self._multi_get(keys.VERTICES, hashes)
            for raw, r in zip(raws, record.results, strict=True):
                assert raw is not None, "a finalized batch's vertex is missing"
                vertex = self.decode_vertex(r.hash, raw, batch.vertices.add())
                if r.rejected and r.signature:  # the exact copy executed here
                    vertex.signature = r.signature
        for r in record.results:
            entry.results.add(
                hash=r.hash,
                status=REJECTED if r.rejected else FINALIZED,
                seq=seq,
                height=r.height,
                reject_reason=r.reject_reason,
            )
        return entry

    @_reading
    def get_state(self, key: bytes) -> bytes | None:
        """One consensus-state value (read directly, as :meth:`scan_state` reads)."""
        record = self._read_voted(key)
        return None if record is None else record.whole()

    @_reading
    def scan_state(
        self, prefix: bytes, *, after: bytes | None, limit: int
    ) -> list[storage_pb2.StateEntry]:
        """One page of the keys under ``prefix``: at most ``limit`` entries, and at most
        :data:`STATE_PAGE_BYTES` of keys and values, or one entry alone when it is larger
        by itself (so a page is at most the bound or a single entry, and every entry can be
        read). Never empty while keys remain: the caller resumes after the last key
        returned."""
        start = keys.successor(after) if after and after >= prefix else prefix
        end = keys.prefix_end(prefix) if prefix else None
        out: list[storage_pb2.StateEntry] = []
        size = 0
        for key, value in self._scan(keys.CONSENSUS_STATE, start, end, limit):
            record = self._joined(key, value) or self._read_voted(key)
            if record is None:
                continue  # deleted since the scan began
            value = record.whole()
            entry_size = len(key) + len(value)
            if out and size + entry_size > STATE_PAGE_BYTES:
                break  # it starts the next page
            out.append(storage_pb2.StateEntry(key=key, value=value))
            size += entry_size
            if size >= STATE_PAGE_BYTES:
                break
        return out

    def verify(self, progress: Callable[[int], None] | None = None) -> int:
        """Read every key and value of every column family, each table block's checksum
        verified, bypassing the block cache; returns how many keys were read, raises
        :class:`DatabaseCorrupt` at the first damaged block. ``progress(keys)`` is called
        every :data:`VERIFY_PROGRESS_KEYS` keys.

        Opening a database reads its MANIFEST, the table files' footers and indexes, never
        their data blocks: a storage audit (2026-12-04) had a backup of a database with a
        damaged block "verified" by opening it, restored, and the node down at its first
        read of that block.

        A vertex stored as a pointer to its body ([bodies stored once]) must find that
        body: one missing is damage too."""
        options = read_options()
        options.fill_cache(False)  # type: ignore[call-arg]  # rocksdict's stub lacks it
        keys_read = 0
        pointers: list[bytes] = []
        for name, source in (("default", self._db), *self._cf.items()):
            it = source.iter(options)
            it.seek_to_first()
            while it.valid():
                value = it.value()
                if name == keys.VERTICES and value[:1] == b"\x1a":  # voted_body only
                    pointers.append(storage_pb2.StoredVertex.FromString(value).voted_body)
                    if len(pointers) >= VERIFY_POINTER_BATCH:
                        self._check_pointers(pointers, options)
                        pointers.clear()
                keys_read += 1
                if progress is not None and keys_read % VERIFY_PROGRESS_KEYS == 0:
                    progress(keys_read)
                it.next()
            try:
                it.status()  # the end, or a block it could not read
            except Exception as exc:
                raise DatabaseCorrupt(
                    f"the database at {self.path}, column family {name}, is damaged: {exc}"
                ) from None
            finally:
                del it
        self._check_pointers(pointers, options)
        return keys_read

    def _check_pointers(self, body_keys: list[bytes], options: ReadOptions) -> None:
        got = self._get_many(self._db, body_keys, options)
        for key, body in zip(body_keys, got, strict=True):
            if body is None:
                raise DatabaseCorrupt(
                    f"the database at {self.path} is damaged: a finalized vertex's body "
                    f"({key!r}) is missing"
                )

    def disk_bytes(self) -> int:
        return dir_bytes(self.path)

    def stats(self) -> storage_pb2.StorageStats:
        counters = self.published
        stats = storage_pb2.StorageStats(
            last_seq=counters.last_seq,
            vertices=counters.vertices,
            finalized_vertices=counters.finalized_vertices,
            rejected_vertices=counters.rejected_vertices,
            edges=counters.edges,
            evidence=counters.evidence,
            disk_bytes=self.disk_bytes(),
            path=str(self.path),
            schema_version=self.schema_version,
            halted=self.halt_reason is not None,
            halt_reason=self.halt_reason or "",
        )
        owner = self.owner()
        if owner is not None:
            stats.owner_node = owner.node
            stats.owner_key = owner.key_fingerprint
            stats.owner_validator_set = owner.validator_set
        for name in keys.COLUMN_FAMILIES:
            cf = self._cf[name]
            stats.column_families.add(
                name=name,
                estimated_keys=cf.property_int_value("rocksdb.estimate-num-keys") or 0,
                sst_bytes=cf.property_int_value("rocksdb.total-sst-files-size") or 0,
                memtable_bytes=cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0,
            )
        return stats

    def memory_bytes(self) -> RocksMemory:
        """RocksDB's memory: all memtables (every column family's, under the write buffer
        manager's cap), the block cache's usage (one cache shared by our column families,
        which holds their index and filter blocks too) and what the SST readers hold
        outside the cache; zeros once closed."""
        if self._closed:
            return RocksMemory(0, 0, 0)
        families = [self._db, *(self._cf[name] for name in keys.COLUMN_FAMILIES)]
        memtables = sum(
            cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0 for cf in families
        )
        readers = sum(
            cf.property_int_value("rocksdb.estimate-table-readers-mem") or 0 for cf in families
        )
        # one cache, shared by every column family (options.open_options)
        cache = families[1].property_int_value("rocksdb.block-cache-usage") or 0
        return RocksMemory(memtables, cache, readers)


class RocksMemory(NamedTuple):
    """Bytes of RocksDB's memory (:meth:`Store.memory_bytes`)."""

    memtables: int
    block_cache: int
    table_readers: int


def open_in_this_process(path: Path) -> bool:
    """Whether this process holds ``path`` open for writing (RocksDB's LOCK cannot tell)."""
    with _OPEN_LOCK:
        return Path(path).absolute() in _OPEN_PATHS


@dataclass(frozen=True)
class Owner:
    """The validator a database belongs to: its node's name (for messages) and a
    fingerprint of its public key (what is compared: a renamed node keeps its database)."""

    node: str
    key_fingerprint: str
    #: The cluster's validator set (``NodeConfig.validator_set_digest``, 32 hex digits):
    #: empty in stamps written before 2026-12-04 and where a caller does not know it.
    validator_set: str = ""
    #: How many validators that set has (for messages).
    validators: int = 0

    @classmethod
    def of(cls, node: str, public_key: bytes) -> Owner:
        return cls(node, hashlib.sha3_256(public_key).hexdigest()[:32])

    @classmethod
    def of_node(cls, cfg: NodeConfig) -> Owner:
        """The node of ``cfg``: its name, its validator key and its validator set."""
        owner = cls.of(cfg.node.name, cfg.validators[cfg.replica_index].public_key_bytes)
        return dataclasses.replace(
            owner, validator_set=cfg.validator_set_digest[:32], validators=len(cfg.validators)
        )

    def to_bytes(self) -> bytes:
        record: dict[str, object] = {"node": self.node, "key_sha3": self.key_fingerprint}
        if self.validator_set:
            record |= {"validator_set": self.validator_set, "validators": self.validators}
        return json.dumps(record).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Owner:
        try:
            value = json.loads(raw)
            node, fingerprint = value["node"], value["key_sha3"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not an owner record ({exc})") from None
        if not isinstance(node, str) or not isinstance(fingerprint, str):
            raise ValueError("not an owner record (node and key_sha3 must be strings)")
        validator_set, validators = value.get("validator_set", ""), value.get("validators", 0)
        if not isinstance(validator_set, str) or not isinstance(validators, int):
            raise ValueError("not an owner record (validator_set, validators)")
        return cls(node, fingerprint, validator_set, validators)


def now_ms() -> int:
    return int(time.time() * 1000)


def write_backup_manifest(info: DatabaseInfo, *, node: str, source: Path) -> None:
    """Describe a backup beside its RocksDB files (:data:`BACKUP_MANIFEST`, read by restore)."""
    manifest = {
        "format": 1,
        "node": node,
        "source": str(source),
        "last_seq": info.last_seq,
        "vertices": info.vertices,
        "schema_version": info.schema_version,
        "created_ms": now_ms(),
    }
    (info.path / BACKUP_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def inspect(path: Path) -> DatabaseInfo:
    """Open ``path`` read-only (no lock, no writes) and describe it; :class:`DatabaseError`."""
    store = Store.open(path, create=False, read_only=True)
    try:
        return store.info()
    finally:
        store.close()


def verify(path: Path, progress: Callable[[int], None] | None = None) -> tuple[DatabaseInfo, int]:
    """Open ``path`` read-only and read all of it (:meth:`Store.verify`): what it holds and
    how many keys were read; :class:`DatabaseError`, :class:`DatabaseCorrupt` for damage."""
    store = Store.open(path, create=False, read_only=True)
    try:
        return store.info(), store.verify(progress)
    finally:
        store.close()


__all__ = [
    "BACKUP_MANIFEST",
    "CommitOutcome",
    "Counters",
    "DatabaseInfo",
    "Owner",
    "Store",
    "VotedRecord",
    "WriteFailed",
    "decode_vertex",
    "dir_bytes",
    "evidence_digest",
    "inspect",
    "join_voted",
    "now_ms",
    "open_in_this_process",
    "split_voted",
    "stored_pointer",
    "stored_vertex",
    "verify",
    "write_backup_manifest",
]
