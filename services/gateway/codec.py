"""JSON for the REST and WebSocket APIs: parsing submissions, rendering records and batches.

Byte strings are lower-case hex (hashes, keys, signatures, certificates), except
vertex payloads, which are standard base64 (RFC 4648 §4, with padding).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import orjson

from cretoai.v1 import consensus_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import HASH_SIZE, MAX_PARENTS
from services.gateway.errors import ApiError

#: What a hex field may hold (ASCII digits only: no whitespace, no other scripts' digits).

STATUS_NAMES = {
    vertex_pb2.VERTEX_STATUS_PENDING: "pending",
    vertex_pb2.VERTEX_STATUS_FINALIZED: "finalized",
    vertex_pb2.VERTEX_STATUS_REJECTED: "rejected",
}
SIGNING_FIELDS = ("public_key", "signature", "timestamp_ms")
SUBMIT_FIELDS = frozenset({"payload", "parents", *SIGNING_FIELDS})
BATCH_FIELDS = frozenset({"vertices"})
MAX_TIMESTAMP = 2**64 - 1


@dataclass(frozen=True, kw_only=True)
class Draft:
    """A vertex as submitted: complete when client-signed, else to be signed by the node."""

    payload: bytes
    parents: list[bytes]
    creator: bytes = b""
    signature: bytes = b""
    timestamp_ms: int = 0
    signed: bool = False
    #: Parents sent beyond MAX_PARENTS + 1, left undecoded (the vertex is refused).
    excess_parents: int = 0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are each given once: with a repeated name, what a proxy,
    a log or a client library reading the first value sees would not be what the node
    stores (the last one)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the name {_shown(name)} is repeated in an object")
            seen.add(name)
    return obj


def _shown(name: str, limit: int = 64) -> str:
    """A client's field name in a message, shortened (it may be megabytes long)."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name)} chars)"


