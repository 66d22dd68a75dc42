"""Gateway errors and the one place that maps them to HTTP and gRPC status codes.

Every failure the gateway reports is an :class:`ApiError` with a stable
machine-readable ``code``. :data:`CODES` gives each code its HTTP status and
the gRPC status of the public gRPC API (an ApiError is a
:class:`cretoai.errors.ServiceError`: a gRPC call that raises it ends with that
status, details ``"<code>: <message>"``); :func:`from_backend` is the only
translation of a consensus or storage gRPC error into an :class:`ApiError`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import grpc

from cretoai.errors import ERROR_CODE_KEY, ERROR_ORIGIN_KEY, ServiceError

log = logging.getLogger(__name__)

#: A backend's failures whose details are for the operator (the node's log), not the
#: client: a storage audit (2026-12-04) had RocksDB's words, with the database's path
#: on the server, answered to any HTTP client reading a damaged block.
_PRIVATE = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)
#: Codes gRPC itself ends a call with (a backend down, a deadline, a reset connection).
_GRPCS_OWN = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
#: gRPC's own details of an unreachable backend are logged at most this often.
UNREACHABLE_LOG_S = 10.0
_unreachable_said: dict[str, float] = {}

#: code -> (HTTP status, gRPC status of the public API)
CODES: dict[str, tuple[int, grpc.StatusCode]] = {
    # 400: the request cannot be parsed
    "malformed_json": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "bad_request": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "bad_base64": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "bad_hex": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "partial_signature": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "incomplete_body": (400, grpc.StatusCode.INVALID_ARGUMENT),
    # 403: a web page of an origin not allowed (gateway.allowed_origins)
    "origin_not_allowed": (403, grpc.StatusCode.PERMISSION_DENIED),
    "not_found": (404, grpc.StatusCode.NOT_FOUND),
    "method_not_allowed": (405, grpc.StatusCode.UNIMPLEMENTED),
    # 408: the request did not arrive in time
    "request_timeout": (408, grpc.StatusCode.DEADLINE_EXCEEDED),
    # 413: too large
    "body_too_large": (413, grpc.StatusCode.INVALID_ARGUMENT),
    "payload_too_large": (413, grpc.StatusCode.INVALID_ARGUMENT),
    # 415: a body the gateway does not read
    "unsupported_encoding": (415, grpc.StatusCode.INVALID_ARGUMENT),
    # 417: an Expect header other than 100-continue
    "expectation_failed": (417, grpc.StatusCode.INVALID_ARGUMENT),
    # 422: well-formed but invalid
    "invalid_vertex": (422, grpc.StatusCode.INVALID_ARGUMENT),
    "bad_signature": (422, grpc.StatusCode.INVALID_ARGUMENT),
    "signature_required": (422, grpc.StatusCode.INVALID_ARGUMENT),
    "unknown_parent": (422, grpc.StatusCode.FAILED_PRECONDITION),
    # 429, 5xx: the node cannot take it now
    "overloaded": (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # this client's address sent more vertices than gateway.client_vertices_per_s allows
    "rate_limited": (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "internal": (500, grpc.StatusCode.INTERNAL),
    "backend_error": (502, grpc.StatusCode.INTERNAL),
    "not_ready": (503, grpc.StatusCode.UNAVAILABLE),
    "consensus_unavailable": (503, grpc.StatusCode.UNAVAILABLE),
    "storage_unavailable": (503, grpc.StatusCode.UNAVAILABLE),
    "shutting_down": (503, grpc.StatusCode.UNAVAILABLE),
    "wait_timeout": (504, grpc.StatusCode.DEADLINE_EXCEEDED),
}

Backend = Literal["consensus", "storage"]


class ApiError(ServiceError):
    """A failure reported to the client as ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message, status=CODES[code][1])
        self.code = code
        self.message = message
        #: When the same request would pass (``rate_limited``), for ``Retry-After``.
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return CODES[self.code][0]

    def grpc_details(self) -> str:
        return f"{self.code}: {self.message}"

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def from_backend(exc: grpc.aio.AioRpcError, backend: Backend) -> ApiError:
    """The error a client sees when the node's consensus or storage service fails a call.

    The gateway validates input before it calls a backend, so a backend's
    INVALID_ARGUMENT means the vertex is invalid (consensus) or the read was
    malformed (storage); FAILED_PRECONDITION from consensus is an unknown parent.
    """
    error_code = None
    said = False  # the details are the service's words, not gRPC's own
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_KEY and value in CODES:
            error_code = str(value)
        said = said or key == ERROR_ORIGIN_KEY
    detail = exc.details() or exc.code().name
    if not said and exc.code() in _GRPCS_OWN:
        # gRPC's own words (a connection refused, a deadline) name internal addresses
        # and ports: the operator's to read, not an anonymous client's
        now = time.monotonic()
        if now - _unreachable_said.get(backend, -math.inf) >= UNREACHABLE_LOG_S:
            _unreachable_said[backend] = now
            log.warning(
                "backend unreachable",
                extra={"fields": {"backend": backend, "code": exc.code().name, "detail": detail}},
            )
        detail = exc.code().name
    return from_status(exc.code(), detail, error_code, backend)


def from_status(
    code: grpc.StatusCode, detail: str, error_code: str | None, backend: Backend
) -> ApiError:
    """:func:`from_backend` of a status given as its parts (e.g. one vertex's refusal in a
    consensus ``SubmitVertices`` answer): ``error_code`` is the backend's client-facing
    code, when it sent one."""
    if error_code in CODES:
        return ApiError(str(error_code), detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ApiError("invalid_vertex" if backend == "consensus" else "bad_request", detail)
    if code == grpc.StatusCode.FAILED_PRECONDITION and backend == "consensus":
        return ApiError("unknown_parent", detail)
    if code == grpc.StatusCode.NOT_FOUND:
        return ApiError("not_found", detail)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and backend == "consensus":
        return ApiError("overloaded", f"consensus is overloaded: {detail}")
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return ApiError(f"{backend}_unavailable", f"{backend} is unavailable: {detail}")
    if code in _PRIVATE:
        log.warning(
            "backend failed",
            extra={"fields": {"backend": backend, "code": code.name, "detail": detail}},
        )
        return ApiError("backend_error", f"{backend} failed ({code.name}); the node's log says why")
    return ApiError("backend_error", f"{backend} failed: {code.name}: {detail}")


#: gRPC status codes by number (google.rpc.Code).
STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def status_of(number: int) -> grpc.StatusCode:
    """The gRPC status code numbered ``number`` (UNKNOWN when there is none)."""
    return STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
