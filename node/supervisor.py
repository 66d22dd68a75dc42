"""Run and supervise the four service processes of one node, or of a whole local cluster.

Each service is a child process (``python -m services.NAME --config FILE``) in
its own session, so a terminal's Ctrl-C reaches only the supervisor, which then
stops the children in order. Children are started in dependency order
(:data:`cretoai.registry.SERVICES`: storage, transport, consensus, gateway),
each once the previous serves;
an unexpected exit is restarted with exponential backoff (reset after a minute
of uptime). A child that fails to start several times in a row (each run
shorter than a few seconds) is given up: it is not restarted again, the event
says so, and ``cretoai-node start`` then stops the node and exits 1. Stopping
sends SIGTERM in reverse order and SIGKILL after a grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cretoai import registry
from cretoai.channels import service_channel, service_endpoint
from cretoai.config import ConfigError, NodeConfig, load_config
from cretoai.crypto import load_private_key
from cretoai.files import write_atomically
from cretoai.tls import InternalTls
from node import ports
from node.clusterinit import (
    CLUSTER_FILE,
    DEFAULT_BASE_PORT,
    DEFAULT_HTTP_PORT,
    cluster_lock,
    describe_node,
    init_cluster,
    load_cluster,
)

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_UPTIME_S = 60.0
#: Consecutive failed starts after which a child is given up (not restarted again).
MAX_FAILED_STARTS = 5
#: A run shorter than this is a failed start; a longer one resets the count.
FAILED_START_UPTIME_S = 10.0
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 90.0


#: What :func:`last_error` reads of a log, at most, and repeats of its line.
LAST_ERROR_TAIL_BYTES = 16384
LAST_ERROR_CHARS = 800


def last_error(log_file: Path | None, since: int = 0) -> str:
    """The last ``error: …`` line a service wrote to ``log_file`` at or after byte
    ``since`` (what it said when it could not start: a corrupt database, another node's,
    a port in use), or "". ``since``: the log's size when this run of the service began,
    so that a line of an earlier run is not quoted for this one (an audit, 2026-12-04:
    a clean exit was reported with a long-fixed key error)."""
    if log_file is None:
        return ""
    try:
        with log_file.open("rb") as f:
            f.seek(max(since, f.seek(0, 2) - LAST_ERROR_TAIL_BYTES))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        if line.startswith("error: "):
            return line if len(line) <= LAST_ERROR_CHARS else line[: LAST_ERROR_CHARS - 1] + "…"
    return ""


def favour(pid: int, nice: int) -> str | None:
    """Set the nice value of process ``pid``'s autogroup; None when done, else why not.

    With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``),
    the CPU is shared between sessions first and a thread's own nice value only counts
    inside its session; every child runs in a session of its own, so its session's
    (autogroup's) nice value is what gives it a core before the others. Lowering it
    needs CAP_SYS_NICE (root); without, the child keeps the default.
    """
    autogroup = Path(f"/proc/{pid}/autogroup")
    try:
        autogroup.write_text(f"{nice}\n")
    except PermissionError as exc:
        return f"PermissionError: {exc.strerror or exc}; lowering it needs root or CAP_SYS_NICE"
    except OSError as exc:  # no such file: a kernel without autogroups
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


#: glibc malloc arenas per service process (``MALLOC_ARENA_MAX``). By default glibc
#: makes up to 8 per core as threads allocate (gRPC's, the verifying and storage
#: threads), and each keeps what it freed: two saved about 20 MB per node over a
#: 10-minute run at 80 vertices/s, with no measurable cost (docs/benchmarks.md).
MALLOC_ARENAS = "2"


def service_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a service process: the supervisor's, with gRPC's C core quiet
    unless the operator set ``GRPC_VERBOSITY`` (e.g. ``debug``, to diagnose), and glibc's
    malloc arenas bounded unless the operator set ``MALLOC_ARENA_MAX``.

    gRPC's own log lines bypass the services' logs (their levels, their rate limits): an
    audit (2026-12-04) had any local process, with no certificate, write a line per
    failed TLS handshake into an internal service's log (3,677 a second; about 0.8 MB/s),
    and forge whole log lines through the TLS server name it sent, which gRPC logged
    verbatim. What the services need from gRPC they get as Python errors."""
    return {"GRPC_VERBOSITY": "NONE", "MALLOC_ARENA_MAX": MALLOC_ARENAS, **environ}


class GaveUp(Exception):
    """A child failed to start too many times in a row; the supervisor no longer restarts it."""


def health_target(cfg: NodeConfig, service: str) -> tuple[str, InternalTls | None]:
    return service_endpoint(cfg, service)


async def check_health(endpoint: tuple[str, InternalTls | None], timeout: float = 1.0) -> bool:
    target, tls = endpoint
    try:
        async with service_channel(target, tls=tls) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Child:
    """One supervised service process."""

    node: str
    service: str
    config: Path
    log_file: Path | None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    #: Consecutive runs shorter than the supervisor's ``failed_start_uptime``.
    failed_starts: int = 0
    #: Consecutive runs shorter than STABLE_UPTIME_S that ended with the same ``error:``
    #: line, and that line.
    same_errors: int = 0
    last_said: str = ""
    #: Why the supervisor gave up on it (no more restarts); None while supervised.
    gave_up: str | None = None
    #: While held, an exit is not restarted (tests kill a service and restart it later).
    held: bool = False
    #: Why its scheduling priority (``ServiceSpec.autogroup_nice``) could not be set at
    #: its last start; None when it was, or when it has none.
    not_favoured: str | None = None
    _log_handle: IO[bytes] | None = field(default=None, repr=False)
    #: The log's size when the current run began (what ``last_error`` reads from).
    log_offset: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    #: SIGTERM was sent to the current run (a second one, arriving after the service
    #: closed its event loop and with it its handler, killed it mid-exit: code -15).
    terminating: bool = False

    @property
    def label(self) -> str:
        return f"{self.node}/{self.service}"

    def terminate(self) -> None:
        """Ask the current run to stop (SIGTERM), once: the service stops gracefully."""
        if self.process is None or self.process.returncode is not None or self.terminating:
            return
        self.terminating = True
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    async def spawn(self) -> None:
        if self.log_file is not None and self._log_handle is None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("ab")
        if self._log_handle is not None:
            self._log_handle.flush()
            self.log_offset = self._log_handle.tell()  # where this run's output begins
        out = self._log_handle if self._log_handle is not None else None
        self.terminating = False
        self.process = await asyncio.create_subprocess_exec(
            *registry.service(self.service).command(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            env=service_environment(os.environ),
        )
        self.started_at = time.monotonic()
        nice = registry.service(self.service).autogroup_nice
        if nice:
            self.not_favoured = favour(self.process.pid, nice)

    def close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


class Supervisor:
    """Supervises the children of one or more nodes."""

    def __init__(
        self,
        configs: list[NodeConfig],
        *,
        log_dir: Callable[[NodeConfig], Path | None],
        max_failed_starts: int = MAX_FAILED_STARTS,
        failed_start_uptime: float = FAILED_START_UPTIME_S,
        tolerate_down: int = 0,
        ready_timeout: float = READY_TIMEOUT_S,
    ):
        """``tolerate_down``: nodes whose service is given up while they start that the
        start goes on without (``cluster up``: the cluster's f); one more fails it."""
        self.configs = configs
        self.tolerate_down = tolerate_down
        self.ready_timeout = ready_timeout
        #: Nodes left down during the start (a service given up), and why.
        self.down: dict[str, str] = {}
        self.max_failed_starts = max_failed_starts
        self.failed_start_uptime = failed_start_uptime
        #: Set once any child is given up (see :attr:`given_up`).
        self.gave_up = asyncio.Event()
        self.children: list[Child] = []
        for cfg in configs:
            directory = log_dir(cfg)
            for service in registry.NAMES:
                self.children.append(
                    Child(
                        node=cfg.node.name,
                        service=service,
                        config=cfg.source,
                        log_file=directory / f"{service}.log" if directory else None,
                    )
                )
        self._stopping = False
        #: Set once every child served: a child given up after that takes its node down.
        self._started = False
        self._watchers: list[asyncio.Task[None]] = []
        self.on_event: Callable[[str], None] = lambda message: log.info(message)

    @property
    def given_up(self) -> list[Child]:
        return [c for c in self.children if c.gave_up is not None]

    def _cfg(self, child: Child) -> NodeConfig:
        return next(c for c in self.configs if c.node.name == child.node)

    async def start(self, *, timeout: float | None = None) -> None:
        """Start every child in dependency order (per node, nodes in parallel); wait until all
        serve. Raises TimeoutError naming what is not serving, GaveUp when a child is given up
        (each only past ``tolerate_down`` nodes: up to that many stay down instead)."""
        timeout = self.ready_timeout if timeout is None else timeout
        for service in registry.NAMES:
            batch = [c for c in self.children if c.service == service and c.node not in self.down]
            for child in batch:
                await child.spawn()
                self._watchers.append(asyncio.create_task(self._watch(child)))
            await self._wait_serving(batch, timeout, starting=True)
            serving = sum(1 for c in batch if c.node not in self.down)
            self.on_event(f"{service:<10} serving on {serving} node(s)")
            nice = registry.service(service).autogroup_nice
            refused = next((c.not_favoured for c in batch if c.not_favoured), None)
            if nice and refused:
                self.on_event(
                    f"{service:<10} runs at the default scheduling priority: its autogroup "
                    f"nice {nice} was not applied ({refused})"
                )
        self._started = True

    async def _wait_serving(
        self, children: list[Child], timeout: float, *, starting: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        pending = list(children)
        while pending:
            for child in self.given_up:
                if child.node not in self.down:
                    self._leave_down(child)
            if len(self.down) > self.tolerate_down:
                raise GaveUp(self.given_up[0].gave_up)
            pending = [c for c in pending if c.node not in self.down]
            if not pending:
                return
            results = await asyncio.gather(
                *(check_health(health_target(self._cfg(c), c.service)) for c in pending)
            )
            pending = [c for c, ok in zip(pending, results, strict=True) if not ok]
            if not pending:
                return
            if time.monotonic() > deadline:
                late = {c.node for c in pending}
                if starting and len(self.down) + len(late) <= self.tolerate_down:
                    # a service that runs but never answers its health check (a wrong
                    # advertise address, a certificate its host's clock rejects) stopped
                    # every node's start (an audit, 2026-12-04): like one given up, its
                    # node stays down, up to the cluster's f
                    for child in pending:
                        self._leave_late(child, timeout)
                    return
                names = ", ".join(c.label for c in pending)
                hint = f" (see {pending[0].log_file})" if pending[0].log_file else ""
                raise TimeoutError(f"not serving after {timeout:.0f}s: {names}{hint}")
            await asyncio.sleep(0.2)

    def _stop_node(self, child: Child) -> None:
        """``child`` was given up: its node is down, its other services are stopped and
        not restarted (a consensus without its storage only retried, forever)."""
        assert child.gave_up is not None
        self.down[child.node] = child.gave_up
        for sibling in self.children_of(child.node):
            if sibling is not child and sibling.process is not None:
                sibling.held = True  # not restarted
                sibling.terminate()

    def _take_down(self, child: Child) -> None:
        """``child`` was given up while the cluster ran: its node goes down whole."""
        self._stop_node(child)
        running = len(self.configs) - len(self.down)
        if len(self.down) <= self.tolerate_down:
            spare = f"tolerates {self.tolerate_down - len(self.down)} more faulty node(s)"
        else:
            spare = "are too few to finalize anything until enough of them are back"
        self.on_event(
            f"{child.node} is down (its other services were stopped); the cluster runs on "
            f"{running} of {len(self.configs)} nodes, which {spare}. Fix its cause and run "
            "cluster up again to bring it back"
        )

    def _leave_late(self, child: Child, timeout: float) -> None:
        """``child`` runs but did not serve within ``timeout`` while its node started."""
        where = child.log_file or "its output above"
        child.gave_up = (
            f"{child.label} did not serve within {timeout:.0f}s (its health check got no "
            f"answer: a wrong advertise address, or TLS refused?); stopping it (see {where})"
        )
        self.on_event(child.gave_up)
        child.held = True
        child.terminate()
        self._leave_down(child)

    def _leave_down(self, child: Child) -> None:
        """``child`` was given up while its node started: the node stays down (its other
        services are stopped), and the start goes on without it if it may."""
        self._stop_node(child)
        if len(self.down) <= self.tolerate_down:
            running = len(self.configs) - len(self.down)
            self.on_event(
                f"{child.node} stays down; the cluster starts on {running} of "
                f"{len(self.configs)} nodes, which tolerates "
                f"{self.tolerate_down - len(self.down)} more faulty node(s). Fix its "
                "cause and run cluster up again to bring it back"
            )

    async def _watch(self, child: Child) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            if child.held:
                self.on_event(f"{child.label} exited with code {code} (held: not restarting)")
                await child.released.wait()
                child.released.clear()
                if self._stopping:
                    return
                child.restarts += 1
                await child.spawn()
                continue
            uptime = time.monotonic() - child.started_at
            if uptime > STABLE_UPTIME_S:
                backoff = BACKOFF_MIN_S
            if uptime < self.failed_start_uptime:
                child.failed_starts += 1
            else:  # it did start: only consecutive failed starts count
                child.failed_starts = 0
            said = last_error(child.log_file, child.log_offset)
            # a run that starts, then fails the same way every time (an audit, 2026-12-04:
            # a consensus under another validator set halted after 17-20 s, for good) is
            # not helped by restarts either, however long each run lasts
            if said and said == child.last_said and uptime < STABLE_UPTIME_S:
                child.same_errors += 1
            else:
                child.same_errors = 1 if said and uptime < STABLE_UPTIME_S else 0
            child.last_said = said
            if (
                child.failed_starts >= self.max_failed_starts
                or child.same_errors >= self.max_failed_starts
            ):
                where = child.log_file or "its output above"
                how = (
                    f"failed to start {child.failed_starts} times in a row"
                    if child.failed_starts >= self.max_failed_starts
                    else f"exited {child.same_errors} times in a row with the same error"
                )
                child.gave_up = (
                    f"{child.label} {how} "
                    f"(last exit code {code} after {uptime:.1f}s"
                    f"{f', saying: {said}' if said else ''}); giving up, not restarting it "
                    f"(see {where})"
                )
                self.on_event(child.gave_up)
                if self._started and len(self.configs) > 1 and child.node not in self.down:
                    self._take_down(child)  # a single node is stopped whole by run_until
                self.gave_up.set()
                return
            self.on_event(
                f"{child.label} exited with code {code} after {uptime:.1f}s"
                f"{f' ({said})' if said else ''}; restarting in {backoff:.1f}s"
            )
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            child.restarts += 1
            await child.spawn()

    def children_of(self, node: str, service: str | None = None) -> list[Child]:
        found = [
            c for c in self.children if c.node == node and (service is None or c.service == service)
        ]
        if not found:
            raise KeyError(f"no such node/service: {node}/{service or '*'}")
        return found

    def signal(self, node: str, sig: signal.Signals, service: str | None = None) -> None:
        """Send ``sig`` to a node's services (all, or one); SIGKILL holds them (no restart)."""
        for child in self.children_of(node, service):
            if sig == signal.SIGKILL:
                child.held = True
            if sig == signal.SIGTERM:
                child.terminate()
                continue
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    async def wait_exited(self, node: str, service: str | None = None, timeout: float = 30) -> None:
        for child in self.children_of(node, service):
            assert child.process is not None
            await asyncio.wait_for(child.process.wait(), timeout)

    async def release(self, node: str, service: str | None = None, timeout: float = 60) -> None:
        """Restart held services of ``node`` (in start order) and wait until they serve."""
        for name in registry.NAMES:
            for child in self.children_of(node, service):
                if child.service == name and child.held:
                    child.held = False
                    child.released.set()
                    await self._wait_serving([child], timeout)

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM in reverse start order (gateway first), SIGKILL after ``grace``.

        Cancelled on the way (a second Ctrl-C or SIGTERM to a benchmark already
        stopping its cluster), it kills every child still running before it gives way:
        a run stopped twice left its storage and transport services orphaned
        (2026-12-08)."""
        try:
            await self._stop(grace)
        except asyncio.CancelledError:
            self._kill_all()
            raise
        finally:
            for child in self.children:
                child.close_log()

    def _kill_all(self) -> None:
        """SIGKILL to every child still running, awaiting nothing."""
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    async def _stop(self, grace: float) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGCONT)  # a stopped child can't exit
        for service in reversed(registry.NAMES):
            batch = [
                c
                for c in self.children
                if c.service == service and c.process and c.process.returncode is None
            ]
            for child in batch:
                child.terminate()  # not again to one already stopping (given up, late)
            for child in batch:
                assert child.process is not None
                try:
                    await asyncio.wait_for(child.process.wait(), grace)
                except TimeoutError:
                    self.on_event(f"{child.label} did not stop in {grace:.0f}s; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
                    await child.process.wait()


async def run_until(
    supervisor: Supervisor, ready: Callable[[], None], stop: asyncio.Event, *, stop_on_give_up: bool
) -> int:
    """Start every child, call ``ready`` once all serve, run until ``stop`` is set (or, with
    ``stop_on_give_up``, until a child is given up), then stop them all. Returns the exit
    code: 0, or 1 when the start failed or a child was given up (a given-up child also fails
    the start, whatever ``stop_on_give_up``)."""
    start = asyncio.create_task(supervisor.start())
    stop_wait = asyncio.create_task(stop.wait())
    gave_up = asyncio.create_task(supervisor.gave_up.wait())
    done, _ = await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if start in done:
        try:
            start.result()
        except (TimeoutError, GaveUp) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
        else:
            ready()
            ends = {stop_wait, gave_up} if stop_on_give_up else {stop_wait}
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                print(f"error: {supervisor.given_up[0].gave_up}", file=sys.stderr)
                code = 1
    else:
        start.cancel()
    for task in (start, stop_wait, gave_up):
        task.cancel()
    print("stopping…", file=sys.stderr, flush=True)
    await supervisor.stop()
    print("stopped", file=sys.stderr, flush=True)
    return code


async def _run_until_signal(
    supervisor: Supervisor, ready: Callable[[], None], *, stop_on_give_up: bool
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run_until(supervisor, ready, stop, stop_on_give_up=stop_on_give_up)


def preflight(cfg: NodeConfig) -> None:
    """What the node's services would each find wrong only once started, some after others
    had joined the cluster (an audit, 2026-12-04: another node's key failed transport five
    times after storage had made a database; a missing submitter key stopped the node after
    three services had joined): checked before any starts. KeyFileError, ConfigError."""
    key = load_private_key(cfg.key_path, cfg.crypto.backend)
    if key.public_key != cfg.validators[cfg.replica_index].public_key_bytes:
        raise ConfigError(
            f"{cfg.key_path}: is not the key [[validators]] lists for {cfg.node.name} in "
            f"{cfg.source} (node id {key.node_id[:16]}…): another node's key, or a key made "
            "again? Give the node its own key"
        )
    if cfg.submitter_key_path is not None:
        load_private_key(cfg.submitter_key_path, cfg.crypto.backend)


def check_same_parameters(configs: list[NodeConfig]) -> None:
    """Every node of one cluster runs with the same cluster parameters: the transports
    refuse a peer that differs, and ``cluster up`` said "cluster ready" all the same
    (an audit, 2026-12-04: node4 alone with another checkpoint_interval was cut off)."""
    first = configs[0]
    for cfg in configs[1:]:
        differ = [
            f"{name} = {theirs} ({first.node.name}: {ours})"
            for (name, ours), (_, theirs) in zip(
                first.cluster_parameters, cfg.cluster_parameters, strict=True
            )
            if ours != theirs
        ]
        if differ:
            raise ConfigError(
                f"{cfg.source}: {'; '.join(differ)}: every node of a cluster must run with "
                'the same cluster parameters (docs/config.md, "Cluster parameters")'
            )


def start_node(cfg: NodeConfig) -> int:
    """``cretoai-node start --config FILE``: the node's four services, in the foreground."""
    preflight(cfg)  # fail now, clearly, not in four children
    taken = ports.busy([cfg])
    if taken:
        hint = f"give this node other addresses in {cfg.source}"
        print(f"error: {ports.busy_message(taken, move_hint=hint)}", file=sys.stderr)
        return 1
    supervisor = Supervisor([cfg], log_dir=lambda _: None)
    supervisor.on_event = lambda message: print(f"  {message}", flush=True)

    def ready() -> None:
        print(f"{cfg.node.name} ready: gateway http://{cfg.gateway.http}", flush=True)

    # one node cannot run without one of its services: a given-up service stops the node
    return asyncio.run(_run_until_signal(supervisor, ready, stop_on_give_up=True))


def cluster_up(args: argparse.Namespace) -> int:
    """``cretoai-node cluster up``: init the cluster if needed, run it, stop on Ctrl-C."""
    directory = Path(args.dir).resolve()
    with cluster_lock(directory, "running cluster up on it again"):
        return _cluster_up(args, directory)


def _cluster_up(args: argparse.Namespace, directory: Path) -> int:
    if not (directory / CLUSTER_FILE).exists():
        print(f"initialising a {args.nodes}-node cluster in {directory}", flush=True)
        init_cluster(directory, args.nodes, http_port=args.http_port, base_port=args.base_port)
    elif (args.http_port, args.base_port) != (DEFAULT_HTTP_PORT, DEFAULT_BASE_PORT):
        print(
            f"note: {directory} holds a cluster already; it keeps the ports it was "
            "initialised with (--http-port and --base-port apply to a new one)",
            flush=True,
        )
    configs = [load_config(p) for p in load_cluster(directory)]
    if len(configs) != args.nodes:
        raise ConfigError(
            f"{directory / CLUSTER_FILE}: holds {len(configs)} nodes, not {args.nodes} "
            f"(use another --dir, or 'cretoai-node cluster init --nodes {args.nodes} "
            f"--dir {directory} --force')"
        )
    for cfg in configs:
        preflight(cfg)
    check_same_parameters(configs)
    taken = ports.busy(configs)
    if taken:
        hint = (
            f"move this cluster to other ports: cretoai-node cluster init --dir {directory} "
            f"--nodes {len(configs)} --reuse-keys --http-port PORT --base-port PORT"
        )
        print(f"error: {ports.busy_message(taken, move_hint=hint)}", file=sys.stderr)
        return 1
    os.umask(0o027)  # the services' logs, like their data, are not for every user
    # BFT: the cluster starts without up to f nodes whose service cannot start (a
    # damaged database on one node once stopped all four)
    supervisor = Supervisor(
        configs,
        log_dir=lambda cfg: cfg.data_dir.parent / "logs",
        tolerate_down=(len(configs) - 1) // 3,
    )
    supervisor.on_event = lambda message: print(f"  {message}", flush=True)
    print(
        f"starting {len(configs)} node(s), {len(registry.SERVICES)} services each "
        f"(logs in {directory}/node*/logs)…"
    )

    def ready() -> None:
        summary = {"nodes": [describe_node(c, "") for c in configs]}
        for node, cfg in zip(summary["nodes"], configs, strict=True):
            node["node_id"] = load_private_key(cfg.key_path, cfg.crypto.backend).node_id
        write_atomically(directory / CLUSTER_FILE, (json.dumps(summary, indent=2) + "\n").encode())
        print("cluster ready:")
        for node in summary["nodes"]:
            down = " (DOWN: see above)" if node["name"] in supervisor.down else ""
            print(f"  {node['name']}  {node['gateway_url']}{down}")
        print(f"endpoints: {directory / CLUSTER_FILE}")
        print("press Ctrl-C to stop", flush=True)

    # the other nodes keep running when a service of one is given up (the event is printed)
    return asyncio.run(_run_until_signal(supervisor, ready, stop_on_give_up=False))
