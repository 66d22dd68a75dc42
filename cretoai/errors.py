"""What a service reports to its caller when a call fails, and the gRPC status of each.

A servicer raises a :class:`ServiceError`; :mod:`cretoai.serving` turns it into
the call's status, in one place, for every service: the status of its class
(or the one given), :meth:`ServiceError.grpc_details` as the details, and the
client-facing ``error_code`` (when there is one) in the trailing metadata
under :data:`ERROR_CODE_KEY`. Anything else a servicer raises is a bug: the
caller gets INTERNAL and the service logs it with its traceback.

A service may subclass these for its own failures (storage's ``WriteFailed``
is an :class:`Internal`, transport's ``UnknownPeer`` a :class:`NotFound`), so
that its code can tell them apart while the status stays the class's.
"""

from __future__ import annotations

from typing import ClassVar, Self

import grpc

#: Trailing metadata key with the client-facing error code of a refusal (e.g.
#: ``bad_signature``), for a caller that must report more than the gRPC status.
ERROR_CODE_KEY = "cretoai-error-code"
#: Trailing metadata of every :class:`ServiceError`: its details are the service's own
#: words, not gRPC's (whose UNAVAILABLE names internal addresses).
ERROR_ORIGIN_KEY = "cretoai-error-origin"


class ServiceError(Exception):
    """A call that failed for a reason the service knows; ``grpc_status`` is its status."""

    STATUS: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        status: grpc.StatusCode | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.grpc_status: grpc.StatusCode = status or self.STATUS
        #: Sent as :data:`ERROR_CODE_KEY` trailing metadata when set.
        self.error_code = error_code

    def grpc_details(self) -> str:
        """The status details the caller reads."""
        return str(self)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        origin = ((ERROR_ORIGIN_KEY, "service"),)
        return origin if self.error_code is None else ((ERROR_CODE_KEY, self.error_code), *origin)

    def settled(self) -> Self:
        """This error without its traceback, once it is an answer (a value or a status).

        A raised error's traceback holds the frames it went through, and a frame that
        keeps the error in a variable (``refusal = ...; raise refusal``) closes a cycle
        through them: the frames, and everything they hold (a whole HTTP request), are
        then freed only by the cyclic collector. Under overload every refusal did that,
        and the collections came as pauses of 50-100 ms of the event loop, which every
        other answer waited for (a 429 too).
        """
        self.__traceback__ = None
        return self


class InvalidArgument(ServiceError):
    """A malformed request: wrong lengths, missing fields, limits exceeded."""

    STATUS = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """What the request names does not exist."""

    STATUS = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """The target already holds something different."""

    STATUS = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """Well-formed, but not applicable in the current state."""

    STATUS = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """The service cannot take this now (a full pool, a full disk, a slow consumer)."""

    STATUS = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """Not now: not ready yet, shutting down, or a service it depends on is down. Retry."""

    STATUS = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """An answer the service waited for did not come in time."""

    STATUS = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(ServiceError):
    """The call was ended by a conflicting one (e.g. a newer stream superseded it)."""

    STATUS = grpc.StatusCode.ABORTED


class Internal(ServiceError):
    """The service failed (its disk, a broken invariant), not the caller."""

    STATUS = grpc.StatusCode.INTERNAL
