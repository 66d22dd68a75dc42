"""Service processes for tests: output read line by line, and waits for a service to serve.

:func:`wait_serving` watches the service's gRPC health (``Watch``: the server tells
when it changes) instead of polling it, and fails at once if the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cretoai.channels import service_channel, service_endpoint
from cretoai.config import NodeConfig

SERVING = health_pb2.HealthCheckResponse.SERVING


class Process:
    """A child process (own session) whose stdout and stderr are read line by line."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, name: str, argv: list[str], cwd: Path) -> Process:
        # Pipes, not files: RLIMIT_FSIZE does not apply to them, so the storage
        # service's own log lines after the fault are kept. The working directory is
        # not the repository, so that PYTHONPATH decides which code runs.
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=1 << 20,  # a log line with a traceback is long
        )
        return cls(name, proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _pump(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while raw := await stream.readline():
            async with self._changed:
                lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def output(self) -> str:
        return "\n".join([f"--- {self.name} stdout", *self.out, "--- stderr", *self.err])

    async def wait_line(self, needle: str, *, stderr: bool = False, timeout: float) -> str:
        """The first line (of stdout, or stderr) containing ``needle``, as soon as it is out."""
        lines = self.err if stderr else self.out

        def found() -> str | None:
            return next((line for line in lines if needle in line), None)

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no line with {needle!r} within {timeout:.0f}s\n{self.output()}"
            ) from None
        line = found()
        assert line is not None
        return line

    async def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited and its output is read."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} still running after {timeout:.0f}s\n{self.output()}"
            ) from None
        await asyncio.wait_for(asyncio.gather(*self._pumps), 10)
        return code

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal it (if still running) and wait; SIGKILL when it does not exit in time."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        # its last lines (a child that outlived it would hold the pipes open)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps), 10)
        for pump in self._pumps:
            pump.cancel()
        return self.proc.returncode if self.proc.returncode is not None else -1


async def _watch_until_serving(cfg: NodeConfig, service: str) -> None:
    """Returns once the service reports SERVING; a stream that ends (the server went
    away) or never connects is opened again (the channel waits for the server)."""
    address, tls = service_endpoint(cfg, service)
    async with service_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True)
                async for reply in call:
                    if reply.status == SERVING:
                        return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise


async def wait_serving(cfg: NodeConfig, service: str, proc: Process, timeout: float = 60) -> None:
    """Until ``service`` (run by ``proc``, or by a supervisor ``proc``) serves: at most
    ``timeout`` seconds, and an AssertionError at once if ``proc`` exits meanwhile."""
    serving = asyncio.create_task(_watch_until_serving(cfg, service))
    exited = asyncio.create_task(proc.proc.wait())
    try:
        done, _ = await asyncio.wait(
            {serving, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (serving, exited):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    if serving in done:
        serving.result()
        return
    if exited in done:
        raise AssertionError(f"{service}: the process exited\n{proc.output()}")
    raise AssertionError(f"{service}: not SERVING within {timeout:.0f}s\n{proc.output()}")