def parse_json(raw: bytes) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, no name twice in an object); ApiError
    ``malformed_json`` otherwise."""
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_object_once
        )
    except UnicodeDecodeError:
        raise ApiError("malformed_json", "the body is not UTF-8") from None
    except RecursionError:
        raise ApiError("malformed_json", "the body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError("malformed_json", f"the body is not valid JSON: {exc}") from None


def decode_hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError("bad_request", f"{what}: expected a hex string, got {_kind(value)}")
    # binascii refuses whitespace, odd lengths and non-ASCII (bytes.fromhex would skip
    # whitespace between the digits), and is ~5x faster than a regex check first: it
    # decodes a signature's 9,254 digits in ~17 us instead of ~100 (per vertex, the
    # gateway's largest cost at saturation)
    try:
        return binascii.unhexlify(value)
    except ValueError:  # binascii.Error is one
        raise ApiError(
            "bad_hex", f"{what}: not a hex string (an even number of 0-9a-f digits)"
        ) from None


def decode_hash(value: Any, what: str) -> bytes:
    """A vertex hash: 64 hex digits."""
    raw = decode_hex(value, what)
    if len(raw) != HASH_SIZE:
        raise ApiError("bad_hex", f"{what}: {len(raw)} bytes; a vertex hash is {HASH_SIZE}")
    return raw


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def parse_submission(data: Any) -> Draft:
    """The body of ``POST /v1/vertices`` as a :class:`Draft` (ApiError 400 when malformed)."""
    if not isinstance(data, dict):
        raise ApiError("bad_request", f"the body must be a JSON object, got {_kind(data)}")
    unknown = sorted(set(data) - SUBMIT_FIELDS)
    if unknown:
        raise ApiError(
            "bad_request",
            f"unknown field {_shown(unknown[0])} (known: {', '.join(sorted(SUBMIT_FIELDS))})",
        )
    if "payload" not in data:
        raise ApiError("bad_request", "payload: missing (base64; may be empty)")
    payload = data["payload"]
    if not isinstance(payload, str):
        raise ApiError("bad_request", f"payload: expected a base64 string, got {_kind(payload)}")
    try:
        payload_bytes = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("bad_base64", "payload: not standard base64 (with padding)") from None
    parents = data.get("parents")
    if parents is None:
        parents = []
    if not isinstance(parents, list):
        raise ApiError("bad_request", f"parents: expected an array, got {_kind(parents)}")
    # More than MAX_PARENTS refuses the vertex (shape_error); decoding them all first let
    # one 4-MiB request of 838,851 parents hold the event loop for over a second
    excess = max(0, len(parents) - MAX_PARENTS - 1)
    parent_hashes = [
        decode_hex(p, f"parents[{i}]") for i, p in enumerate(parents[: MAX_PARENTS + 1])
    ]
    present = [name for name in SIGNING_FIELDS if data.get(name) is not None]
    if not present:
        return Draft(payload=payload_bytes, parents=parent_hashes, excess_parents=excess)
    if len(present) != len(SIGNING_FIELDS):
        missing = [name for name in SIGNING_FIELDS if name not in present]
        raise ApiError(
            "partial_signature",
            f"a client-signed vertex needs public_key, signature and timestamp_ms "
            f"(missing: {', '.join(missing)}); omit all three to have the node sign it",
        )
    timestamp = data["timestamp_ms"]
    if (
        not isinstance(timestamp, int)
        or isinstance(timestamp, bool)
        or not 0 <= timestamp <= MAX_TIMESTAMP
    ):
        raise ApiError(
            "bad_request", "timestamp_ms: expected an integer in [0, 2^64) (milliseconds)"
        )
    return Draft(
        payload=payload_bytes,
        parents=parent_hashes,
        creator=decode_hex(data["public_key"], "public_key"),
        signature=decode_hex(data["signature"], "signature"),
        timestamp_ms=timestamp,
        signed=True,
        excess_parents=excess,
    )


def parse_batch(data: Any, *, max_vertices: int) -> list[Draft]:
    """The body of ``POST /v1/vertices:batch``, ``{"vertices": [...]}``, each entry as the
    body of ``POST /v1/vertices`` (ApiError 400 when malformed, naming the entry)."""
    if not isinstance(data, dict):
        raise ApiError(
            "bad_request",
            f'the body must be a JSON object {{"vertices": [...]}}, got {_kind(data)}',
        )
    unknown = sorted(set(data) - BATCH_FIELDS)
    if unknown:
        raise ApiError("bad_request", f"unknown field {_shown(unknown[0])} (known: vertices)")
    if "vertices" not in data:
        raise ApiError("bad_request", "vertices: missing (an array of vertices)")
    entries = data["vertices"]
    if not isinstance(entries, list):
        raise ApiError("bad_request", f"vertices: expected an array, got {_kind(entries)}")
    if not entries:
        raise ApiError("bad_request", f"vertices: empty; send 1 to {max_vertices} per batch")
    if len(entries) > max_vertices:
        raise ApiError(
            "bad_request", f"vertices: {len(entries)} of them; at most {max_vertices} per batch"
        )
    drafts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ApiError(
                "bad_request",
                f"vertices[{i}]: expected an object (as the body of POST /v1/vertices), "
                f"got {_kind(entry)}",
            )
        try:
            drafts.append(parse_submission(entry))
        except ApiError as exc:
            raise ApiError(exc.code, f"vertices[{i}]: {exc.message}") from None
    return drafts


def parse_seq(value: str | None, what: str, *, default: int | None) -> int | None:
    """A query parameter holding a non-negative integer."""
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise ApiError("bad_request", f"{what}: expected a non-negative integer, got {value!r}")
    number = int(value)
    if number > MAX_TIMESTAMP:
        raise ApiError("bad_request", f"{what}: out of range")
    return number


def parse_bool(value: str | None, what: str) -> bool:
    if value is None or value.lower() in ("", "false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError("bad_request", f"{what}: expected true or false, got {value!r}")


# ---------------------------------------------------------------------------- rendering


def certificate_json(cert: vertex_pb2.FinalityCertificate) -> dict[str, Any] | None:
    if not cert.commits:
        return None
    return {
        "view": cert.view,
        "seq": cert.seq,
        "batch_digest": cert.batch_digest.hex(),
        "commits": [
            {"signer": c.signer, "body": c.body.hex(), "signature": c.signature.hex()}
            for c in cert.commits
        ],
    }


def vertex_json(vertex: vertex_pb2.Vertex) -> dict[str, Any]:
    return {
        "payload": base64.b64encode(vertex.payload).decode("ascii"),
        "parents": [p.hex() for p in vertex.parents],
        "public_key": vertex.creator.hex(),
        "timestamp_ms": vertex.timestamp_ms,
        "signature": vertex.signature.hex(),
    }


def _outcome_json(record: vertex_pb2.VertexRecord) -> dict[str, Any]:
    status = record.status
    executed = status in (vertex_pb2.VERTEX_STATUS_FINALIZED, vertex_pb2.VERTEX_STATUS_REJECTED)
    return {
        "hash": record.hash.hex(),
        "status": STATUS_NAMES.get(status, "unknown"),
        "seq": record.seq if executed else None,
        "height": record.height if status == vertex_pb2.VERTEX_STATUS_FINALIZED else None,
        "reject_reason": (
            record.reject_reason if status == vertex_pb2.VERTEX_STATUS_REJECTED else None
        ),
    }


def record_json(
    record: vertex_pb2.VertexRecord, certificates: dict[bytes, Any] | None = None
) -> dict[str, Any]:
    """A vertex with what this node knows about it (``GET /v1/vertices/{hash}``).

    ``certificates``: the certificates already encoded for one answer, by their bytes. The
    vertices of one PBFT batch share a certificate (three 4,627-byte signatures, 28 KB of
    hex), which a batch answer would otherwise encode once per vertex."""
    if certificates is None:
        certificate = certificate_json(record.certificate)
    else:
        key = record.certificate.SerializeToString()
        if key in certificates:
            certificate = certificates[key]
        else:
            certificate = certificates[key] = certificate_json(record.certificate)
    return {**_outcome_json(record), **vertex_json(record.vertex), "certificate": certificate}


def submitted_json(h: bytes, status: vertex_pb2.VertexStatus, duplicate: bool) -> dict[str, Any]:
    """The answer to a submission not (yet) executed: ``202`` of ``POST /v1/vertices``."""
    return {"hash": h.hex(), "status": STATUS_NAMES.get(status, "pending"), "duplicate": duplicate}


def refused_json(h: bytes | None, body: dict[str, Any]) -> dict[str, Any]:
    """A refused vertex of a batch: its hash when it had one, and the error ``body``."""
    return {"hash": h.hex() if h is not None else None, **body}


def batch_json(entry: storage_pb2.FinalizedEntry) -> dict[str, Any]:
    """One finalized batch: its vertices (records without certificate) and one certificate."""
    batch = entry.batch
    return {
        "seq": batch.seq,
        "batch_digest": batch.batch_digest.hex(),
        "state_digest": batch.state_digest.hex(),
        "certificate": certificate_json(batch.certificate),
        "vertices": [
            {**_outcome_json(result), **vertex_json(vertex)}
            for vertex, result in zip(batch.vertices, entry.results, strict=True)
        ],
        "rejected": [h.hex() for h in batch.rejected],
    }


def status_json(status: consensus_pb2.NodeStatus, services: dict[str, str]) -> dict[str, Any]:
    return {
        "node_id": status.node_id,
        "node_name": status.node_name,
        "replica": status.replica,
        "n": status.n,
        "f": status.f,
        "view": status.view,
        "primary": status.primary,
        "view_changing": status.view_changing,
        "alone_in_view": status.alone_in_view,
        "view_changes": status.view_changes,
        "last_executed_seq": status.last_executed_seq,
        "stable_checkpoint": status.stable_checkpoint,
        "pool_size": status.pool_size,
        "ready": status.ready,
        "banned": list(status.banned),
        "evidence": status.evidence,
        "peers": [
            {
                "name": p.name,
                "node_id": p.node_id,
                "replica": p.replica,
                "connected": p.connected,
                "banned": p.banned,
                "reputation": p.reputation,
                "rtt_ms": p.rtt_ms,
                "refuses_this_node": p.refuses_this_node,
            }
            for p in status.peers
        ],
        "services": services,
    }


def dumps_bytes(data: Any) -> bytes:
    """Compact JSON as UTF-8 bytes: orjson (a response of 64 vertices with their
    certificates is 2.9 MB of hex; the standard library takes 6.3 ms to write it, orjson
    0.13). A str orjson refuses (a lone surrogate, which ``json.loads`` lets through from
    a client's ``\\ud800``) is written by the standard library, escaped."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, separators=(",", ":")).encode()


def dumps(data: Any) -> str:
    return dumps_bytes(data).decode()
