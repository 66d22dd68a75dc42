"""Counting a submission's repeated fields before protobuf or JSON builds them.

Both parsers build a whole request before a handler can look at it. A 4-MiB
SubmitVertices of 2.1 million empty vertices (two bytes each) made the gateway build
about 200 MB of messages before it refused the call for holding more than 256 (four
such calls at once: 93 → 838 MB), and a 4-MiB REST batch of 1.4 million ``{}`` held
its event loop 339 ms (an audit, 2026-12-04). So the gateway counts first, in bounded
work: the gRPC requests' top-level fields and each vertex's fields on the wire, at
most a few hundred steps whatever the size; a REST body's JSON separators with
``bytes.count`` (C speed). What the walk cannot read is refused too.
"""

from __future__ import annotations

from cretoai.protowire import read_varint
from cretoai.serving import RequestRefused
from cretoai.v1 import gateway_pb2
from cretoai.vertex import MAX_PARENTS
from services.gateway.errors import ApiError

#: Fields besides the parents an honest vertex holds (payload, creator, timestamp,
#: signature), with room for unknown ones, which the gateway discards.
_VERTEX_OTHER_FIELDS = 16
#: Top-level fields of a request besides its vertices (``wait``), with room.
_REQUEST_OTHER_FIELDS = 16
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Malformed(Exception):
    """Not protobuf as a client of this API sends it: refused too. Handing it to the
    parser let a group (wire types 3 and 4, which the parser skips as an unknown field)
    in front of 2 million empty vertices past the walk (a review, 2026-12-04)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(buf, pos)
    except ValueError:
        raise _Malformed("a truncated or overlong varint") from None


def _fields(buf: bytes, start: int, end: int, limit: int, what: str) -> list[tuple[int, int, int]]:
    """(field number, start, end of its value) of each field in ``buf[start:end]``;
    RequestRefused beyond ``limit`` fields (without walking the rest)."""
    fields: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        if len(fields) == limit:
            raise RequestRefused(f"{what}: more than {limit} fields")
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, value_end = _varint(buf, pos)
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            value_end = pos + size
        elif wire == _I64:
            value_end = pos + 8
        elif wire == _I32:
            value_end = pos + 4
        else:
            raise _Malformed(f"field {number}: wire type {wire} (groups are not sent here)")
        if value_end > end:
            raise _Malformed(f"field {number}: runs past the end of its message")
        fields.append((number, pos, value_end))
        pos = value_end
    return fields


def _check_vertex(buf: bytes, start: int, end: int, what: str) -> None:
    fields = _fields(buf, start, end, MAX_PARENTS + 1 + _VERTEX_OTHER_FIELDS, what)
    parents = sum(1 for number, _, _ in fields if number == 2)
    if parents > MAX_PARENTS:
        raise RequestRefused(f"{what}: {parents} parents; the limit is {MAX_PARENTS}")


def _vertices(raw: bytes, max_vertices: int) -> list[tuple[int, int]]:
    """Where each occurrence of field 1 (the vertex, or vertices) lies."""
    limit = max_vertices + _REQUEST_OTHER_FIELDS
    what = f"request (at most {max_vertices} vert{'ices' if max_vertices > 1 else 'ex'})"
    fields = _fields(raw, 0, len(raw), limit, what)
    return [(start, end) for number, start, end in fields if number == 1]


def submit_request(raw: bytes) -> gateway_pb2.GatewaySubmitRequest:
    """``GatewaySubmitRequest.FromString``, refusing a vertex of too many parents (or a
    request of too many fields) before it is built."""
    try:
        vertices = _vertices(raw, 1)
        if len(vertices) > 1:  # protobuf would merge them; no client means to
            raise RequestRefused(f"vertex: sent {len(vertices)} times; send it once")
        for start, end in vertices:
            _check_vertex(raw, start, end, "vertex")
    except _Malformed as exc:
        raise RequestRefused(f"request: {exc}") from None
    return gateway_pb2.GatewaySubmitRequest.FromString(raw)


def submit_batch_request(raw: bytes, max_vertices: int) -> gateway_pb2.GatewaySubmitBatchRequest:
    """``GatewaySubmitBatchRequest.FromString``, refusing more than ``max_vertices``
    vertices, or a vertex of too many parents, before they are built."""
    try:
        vertices = _vertices(raw, max_vertices)
        if len(vertices) > max_vertices:
            raise RequestRefused(
                f"vertices: {len(vertices)} of them or more; at most {max_vertices} per batch"
            )
        for i, (start, end) in enumerate(vertices):
            _check_vertex(raw, start, end, f"vertices[{i}]")
    except _Malformed as exc:
        raise RequestRefused(f"request: {exc}") from None
    return gateway_pb2.GatewaySubmitBatchRequest.FromString(raw)


def check_json_size(raw: bytes, *, vertices: int) -> None:
    """Refuse a JSON body holding more values than ``vertices`` vertices can, before
    it is parsed. Commas count them: a vertex is an object of a few names and one array
    of at most MAX_PARENTS hashes, base64 and hex hold none, and values nested without
    commas are bounded by the parser's depth limit (a malformed body)."""
    most = vertices * (MAX_PARENTS + _VERTEX_OTHER_FIELDS) + _REQUEST_OTHER_FIELDS
    found = raw.count(b",")
    if found > most:
        raise ApiError(
            "bad_request",
            f"the body holds more JSON values than {vertices} vertices can ({found} commas, "
            f"at most {most})",
        )


#: JSON objects a single submission's body may hold (the vertex is one).
SINGLE_BODY_OBJECTS = 16


def check_json_objects(raw: bytes, *, most: int = SINGLE_BODY_OBJECTS) -> None:
    """Refuse a single submission's JSON body of more than ``most`` objects before it is
    parsed: each costs the strict parser a Python call, and 1 MiB of ``[{},...]`` is
    350,000 of them (a review, 2026-12-04). Arrays of strings (a vertex's parents past
    their limit) stay cheap and are refused by their count after parsing."""
    found = raw.count(b"{")
    if found > most:
        raise ApiError(
            "bad_request", f"the body holds {found} JSON objects; a vertex is one (at most {most})"
        )
