"""A minimal real gRPC service built on cretoai.serving, run as a process by tests.

It serves ``/test.Echo/Slow``: waits for the requested milliseconds, then echoes
the request bytes. ``/test.Echo/AbortThenFinish`` aborts at once, then spends the
requested milliseconds in its ``finally`` (a handler that outlives its status).
``/test.Echo/Fail`` (unary) and ``/test.Echo/FailLater`` (a stream: one message,
then the failure) fail as the request names (see :data:`FAILURES`). Its cleanup
writes a marker line to stdout, with the handler events seen so far, so tests can
check shutdown order. Usage: python -m tests.support.echo_service PORTFILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc

from cretoai import errors
from cretoai.logs import setup_logging
from cretoai.serving import GrpcService, Servicer

SERVICE = "test.Echo"

#: What ``Fail`` and ``FailLater`` raise, by request bytes.
FAILURES: dict[bytes, Exception] = {
    b"not-found": errors.NotFound("no such thing"),
    b"bad-signature": errors.InvalidArgument("signature invalid", error_code="bad_signature"),
    b"overloaded": errors.ResourceExhausted("too much"),
    b"bug": ValueError("a bug"),
}


def echo_servicer(events: list[str] | None = None) -> Servicer:
    """The echo servicer; appends "handled" to ``events`` when a call completes."""

    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(int.from_bytes(request[:4], "big") / 1000)
        if events is not None:
            events.append("handled")
        return request

    async def fail(request: bytes, context: Any) -> bytes:
        if request == b"abort":  # a servicer may still abort by itself
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the servicer")
        raise FAILURES[request]

    async def abort_then_finish(request: bytes, context: Any) -> bytes:
        # The status is on the wire at abort(); the handler still runs its finally.
        try:
            await context.abort(grpc.StatusCode.ABORTED, "aborted early")
        finally:
            await asyncio.sleep(int.from_bytes(request[:4], "big") / 1000)
            if events is not None:
                events.append("finished after abort")
        return request  # not reached

    async def fail_later(request: bytes, context: Any) -> Any:
        yield request
        raise FAILURES[request]

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "FailLater": grpc.unary_stream_rpc_method_handler(fail_later),
            "AbortThenFinish": grpc.unary_unary_rpc_method_handler(abort_then_finish),
        },
    )
    return Servicer(
        name=SERVICE, register=lambda server: server.add_generic_rpc_handlers([handler])
    )


async def _main(port_file: Path) -> None:
    events: list[str] = []

    async def cleanup() -> None:
        print(f"cleanup-ran after: {', '.join(events)}", flush=True)

    service = GrpcService(
        name="echo",
        bind="127.0.0.1:0",
        metrics_bind="127.0.0.1:0",
        servicers=[echo_servicer(events)],
        grace=5.0,
        cleanup=[cleanup],
    )
    original_start = service.start

    async def start_and_report() -> None:
        await original_start()
        await asyncio.to_thread(port_file.write_text, f"{service.port} {service.metrics_port}")

    service.start = start_and_report  # type: ignore[method-assign]
    await service.run()


if __name__ == "__main__":
    setup_logging(service="echo", node="test")
    asyncio.run(_main(Path(sys.argv[1])))
