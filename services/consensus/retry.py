"""Calls to the node's own services that must eventually succeed (storage writes).

Consensus halts rather than skip a write: a persist or an execution that fails
is retried with backoff until the storage service answers, and the replica's
loop waits meanwhile (nothing that depends on the write is sent). An error that
retrying cannot fix (e.g. INTERNAL for a failed disk write) is raised as
:class:`StorageCallFailed`, one line naming the call, the status and the details,
and the consensus process stops (see ``Driver._run``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from prometheus_client import Counter

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = Counter(
    "cretoai_consensus_storage_retries_total", "Storage calls retried, by operation", ["op"]
)

#: Errors worth retrying: the service is restarting, overloaded or slow.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


class StorageCallFailed(Exception):
    """A storage call failed with a status that is not worth retrying."""

    def __init__(self, what: str, error: grpc.aio.AioRpcError) -> None:
        self.what = what
        self.code = error.code()
        self.details = error.details() or ""
        # one line: it ends up in the process's ``error: ...`` line and in log fields
        details = " ".join(self.details.split())
        super().__init__(f"storage call {what!r} failed: {self.code.name}: {details}")


def _too_large(exc: grpc.aio.AioRpcError) -> bool:
    """A message over a channel's size limit: the same call fails the same way forever."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
        exc.details() or ""
    )


async def call_until_done(call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Await ``call()``, retrying transient gRPC errors with capped exponential backoff.

    Raises :class:`StorageCallFailed` (from the gRPC error) for any other status.
    """
    backoff = 0.05
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT or _too_large(exc):
                raise StorageCallFailed(what, exc) from exc
            RETRIES.labels(what).inc()
            log.warning(
                "storage call failed; retrying",
                extra={"fields": {"what": what, "code": exc.code().name, "in_s": backoff}},
            )
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)
