"""Column families and key encodings (docs/storage.md lists them all).

Integers are big-endian and fixed-width, so that RocksDB's bytewise order is
numeric order and range scans iterate in order. ``‖`` is concatenation.

======================  =======================================  ==========================
column family           key                                      value
======================  =======================================  ==========================
``default``             ``b"schema_version"``                    u32
``default``             ``b"counters"``                          ``StoredCounters``
``default``             ``b"creator/"`` ‖ SHA3-256(key) (32)     the creator's public key
``default``             voted(K) ‖ ``00``                        u32: K is stored split
``default``             voted(K) ‖ ``01`` ‖ index u32            a body of the record K
``default``             voted(K) ‖ ``02``                        u64 seq: K's bodies are
                                                                 finalized (kept for ever)
``vertices``            hash (32)                                ``StoredVertex``
``metadata``            hash (32)                                ``StoredVertexMeta``
``edges``               parent (32) ‖ child (32)                 empty
``index_height``        height u64 ‖ seq u64 ‖ index u32         hash (32)
``index_timestamp``     timestamp_ms u64 ‖ seq u64 ‖ index u32   hash (32)
``finalized``           seq u64                                  ``StoredBatch``
``consensus_state``     the caller's key (1..1024 bytes)         the caller's value
``evidence``            ``b"e"`` ‖ id u64                        ``EvidenceRecord``
``evidence``            ``b"d"`` ‖ digest (32)                   id u64
======================  =======================================  ==========================

``voted(K)`` is ``b"voted/"`` ‖ len(K) u16 ‖ K, for a consensus-state key K under
``b"batch/"``: a voted batch's bodies are stored once, beside its record, and the
vertices finalized from it point at them (docs/storage.md, "Bodies stored once").
Schema version 2 has those keys and ``StoredVertex.voted_body``; version 1 databases
are read as they are and marked 2 when opened for writing.
"""

from __future__ import annotations

import struct

HASH_SIZE = 32
SCHEMA_VERSION = 2
#: Versions this build opens (1: before bodies were stored once; nothing to convert).
READABLE_SCHEMA_VERSIONS = (1, 2)

DEFAULT = "default"
VERTICES = "vertices"
METADATA = "metadata"
EDGES = "edges"
INDEX_HEIGHT = "index_height"
INDEX_TIMESTAMP = "index_timestamp"
FINALIZED = "finalized"
CONSENSUS_STATE = "consensus_state"
EVIDENCE = "evidence"

#: Every column family this schema uses (``default`` always exists).
COLUMN_FAMILIES = (
    VERTICES,
    METADATA,
    EDGES,
    INDEX_HEIGHT,
    INDEX_TIMESTAMP,
    FINALIZED,
    CONSENSUS_STATE,
    EVIDENCE,
)

SCHEMA_VERSION_KEY = b"schema_version"
COUNTERS_KEY = b"counters"
#: The validator whose database this is (:class:`services.storage.store.Owner`, JSON).
OWNER_KEY = b"owner"

CREATOR_PREFIX = b"creator/"
#: Creator keys at least this long are stored once and referenced (shorter ones inline).
CREATOR_INTERN_BYTES = 64

#: The consensus-state keys whose VotedBatch records are stored split (docs/storage.md).
VOTED_RECORD_PREFIX = b"batch/"
VOTED_PREFIX = b"voted/"
_VOTED_SPLIT = b"\x00"
_VOTED_BODY = b"\x01"
_VOTED_FINAL = b"\x02"

EVIDENCE_RECORD_PREFIX = b"e"
EVIDENCE_DIGEST_PREFIX = b"d"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_POSITION = struct.Struct(">QQI")

U64_MAX = 2**64 - 1


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u32(raw: bytes) -> int:
    return int(_U32.unpack(raw)[0])


def read_u64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


def seq_key(seq: int) -> bytes:
    """``finalized`` key of a batch."""
    return _U64.pack(seq)


def edge_key(parent: bytes, child: bytes) -> bytes:
    return parent + child


def position_key(leading: int, seq: int, index: int) -> bytes:
    """``index_height`` / ``index_timestamp`` key: height or timestamp, then seq, then index."""
    return _POSITION.pack(leading, seq, index)


def creator_key(creator_id: bytes) -> bytes:
    return CREATOR_PREFIX + creator_id


def voted(record_key: bytes) -> bytes:
    """The ``default`` prefix of everything stored for the consensus-state record."""
    return VOTED_PREFIX + _U16.pack(len(record_key)) + record_key


def voted_split_key(voted_prefix: bytes) -> bytes:
    return voted_prefix + _VOTED_SPLIT


def voted_body_key(voted_prefix: bytes, index: int) -> bytes:
    return voted_prefix + _VOTED_BODY + _U32.pack(index)


def voted_final_key(voted_prefix: bytes) -> bytes:
    return voted_prefix + _VOTED_FINAL


def voted_prefix_of_body(body_key: bytes) -> bytes:
    """The prefix of the record whose body is stored under ``body_key``."""
    return body_key[: -len(_VOTED_BODY) - _U32.size]


def evidence_key(evidence_id: int) -> bytes:
    return EVIDENCE_RECORD_PREFIX + _U64.pack(evidence_id)


def evidence_digest_key(digest: bytes) -> bytes:
    return EVIDENCE_DIGEST_PREFIX + digest


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def successor(key: bytes) -> bytes:
    """The smallest key strictly greater than ``key``."""
    return key + b"\x00"
