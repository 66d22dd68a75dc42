"""The supervisor gives up on a service that keeps failing to start, and then a single node
stops: real service processes, a storage service on a damaged database as the failing child."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cretoai.config import NodeConfig, load_config
from node.clusterinit import ClusterLayout
from node.supervisor import GaveUp, Supervisor, run_until
from services.storage.store import Store
from tests.conftest import REPO
from tests.storage.support import snapshot

pytestmark = pytest.mark.timeout(300)

MAX_FAILED_STARTS = 3


def one_node(cluster_factory: Callable[..., ClusterLayout]) -> NodeConfig:
    layout = cluster_factory(1)
    return load_config(layout.nodes[0].config)


def supervise(cfg: NodeConfig, logs: Path, events: list[str]) -> Supervisor:
    supervisor = Supervisor([cfg], log_dir=lambda _: logs, max_failed_starts=MAX_FAILED_STARTS)
    supervisor.on_event = events.append
    return supervisor


def supervise_cluster(
    configs: list[NodeConfig], logs: Path, events: list[str], **options: float
) -> Supervisor:
    """A supervisor of a 4-node cluster, as ``cluster up`` makes it (one node may stay
    down), logging each node under ``logs`` and its events into ``events``."""
    supervisor = Supervisor(
        configs,
        log_dir=lambda cfg: logs / cfg.node.name,
        max_failed_starts=MAX_FAILED_STARTS,
        tolerate_down=1,
        **options,
    )
    supervisor.on_event = events.append
    return supervisor


def service_pids(supervisor: Supervisor) -> dict[str, int]:
    """The pid of each service of a one-node supervisor, all of them running."""
    pids = {}
    for child in supervisor.children:
        assert child.process is not None
        pids[child.service] = child.process.pid
    return pids


async def finish(run: asyncio.Task[int], stop: asyncio.Event) -> None:
    """However the test went, stop every service the supervisor started."""
    stop.set()
    await asyncio.wait_for(run, 120)


async def start_node(
    supervisor: Supervisor, events: list[str]
) -> tuple[asyncio.Task[int], asyncio.Event]:
    """Run the supervisor until the returned event is set; returns once every service
    serves (the run task and the event, for :func:`finish`)."""
    ready = asyncio.Event()
    stop = asyncio.Event()
    run = asyncio.create_task(run_until(supervisor, ready.set, stop, stop_on_give_up=True))
    readiness = asyncio.create_task(ready.wait())
    await asyncio.wait({run, readiness}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    readiness.cancel()
    if not ready.is_set():
        await finish(run, stop)
    assert ready.is_set(), events
    return run, stop


def assert_gave_up_on_storage(event: str, logs: Path) -> None:
    assert event.startswith(
        f"node1/storage failed to start {MAX_FAILED_STARTS} times in a row (last exit code 1 after "
    ), event
    assert event.endswith(f"); giving up, not restarting it (see {logs / 'storage.log'})"), event


async def test_a_service_that_never_starts_is_given_up_and_the_node_stops(
    cluster_factory: Callable[..., ClusterLayout],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = one_node(cluster_factory)
    db = cfg.storage_path
    Store.open(db).close()
    (db / "CURRENT").unlink()
    before = snapshot(db)
    logs = tmp_path / "logs"
    events: list[str] = []
    supervisor = supervise(cfg, logs, events)
    readied: list[bool] = []
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_until(supervisor, lambda: readied.append(True), stop, stop_on_give_up=True)
    )
    try:
        code = await asyncio.wait_for(asyncio.shield(run), 120)
    finally:
        await finish(run, stop)

    assert code == 1 and not readied
    storage = supervisor.children_of("node1", "storage")[0]
    assert (storage.restarts, storage.failed_starts) == (MAX_FAILED_STARTS - 1, MAX_FAILED_STARTS)
    assert storage.process is not None and storage.process.returncode == 1
    assert len(events) == MAX_FAILED_STARTS, events
    for event in events[:-1]:
        assert event.startswith("node1/storage exited with code 1 after "), event
        assert "; restarting in " in event
        # what the service said as it exited, not only where to look
        assert f"s (error: the database at {db} is corrupt: " in event, event
    assert_gave_up_on_storage(events[-1], logs)
    assert f", saying: error: the database at {db} is corrupt: " in events[-1]
    assert supervisor.given_up == [storage] and storage.gave_up == events[-1]
    # nothing was started after storage
    assert [c.service for c in supervisor.children if c.process is not None] == ["storage"]
    assert f"error: {events[-1]}" in capsys.readouterr().err
    # every attempt failed the same way, and none touched the database
    log = (logs / "storage.log").read_text()
    assert log.count(f"error: the database at {db} is corrupt: ") == MAX_FAILED_STARTS, log
    assert snapshot(db) == before


@pytest.mark.slow
async def test_a_running_node_whose_storage_cannot_restart_stops_with_an_error(
    cluster_factory: Callable[..., ClusterLayout],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = one_node(cluster_factory)
    logs = tmp_path / "logs"
    events: list[str] = []
    supervisor = supervise(cfg, logs, events)
    run, stop = await start_node(supervisor, events)
    try:
        # storage dies (held: not restarted yet) and its database loses CURRENT meanwhile
        supervisor.signal("node1", signal.SIGKILL, "storage")
        await supervisor.wait_exited("node1", "storage")
        db = cfg.storage_path
        (db / "CURRENT").unlink()
        before = snapshot(db)

        with pytest.raises(GaveUp) as info:
            await supervisor.release("node1", "storage", timeout=120)
        code = await asyncio.wait_for(asyncio.shield(run), 120)
    finally:
        await finish(run, stop)

    assert code == 1
    assert_gave_up_on_storage(str(info.value), logs)
    assert str(info.value) in events
    storage = supervisor.children_of("node1", "storage")[0]
    assert storage.failed_starts == MAX_FAILED_STARTS
    # the other services were stopped cleanly (SIGTERM, exit 0), none had to be killed
    for child in supervisor.children:
        if child.service != "storage":
            assert child.process is not None and child.process.returncode == 0, child.label
    assert not [e for e in events if "killing it" in e], events
    err = capsys.readouterr().err
    assert f"error: {info.value}" in err and "stopped" in err
    assert snapshot(db) == before


#: A service that takes a second to exit after its first SIGTERM, during which a second one
#: kills it (code -15). SIGTERM is blocked until ``sigwait``: with a handler and
#: ``signal.pause()``, a SIGTERM arriving between "ready" and the pause ran the handler
#: first and the pause then waited for the grace's SIGKILL (code -9 under load, CI).
STOPPING_CHILD = """
import signal, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("ready", flush=True)
signal.sigwait({signal.SIGTERM})
print("stopping", flush=True)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
time.sleep(1)
"""


async def test_a_child_already_stopping_is_not_sent_sigterm_again(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    """A node's services stopped because one was given up were sent SIGTERM again by the
    node's stop, which killed the gateway mid-exit (CI, 2026-12-05: code -15)."""
    supervisor = Supervisor([one_node(cluster_factory)], log_dir=lambda _: None)
    gateway = supervisor.children_of("node1", "gateway")[0]
    gateway.process = process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STOPPING_CHILD, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
        gateway.terminate()  # as when its node goes down
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"stopping\n"
        gateway.terminate()
        supervisor.signal("node1", signal.SIGTERM, "gateway")
        await asyncio.wait_for(supervisor.stop(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0


#: A service that never stops on SIGTERM (stuck in a long write, say), only says it got
#: one: SIGKILL alone ends it.
DEAF_CHILD = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("sigterm", flush=True))
print("ready", flush=True)
time.sleep(120)
"""


async def test_a_stop_cancelled_on_the_way_kills_every_service_left(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    """A benchmark sent a second signal while it stopped its cluster cancelled the stop
    half way and left the storage and transport services running, orphaned (2026-12-08)."""
    supervisor = Supervisor([one_node(cluster_factory)], log_dir=lambda _: None)
    processes = []
    for child in supervisor.children:
        child.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DEAF_CHILD, stdout=subprocess.PIPE
        )
        processes.append(child.process)
    try:
        for process in processes:
            assert process.stdout is not None
            assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
        gateway = supervisor.children_of("node1", "gateway")[0].process
        assert gateway is not None and gateway.stdout is not None
        stopping = asyncio.create_task(supervisor.stop(grace=60))
        assert await asyncio.wait_for(gateway.stdout.readline(), 30) == b"sigterm\n"
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        codes = [await asyncio.wait_for(p.wait(), 10) for p in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert codes == [-signal.SIGKILL] * len(processes)


def test_last_error_is_the_last_error_line_of_a_log_tail(tmp_path: Path) -> None:
    from node.supervisor import LAST_ERROR_CHARS, LAST_ERROR_TAIL_BYTES, last_error

    log = tmp_path / "storage.log"
    assert last_error(None) == "" and last_error(log) == ""  # no log, a missing log
    log.write_text("ts=1 level=info msg=start\nerror: first\nts=2 msg=x\nerror: second\nts=3\n")
    assert last_error(log) == "error: second"
    log.write_bytes(b"error: " + b"x" * (2 * LAST_ERROR_TAIL_BYTES) + b"\nnothing more\n")
    assert last_error(log) == ""  # the line starts before the tail read
    log.write_bytes(b"\xff\xfe\nerror: " + b"y" * 1000 + b"\n")
    said = last_error(log)
    assert said.startswith("error: yyy") and said.endswith("y…") and len(said) == LAST_ERROR_CHARS
    # an earlier run's error is not this run's (a clean exit quoted a long-fixed one)
    log.write_text("error: the key is not node4's\n")
    this_run = log.stat().st_size
    with log.open("a") as f:
        f.write("ts=9 level=info msg=serving\n")
    assert last_error(log, this_run) == ""
    with log.open("a") as f:
        f.write("error: disk full\n")
    assert last_error(log, this_run) == "error: disk full"


ROOT_AUTOGROUP = ("/", 0)


def autogroup(pid: int) -> tuple[str, int]:
    """Process ``pid``'s autogroup and its nice value (``/autogroup-12 nice -5``).

    The kernel shows nothing for a process in the root group, one whose session was never
    started by ``setsid`` since boot (CI's test runner, a child of PID 1): that is
    ``ROOT_AUTOGROUP``, whose nice value cannot be set."""
    shown = Path(f"/proc/{pid}/autogroup").read_text().split()
    if not shown:
        return ROOT_AUTOGROUP
    group, _, nice = shown
    return group, int(nice)


needs_autogroup = pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(),
    reason="this kernel has no autogroup scheduling (CONFIG_SCHED_AUTOGROUP)",
)


@needs_autogroup
@pytest.mark.slow
async def test_the_gateway_is_favoured_by_the_scheduler_at_every_start(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    """Each service runs in a session (an autogroup) of its own; the gateway's is favoured
    (registry ``autogroup_nice``), also when it is started again."""
    if os.geteuid() != 0:
        pytest.skip("lowering a nice value needs CAP_SYS_NICE (the unprivileged case is below)")
    cfg = one_node(cluster_factory)
    events: list[str] = []
    supervisor = supervise(cfg, tmp_path / "logs", events)
    run, stop = await start_node(supervisor, events)
    try:
        groups = {service: autogroup(pid) for service, pid in service_pids(supervisor).items()}
        assert {s: nice for s, (_, nice) in groups.items()} == {
            "storage": 0,
            "transport": 0,
            "consensus": 0,
            "gateway": -5,
        }
        mine = autogroup(os.getpid())[0]
        assert len({g for g, _ in groups.values()} | {mine}) == 5, groups  # one each
        assert not [e for e in events if "default scheduling priority" in e], events

        gateway = supervisor.children_of("node1", "gateway")[0]
        supervisor.signal("node1", signal.SIGKILL, "gateway")
        await supervisor.wait_exited("node1", "gateway")
        await supervisor.release("node1", "gateway", timeout=120)
        assert gateway.process is not None and gateway.process.returncode is None
        assert autogroup(gateway.process.pid)[1] == -5
        assert gateway.not_favoured is None
    finally:
        await finish(run, stop)


def environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


@pytest.mark.slow
async def test_every_service_runs_with_glibcs_malloc_arenas_bounded(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glibc makes up to 8 malloc arenas per core as threads allocate, each keeping what
    it freed; the services run with two (about 20 MB less per node under load)."""
    from cretoai import registry

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    cfg = one_node(cluster_factory)
    events: list[str] = []
    supervisor = supervise(cfg, tmp_path / "logs", events)
    run, stop = await start_node(supervisor, events)
    try:
        arenas = {
            service: [v for v in environ_of(pid) if v.startswith(b"MALLOC_ARENA_MAX=")]
            for service, pid in service_pids(supervisor).items()
        }
        assert arenas == {s: [b"MALLOC_ARENA_MAX=2"] for s in registry.NAMES}, arenas
    finally:
        await finish(run, stop)


@needs_autogroup
def test_without_the_privilege_a_service_keeps_the_default_priority_and_is_told_why() -> None:
    """Unprivileged, ``favour`` cannot lower a nice value (it says why) but can raise it."""
    script = (
        "import subprocess\n"
        "from node.supervisor import favour\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "try:\n"
        "    print(favour(child.pid, -5))\n"
        "    print(favour(child.pid, 3))\n"
        "    print(open(f'/proc/{child.pid}/autogroup').read().split()[-1])\n"
        "finally:\n"
        "    child.kill()\n"
    )
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    lowered, raised, nice = out.stdout.split("\n")[:3]
    assert lowered.startswith("PermissionError: "), lowered
    assert lowered.endswith("; lowering it needs root or CAP_SYS_NICE"), lowered
    assert raised == "None"
    assert nice == "3"


@needs_autogroup
@pytest.mark.slow
async def test_a_service_that_cannot_be_favoured_starts_all_the_same_and_it_is_said(
    cluster_factory: Callable[..., ClusterLayout],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A nice value the kernel refuses (below -20: refused even to root) leaves the gateway
    at the default priority; the node starts, and the start says so once, with why."""
    from cretoai import registry

    gateway = registry.service("gateway")
    monkeypatch.setattr(
        registry,
        "SERVICES",
        tuple(
            dataclasses.replace(s, autogroup_nice=-21) if s is gateway else s
            for s in registry.SERVICES
        ),
    )
    cfg = one_node(cluster_factory)
    events: list[str] = []
    supervisor = supervise(cfg, tmp_path / "logs", events)
    run, stop = await start_node(supervisor, events)
    try:
        said = [e for e in events if "default scheduling priority" in e]
        assert said == [
            "gateway    runs at the default scheduling priority: its autogroup nice -21 was "
            "not applied (OSError: Invalid argument)"
        ], events
        child = supervisor.children_of("node1", "gateway")[0]
        assert child.process is not None and autogroup(child.process.pid)[1] == 0
    finally:
        await finish(run, stop)


def test_services_run_with_grpcs_own_logging_off_unless_the_operator_asks() -> None:
    """gRPC's C core wrote a line per failed TLS handshake into an internal service's
    log, whatever its level, and the TLS server name a stranger sent verbatim (forged
    log lines). Verified by hand on a real cluster (2026-12-04): 5 such handshakes with
    a forged line in the server name added 0 bytes to storage.log."""
    from node.supervisor import service_environment

    env = service_environment({"PATH": "/bin"})
    assert env == {"GRPC_VERBOSITY": "NONE", "MALLOC_ARENA_MAX": "2", "PATH": "/bin"}
    assert service_environment({"GRPC_VERBOSITY": "debug"})["GRPC_VERBOSITY"] == "debug"
    assert service_environment({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"
    # the command line itself too (its health checks wrote hundreds of gRPC lines to the
    # terminal for one node with a wrong address), set before grpc is first imported
    probe = "import node.cli, grpc, os; print(os.environ['GRPC_VERBOSITY'])"
    clean = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=clean, capture_output=True, text=True, cwd=REPO
    )
    assert out.stdout.strip() == "NONE", out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damaged", [1, 2], ids=["f_nodes", "more_than_f"])
async def test_cluster_up_starts_without_up_to_f_nodes_whose_storage_cannot_start(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path, damaged: int
) -> None:
    """A damaged database on one node made `cluster up` stop all four (crash audit,
    2026-12-04): a 4-node cluster tolerates one node down. That node stays down, the
    others start; with more than f down, the start fails as before."""
    layout = cluster_factory(4)
    configs = [load_config(n.config) for n in layout.nodes]
    for cfg in configs[-damaged:]:
        db = cfg.storage_path
        db.parent.mkdir(parents=True, exist_ok=True)
        Store.open(db).close()
        (db / "CURRENT").unlink()
    events: list[str] = []
    supervisor = supervise_cluster(configs, tmp_path, events)
    readied: list[bool] = []
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_until(supervisor, lambda: readied.append(True), stop, stop_on_give_up=False)
    )
    try:
        if damaged == 1:
            deadline = asyncio.get_running_loop().time() + 180
            while not readied:
                assert not run.done(), events
                assert asyncio.get_running_loop().time() < deadline, events
                await asyncio.sleep(0.2)
            assert list(supervisor.down) == ["node4"]
            assert any(
                e.startswith("node4 stays down; the cluster starts on 3 of 4") for e in events
            )
            assert "storage    serving on 3 node(s)" in events, events
            for child in supervisor.children:
                if child.node == "node4":
                    assert child.service == "storage" or child.process is None, child.label
                else:
                    assert child.process is not None and child.process.returncode is None
        else:
            code = await asyncio.wait_for(asyncio.shield(run), 180)
            assert code == 1 and not readied
            assert set(supervisor.down) == {"node3", "node4"}
    finally:
        await finish(run, stop)
    if damaged == 1:
        assert run.result() == 0


@pytest.mark.slow
async def test_a_node_whose_storage_is_given_up_while_the_cluster_runs_goes_down_whole(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    """Crash audit (2026-12-04): a storage given up while the cluster ran left its node's
    consensus retrying against it forever, its gateway taking requests. Now the node
    goes down whole (its other services stopped and not restarted) and the event says how
    many faulty nodes the cluster still tolerates; the other nodes run on."""
    layout = cluster_factory(4)
    configs = [load_config(n.config) for n in layout.nodes]
    events: list[str] = []
    supervisor = supervise_cluster(configs, tmp_path, events)
    ready = asyncio.Event()
    stop = asyncio.Event()
    run = asyncio.create_task(run_until(supervisor, ready.set, stop, stop_on_give_up=False))
    try:
        await asyncio.wait_for(ready.wait(), 180)
        # node4's database loses CURRENT and its storage dies: every restart now fails
        (configs[3].storage_path / "CURRENT").unlink()
        storage = supervisor.children_of("node4", "storage")[0]
        assert storage.process is not None
        os.kill(storage.process.pid, signal.SIGKILL)
        await asyncio.wait_for(supervisor.gave_up.wait(), 180)
        for child in supervisor.children_of("node4"):
            assert child.process is not None
            await asyncio.wait_for(child.process.wait(), 60)
        assert not run.done()
    finally:
        await finish(run, stop)

    assert run.result() == 0
    assert list(supervisor.down) == ["node4"]
    assert supervisor.down["node4"] == storage.gave_up
    assert (
        "node4 is down (its other services were stopped); the cluster runs on 3 of 4 nodes, "
        "which tolerates 0 more faulty node(s). Fix its cause and run cluster up again to "
        "bring it back"
    ) in events, events
    for child in supervisor.children_of("node4"):
        if child.service != "storage":
            # stopped by SIGTERM (exit 0), not killed, and never restarted
            assert child.process is not None and child.process.returncode == 0, child.label
            assert child.held and child.restarts == 0, child.label
    # the other nodes ran on until the end of the test: nothing of theirs was restarted
    for child in supervisor.children:
        if child.node != "node4":
            assert child.restarts == 0 and child.gave_up is None, child.label


async def test_a_service_failing_the_same_way_after_each_start_is_given_up_too(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    """An audit (2026-12-04): a consensus under another validator set halted 17-20 s
    after each start, longer than a failed start, and was restarted for good. Runs that
    end with the same error line count like failed starts (here every run is long enough
    to count as started: failed_start_uptime 0)."""
    cfg = one_node(cluster_factory)
    db = cfg.storage_path
    Store.open(db).close()
    (db / "CURRENT").unlink()
    logs = tmp_path / "logs"
    events: list[str] = []
    supervisor = Supervisor(
        [cfg], log_dir=lambda _: logs, max_failed_starts=MAX_FAILED_STARTS, failed_start_uptime=0
    )
    supervisor.on_event = events.append
    stop = asyncio.Event()
    run = asyncio.create_task(run_until(supervisor, lambda: None, stop, stop_on_give_up=True))
    try:
        code = await asyncio.wait_for(asyncio.shield(run), 120)
    finally:
        await finish(run, stop)
    assert code == 1
    storage = supervisor.children_of("node1", "storage")[0]
    assert storage.failed_starts == 0 and storage.same_errors == MAX_FAILED_STARTS
    assert storage.gave_up is not None
    assert storage.gave_up.startswith(
        f"node1/storage exited {MAX_FAILED_STARTS} times in a row with the same error "
    ), storage.gave_up
    assert f"saying: error: the database at {db} is corrupt: " in storage.gave_up


@pytest.mark.slow
async def test_a_node_whose_service_never_answers_its_health_check_stays_down_alone(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    """An audit (2026-12-04): node4's storage.advertise copied from node3's (the health
    check then reaches node3's storage, which refuses node4's certificate) made every
    node's start fail after 90 s. A node whose service runs but never serves stays down
    like one given up, up to f; the others start."""
    import tomllib

    import tomli_w

    layout = cluster_factory(4)
    node3, node4 = (n.config for n in layout.nodes[2:])
    data = tomllib.loads(node4.read_text())
    data["storage"]["advertise"] = load_config(node3).storage.listen
    node4.write_text(tomli_w.dumps(data))
    configs = [load_config(n.config) for n in layout.nodes]
    events: list[str] = []
    supervisor = supervise_cluster(configs, tmp_path, events, ready_timeout=15)
    ready, stop = asyncio.Event(), asyncio.Event()
    run = asyncio.create_task(run_until(supervisor, ready.set, stop, stop_on_give_up=False))
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({run, waiting}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert ready.is_set(), events
        assert list(supervisor.down) == ["node4"]
        assert any(e.startswith("node4/storage did not serve within 15s") for e in events), events
        assert any(e.startswith("node4 stays down; the cluster starts on 3 of 4") for e in events)
        storage = supervisor.children_of("node4", "storage")[0]
        assert storage.process is not None
        await asyncio.wait_for(storage.process.wait(), 30)  # stopped, not left running
        for child in supervisor.children:
            if child.node != "node4":
                assert child.process is not None and child.process.returncode is None
    finally:
        stop.set()
        await asyncio.wait_for(run, 120)
    assert run.result() == 0
