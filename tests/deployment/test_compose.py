"""compose.yaml and the Dockerfile.

* The real Compose v2 binary validates compose.yaml, with and without the tests'
  override, and the shape the issue asks for is checked on its resolved model
  (no engine needed).
* End to end on a real engine (``deployment``, ``slow``): a dockerd of the test's own,
  a base image made by debootstrap, the project image built without network (so the
  build falls back to the cryptography backend and says so), ``docker compose up``
  with Jaeger swapped for the project's OTLP receiver, a vertex submitted through
  node 1's gateway and finalized on all four nodes, spans at the receiver, every
  service scraped by Prometheus, one consensus container killed and the cluster still
  finalizing, a clean stop, a second ``up`` on the same volumes, ``down -v``.
  Where no engine can start it skips, with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deployment import engine as eng

pytestmark = pytest.mark.deployment

REPO = eng.REPO
COMPOSE = REPO / "compose.yaml"
OVERRIDE = Path(__file__).with_name("compose.otlp-receiver.yaml")
NODES = 4
SERVICES = ("storage", "transport", "consensus", "gateway")
#: Liboqs fallback line of docker/build-liboqs.sh (the issue's wording).
FALLBACK_LINE = "liboqs source unavailable: using the cryptography backend"
TIMINGS_FILE = Path(os.environ.get("CRETOAI_DEPLOY_TIMINGS", "/tmp/cretoai-deployment-timings.txt"))


def compose(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run the Compose v2 binary on compose.yaml; its stdout (AssertionError on failure)."""
    argv = [str(eng.compose_binary()), "-f", str(COMPOSE), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(argv[1:])}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def _stall_report(engine: eng.Engine, exc: subprocess.TimeoutExpired) -> str:
    """Why a compose command timed out: its output, the cluster's processes with their
    state and kernel wait channel (a D state is the kernel's, not ours), the engine's log."""
    states = subprocess.run(
        ["ps", "-eo", "pid,stat,wchan:32,etime,args"], capture_output=True, text=True, timeout=30
    ).stdout.splitlines()
    ours = [line for line in states if "cretoai" in line or "python" in line][:60]
    output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
    return "\n".join(
        [
            f"{' '.join(map(str, exc.cmd))} timed out after {exc.timeout} s",
            (output or "")[-2000:],
            "--- processes (pid, state, wait channel, elapsed, command):",
            *ours,
            "--- engine log:",
            engine.log_tail(30),
        ]
    )


def model(*files: Path) -> dict[str, Any]:
    extra = [a for f in files for a in ("-f", str(f))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    for var in ("CRETOAI_IMAGE", "PROMETHEUS_IMAGE", "CRETOAI_PUBLISH"):
        env.pop(var, None)
    env = {k: v for k, v in env.items() if not k.endswith("_HTTP_PORT")}
    out = compose(*extra, "config", "--format", "json", env=env)
    result: dict[str, Any] = json.loads(out)
    return result


# ---------------------------------------------------------------- the file itself


def test_compose_binary_is_the_real_one() -> None:
    version = subprocess.run(
        [str(eng.compose_binary()), "version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and "Docker Compose version v2." in version.stdout
    bad = subprocess.run(
        [str(eng.compose_binary()), "-f", "/nonexistent/compose.yaml", "config"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode != 0, "the binary must fail on a missing file (not the wrapper)"


def test_compose_yaml_is_valid_and_shaped_as_documented() -> None:
    compose("config", "--quiet")
    m = model()
    services = m["services"]
    node_services = {f"node{i}-{s}" for i in range(1, NODES + 1) for s in SERVICES}
    pools = {f"node{i}-gateway-pool" for i in range(1, NODES + 1)}
    assert set(services) == {"init", "jaeger", "prometheus"} | node_services | pools
    image = services["init"]["image"]
    assert services["init"]["build"]["context"] == str(REPO)
    assert services["init"]["entrypoint"] == ["sh", "-ec"]
    (script,) = services["init"]["command"]
    init = " ".join(script.replace("\\\n", " ").split())
    assert init.startswith("cretoai-node cluster init --nodes=4 --dir=/cluster ")
    assert "--reuse-keys" in init  # a second up reuses the keys
    assert "--key-dir='/keys/{node}'" in init
    assert "--service-host='{node}-{service}'" in init
    # a gateway's copy: the config, CA, its certificate and the submitter key, not tls/node.key
    assert "for f in ca.crt gateway.crt gateway.key; do" in script
    assert not [line for line in script.splitlines() if "cp " in line and "node.key" in line]
    init_mounts = {v["target"]: v["source"] for v in services["init"]["volumes"]}
    assert init_mounts == {
        **{f"/cluster/node{i}": f"node{i}-config" for i in range(1, NODES + 1)},
        **{f"/keys/node{i}": f"node{i}-key" for i in range(1, NODES + 1)},
        **{f"/gateway/node{i}": f"node{i}-gateway" for i in range(1, NODES + 1)},
    }
    for i in range(1, NODES + 1):
        for svc in SERVICES:
            pool = [f"node{i}-gateway-pool"] if svc == "gateway" else []
            for name in [f"node{i}-{svc}", *pool]:
                s = services[name]
                assert s["image"] == image, name
                assert s["command"] == [
                    "start", "--config", f"/cluster/node{i}/node.toml", "--service", svc,
                ], name  # fmt: skip
                assert s["environment"]["CRETOAI_SERVICE"] == svc
                assert s["environment"]["CRETOAI_CONFIG"] == f"/cluster/node{i}/node.toml"
                assert s["environment"]["CRETOAI_TELEMETRY_OTLP_ENDPOINT"] == "http://jaeger:4317"
                assert "cretoai-node health" in " ".join(s["healthcheck"]["test"]), name
                # the node's door gets a core first on a busy host (registry.autogroup_nice)
                assert s.get("cpu_shares") == (3072 if svc == "gateway" else None), name
                deps = s["depends_on"]
                assert deps["init"]["condition"] == "service_completed_successfully"
                before = {"consensus": ["storage", "transport"], "gateway": ["consensus"]}
                for d in before.get(svc, []):
                    assert deps[f"node{i}-{d}"]["condition"] == "service_healthy", name
                mounts = {v["target"]: v for v in s["volumes"]}
                config = mounts[f"/cluster/node{i}"]
                own = f"node{i}-gateway" if svc == "gateway" else f"node{i}-config"
                assert config["source"] == own and config["read_only"] is True, name
                others = tuple(f"node{j}-" for j in range(1, NODES + 1) if j != i)
                assert not any(v["source"].startswith(others) for v in s["volumes"])
                if svc in ("storage", "consensus"):
                    assert mounts["/var/lib/cretoai"]["source"] == f"node{i}-{svc}"
                    assert mounts["/var/lib/cretoai"]["type"] == "volume"
                # the validator key only where it signs; the gateway has its submitter key
                key = mounts.get(f"/keys/node{i}")
                if svc in ("consensus", "transport"):
                    assert key is not None and key["source"] == f"node{i}-key", name
                    assert key["read_only"] is True, name
                else:
                    assert key is None and len(mounts) <= 2, name
        ports = services[f"node{i}-gateway"]["ports"]
        assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [
            ("127.0.0.1", str(8079 + i), 8080)
        ]
        pool = services[f"node{i}-gateway-pool"]
        assert "ports" not in pool and pool["deploy"]["replicas"] == 0
    published = {
        (p["published"], p["target"])
        for s in services.values()
        for p in s.get("ports", [])
        if p["host_ip"] == "127.0.0.1"
    }
    assert {("16686", 16686), ("4317", 4317), ("9090", 9090)} <= published
    assert all(p["host_ip"] == "127.0.0.1" for s in services.values() for p in s.get("ports", []))
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    kinds = ("config", "key", "storage", "consensus", "gateway")
    assert {f"node{i}-{v}" for i in range(1, NODES + 1) for v in kinds} <= set(m["volumes"])


def test_prometheus_scrapes_every_service() -> None:
    import yaml

    text = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    config = yaml.safe_load(text)
    # cluster init --service-host: the metrics ports (gateway, consensus, transport, storage)
    ports = {"gateway": 17010, "consensus": 17011, "transport": 17012, "storage": 17013}
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                scraped[name] = sd["port"]
    for i in range(1, NODES + 1):
        for svc, port in ports.items():
            assert scraped[f"node{i}-{svc}"] == port
        assert scraped[f"node{i}-gateway-pool"] == ports["gateway"]


def test_the_override_changes_only_jaeger() -> None:
    plain = model()
    overridden = model(OVERRIDE)
    assert set(plain) == set(overridden)
    for key in plain:
        if key != "services":
            assert plain[key] == overridden[key], key
    assert set(plain["services"]) == set(overridden["services"])
    changed = {n for n in plain["services"] if plain["services"][n] != overridden["services"][n]}
    assert changed == {"jaeger"}
    before, after = plain["services"]["jaeger"], overridden["services"]["jaeger"]
    assert before["ports"] == after["ports"]  # the same ports: OTLP 4317, the UI's 16686
    assert after["entrypoint"] == ["python", "-m", "devkit.otlp_receiver"]


def test_dockerfile_shape() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2  # multi-stage
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    assert "ARG LIBOQS_VERSION=" in text
    assert "\nUSER ${UID}:${UID}" in text and "ARG UID=10001" in text
    assert "HEALTHCHECK" in text and "cretoai-node health" in text and "--service" in text
    script = (REPO / "docker" / "build-liboqs.sh").read_text()
    assert FALLBACK_LINE in script
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "cluster"} <= set(ignored)
    # private keys at any depth (deploy/k8s/node1/tls/node.key once slipped through)
    assert "**/*.key" in ignored


# ---------------------------------------------------------------- end to end


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: every socket is held until all are bound
    (one at a time, the kernel may hand out the same port twice: compose then failed
    with "port is already allocated")."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def _until(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    """Call ``check`` until it returns a truthy value (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)


@pytest.fixture(scope="module")
def timings() -> Iterator[eng.Timings]:
    t = eng.Timings()
    yield t
    report = "deployment layer, compose end to end (seconds):\n" + t.report()
    TIMINGS_FILE.write_text(report + "\n")
    print("\n" + report)


@pytest.fixture(scope="module")
def engine(timings: eng.Timings) -> Iterator[eng.Engine]:
    with timings.phase("dockerd start"):
        try:
            started = eng.start_engine()
        except eng.EngineUnavailable as exc:
            pytest.skip(f"docker engine could not start: {exc}")
    try:
        yield started
    finally:
        with timings.phase("dockerd stop"):
            started.stop()


def _submit(port: int, payload: bytes, trace_id: str | None = None) -> dict[str, Any]:
    """POST a vertex (signed by the gateway's submitter key) and wait for finality;
    ``trace_id``: as a client asking for a trace of it (a sampled ``traceparent``)."""
    body = {"payload": base64.b64encode(payload).decode(), "parents": []}
    headers = {"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"} if trace_id else {}
    reply: dict[str, Any] = _http(
        "POST", f"http://127.0.0.1:{port}/v1/vertices?wait=true", body, 60, headers
    )
    return reply


def _finalized_on(port: int, vertex: str) -> bool:
    reply = _http("GET", f"http://127.0.0.1:{port}/v1/vertices/{vertex}", timeout=10)
    return bool(reply.get("status") == "finalized")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compose_end_to_end(
    engine: eng.Engine, timings: eng.Timings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = tmp_path_factory.mktemp("compose")
    try:
        base = eng.base_image(engine, work, timings)
    except eng.EngineUnavailable as exc:
        pytest.skip(f"no base image: {exc}")
    wheels = eng.wheelhouse(engine, timings)
    tag = "cretoai/node:e2e"  # kept in the engine's data root, a cache for the next run
    with timings.phase("docker build (project image)", tag):
        context = eng.build_context(work, wheels)
        built = engine.docker(
            "build", "--network", "none", "--build-arg", f"BASE_IMAGE={base}",
            "-t", tag, str(context), timeout=600,
        )  # fmt: skip
    (work / "build.log").write_text(built.stdout + built.stderr)
    assert FALLBACK_LINE in built.stdout, built.stdout[-3000:]
    with timings.phase("prometheus image"):
        try:
            prometheus = eng.prometheus_image(engine, base, work)
        except eng.EngineUnavailable as exc:
            pytest.skip(str(exc))

    free = _free_ports(NODES + 3)
    http = {i: free[i - 1] for i in range(1, NODES + 1)}
    ports = dict(zip(("PROMETHEUS_PORT", "JAEGER_UI_PORT", "OTLP_PORT"), free[NODES:], strict=True))
    env = engine.env(
        COMPOSE_PROJECT_NAME=f"cretoai-e2e-{os.getpid()}",
        CRETOAI_IMAGE=tag,
        PROMETHEUS_IMAGE=prometheus,
        CRETOAI_PUBLISH="127.0.0.1",
        **{f"NODE{i}_HTTP_PORT": str(p) for i, p in http.items()},
        **{k: str(v) for k, v in ports.items()},
    )
    files = ["-f", str(OVERRIDE)]

    def dc(*args: str, timeout: float = 300) -> str:
        return compose(*files, *args, env=env, timeout=timeout)

    def containers() -> list[dict[str, Any]]:
        out = dc("ps", "--all", "--format", "json")
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [c for item in lines for c in (item if isinstance(item, list) else [item])]

    try:
        with timings.phase("compose up --wait", "16 services + init + receiver + prometheus"):
            try:
                dc("up", "--detach", "--no-build", "--wait", "--wait-timeout", "400",
                   "--scale", "node1-gateway-pool=1", timeout=480)  # fmt: skip
            except AssertionError as exc:  # say why: the logs of what is not healthy
                sick = [c["Name"] for c in containers() if c.get("Health") not in ("healthy", "")]
                logs = {n: engine.docker("logs", "--tail", "30", n, check=False) for n in sick}
                raise AssertionError(
                    "\n".join(
                        [
                            str(exc)[-2000:],
                            *(
                                f"--- {n}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
                                for n, r in logs.items()
                            ),
                        ]
                    )
                ) from None
        running = {c["Service"]: c for c in containers() if c["State"] == "running"}
        for i in range(1, NODES + 1):
            for svc in SERVICES:
                assert running[f"node{i}-{svc}"]["Health"] == "healthy", running.get(
                    f"node{i}-{svc}"
                )
        assert running["node1-gateway-pool"]["Health"] == "healthy"
        init_log = engine.docker("logs", f"{env['COMPOSE_PROJECT_NAME']}-init-1").stdout
        assert "initialised a 4-node cluster" in init_log, init_log
        for svc in ("gateway", "storage"):  # no validator key where nothing signs with it
            where = f"{env['COMPOSE_PROJECT_NAME']}-node1-{svc}-1"
            found = engine.docker("exec", where, "find", "/cluster", "/keys", "-name", "node.key",
                                  "-not", "-path", "*/tls/*", check=False)  # fmt: skip
            assert found.stdout.strip() == "", (svc, found.stdout)
        for svc in ("gateway", "gateway-pool"):  # nor the services' TLS key in a gateway
            where = f"{env['COMPOSE_PROJECT_NAME']}-node1-{svc}-1"
            found = engine.docker("exec", where, "find", "/cluster", "-name", "*.key",
                                  check=False)  # fmt: skip
            keys = sorted(found.stdout.split())
            assert keys == ["/cluster/node1/submitter.key", "/cluster/node1/tls/gateway.key"], (
                svc, found.stdout, found.stderr,
            )  # fmt: skip
        backend = engine.docker("logs", f"{env['COMPOSE_PROJECT_NAME']}-node1-consensus-1")
        assert 'msg="crypto backend" backend=cryptography' in backend.stdout + backend.stderr

        with timings.phase("first vertex finalized on 4 nodes"):
            trace_id = os.urandom(16).hex()
            first = _submit(http[1], b"compose end to end", trace_id)
            assert first["status"] == "finalized", first
            for i in range(1, NODES + 1):
                _until(
                    f"finalized on node{i}", lambda i=i: _finalized_on(http[i], first["hash"]), 60
                )

        with timings.phase("spans at the receiver"):
            spans_url = f"http://127.0.0.1:{ports['JAEGER_UI_PORT']}/spans"

            def traced() -> bool:
                spans = _http("GET", spans_url)["spans"]
                ours = {(s["node"], s["service_name"]) for s in spans if s["trace_id"] == trace_id}
                # node 1 took the submission: its trace runs through all four of node 1's
                # services and every node's consensus ordered it
                want = {("node1", f"cretoai-{s}") for s in SERVICES}
                want |= {(f"node{i}", "cretoai-consensus") for i in range(1, NODES + 1)}
                return want <= ours

            _until("one trace from node 1's gateway through its services and every consensus",
                   traced, 90, interval=2)  # fmt: skip

        with timings.phase("prometheus: every target up"):
            targets_url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/targets"

            def scraped() -> bool:
                active = _http("GET", targets_url)["data"]["activeTargets"]
                up = {
                    (t["labels"]["job"], t["labels"].get("node"))
                    for t in active
                    if t["health"] == "up"
                }
                want = {(f"cretoai-{s}", f"node{i}") for i in range(1, NODES + 1) for s in SERVICES}
                # + the pool's gateway: 17 targets
                return want <= up and sum(t["health"] == "up" for t in active) == 17

            _until("Prometheus scraping all 17 services", scraped, 120, interval=3)

        with timings.phase("kill node2-consensus, still finalizing"):
            killed = f"{env['COMPOSE_PROJECT_NAME']}-node2-consensus-1"
            engine.docker("kill", killed)
            second = _submit(http[1], b"one consensus down")
            assert second["status"] == "finalized", second
            for i in (1, 3, 4):
                _until(
                    f"finalized on node{i}", lambda i=i: _finalized_on(http[i], second["hash"]), 60
                )
            state = engine.docker("inspect", "-f", "{{.State.Status}}", killed).stdout.strip()
            assert state == "exited", state

        with timings.phase("compose stop (clean exits)"):
            try:
                dc("stop", timeout=180)
            except subprocess.TimeoutExpired as exc:
                # once (2026-12-05) the engine itself stalled here for minutes, no container
                # signalled or killed in its log: say what each process was doing
                raise AssertionError(_stall_report(engine, exc)) from None
            exits = {c["Service"]: c["ExitCode"] for c in containers()}
            bad = {s: code for s, code in exits.items() if code != 0 and s != "node2-consensus"}
            assert not bad, f"services that did not stop cleanly: {bad}"

        with timings.phase("second up on the same volumes"):
            dc("up", "--detach", "--no-build", "--wait", "--wait-timeout", "400", timeout=480)
            init_log = engine.docker("logs", f"{env['COMPOSE_PROJECT_NAME']}-init-1").stdout
            assert "reused the keys of a 4-node cluster" in init_log, init_log
            assert _finalized_on(http[1], first["hash"]) and _finalized_on(http[1], second["hash"])
            third = _submit(http[1], b"after a restart")
            assert third["status"] == "finalized", third

        with timings.phase("compose down -v"):
            dc("down", "--volumes", "--timeout", "30", timeout=240)
            project = env["COMPOSE_PROJECT_NAME"]
            label = f"label=com.docker.compose.project={project}"
            assert engine.docker("ps", "-aq", "--filter", label).stdout.strip() == ""
            assert engine.docker("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
            assert engine.docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""
    finally:
        # whatever happened: nothing of this project stays (containers, networks, volumes)
        subprocess.run(
            [str(eng.compose_binary()), "-f", str(COMPOSE), *files, "down", "--volumes",
             "--remove-orphans", "--timeout", "5"],
            env=env, cwd=REPO, capture_output=True, timeout=240,
        )  # fmt: skip
        engine.docker("image", "prune", "--force", check=False)  # earlier builds' layers
