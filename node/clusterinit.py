"""Keys and configs for an N-node local cluster (``cretoai-node cluster init``).

Layout written under DIR::

    DIR/cluster.json          every node's service endpoints (machine-readable)
    DIR/node1/node.key        private key, mode 0600
    DIR/node1/node.pub        public key, hex
    DIR/node1/node.toml       the node's config (validator set, ports, paths)
    DIR/node1/data/           created by the node at start

Ports: node i (1-based) gets gateway HTTP ``http_port + i - 1`` (node 1 on
8080 by default) and a block of internal ports ``base_port + 20 * (i - 1)``:
+0 QUIC, +1 consensus, +2 transport, +3 storage, +4 gateway gRPC,
+10..+13 metrics of gateway, consensus, transport, storage.

With ``service_host`` (containers, Kubernetes: ``--service-host '{node}-{service}'``)
every service is its own host: each binds ``0.0.0.0`` (unless ``host`` says
otherwise) on the same ports on every node — HTTP ``http_port`` and the block
``base_port`` — and is reached by the name the template gives it
(``node1-consensus:17001``). Siblings dial those names (``advertise``), peers
dial ``<node>-transport`` on the QUIC port (``[[validators]] address``), and
the node's certificate names every one of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from cretoai import registry
from cretoai.config import ConfigError, load_config, parse_config, to_toml_dict
from cretoai.crypto.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    KeyFileError,
    node_id,
    read_public_key,
    write_keypair,
)
from cretoai.files import check_directories, write_atomically
from cretoai.tls import (
    CA_FILE,
    CERT_FILE,
    GATEWAY_CERT_FILE,
    GATEWAY_KEY_FILE,
    KEY_FILE,
    generate_node_tls,
)
from node.ports import Listener, in_use

DEFAULT_HTTP_PORT = 8080
DEFAULT_BASE_PORT = 17000
PORTS_PER_NODE = 20
CLUSTER_FILE = "cluster.json"
CONFIG_FILE = "node.toml"


@dataclass(frozen=True)
class NodeLayout:
    name: str
    directory: Path
    config: Path
    node_id: str


@dataclass(frozen=True)
class ClusterLayout:
    directory: Path
    nodes: tuple[NodeLayout, ...]

    @property
    def cluster_file(self) -> Path:
        return self.directory / CLUSTER_FILE


#: The gateway's key for unsigned submissions (a client identity, not a validator's).
SUBMITTER_KEY_FILE = "submitter.key"
#: Each node's internal TLS files live in this folder of the node's directory.
TLS_DIR = "tls"


def ports_free(host: str, ports: list[int]) -> list[int]:
    """The subset of ``ports`` that something holds on ``host`` right now (TCP or UDP)."""
    return [
        port
        for port in ports
        if in_use(Listener("", "", f"{host}:{port}"))
        or in_use(Listener("", "", f"{host}:{port}", udp=True))
    ]


def service_hostname(template: str, node: str, service: str) -> str:
    """The host name ``template`` gives ``service`` of ``node`` (ConfigError when malformed)."""
    try:
        name = template.format(node=node, service=service)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"--service-host {template!r}: use only {{node}} and {{service}} ({exc})"
        ) from None
    if not name or any(c.isspace() or c in ":/[]" for c in name):
        raise ConfigError(f"--service-host {template!r}: {name!r} is not a host name")
    return name


def _check_service_host(template: str, nodes: int) -> None:
    if nodes > 1 and "{node}" not in template:
        raise ConfigError(
            f"--service-host {template!r}: must contain {{node}} (every node's services "
            "use the same ports, so each node needs host names of its own)"
        )
    for service in registry.NAMES:
        service_hostname(template, "node1", service)


def _container_sections(
    *, name: str, template: str, bind: str, http_port: int, block: int
) -> dict[str, Any]:
    """A node's sections when each service is its own host (see the module docstring)."""

    def named(service: str, port: int) -> str:
        return f"{service_hostname(template, name, service)}:{port}"

    return {
        "gateway": {
            "http": f"{bind}:{http_port}",
            "grpc": f"{bind}:{block + 4}",
            "metrics": f"{bind}:{block + 10}",
        },
        "consensus": {
            "listen": f"{bind}:{block + 1}",
            "advertise": named("consensus", block + 1),
            "metrics": f"{bind}:{block + 11}",
        },
        "transport": {
            "listen": f"{bind}:{block + 2}",
            "advertise": named("transport", block + 2),
            "metrics": f"{bind}:{block + 12}",
            "quic_listen": f"{bind}:{block}",
            "advertise_address": named("transport", block),
        },
        "storage": {
            "listen": f"{bind}:{block + 3}",
            "advertise": named("storage", block + 3),
            "metrics": f"{bind}:{block + 13}",
        },
    }


def _node_sections(
    *, name: str, host: str, http_port: int, block: int, extra: dict[str, Any]
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "node": {"name": name, "key": PRIVATE_KEY_FILE, "data_dir": "data"},
        "gateway": {
            "http": f"{host}:{http_port}",
            "grpc": f"{host}:{block + 4}",
            "metrics": f"{host}:{block + 10}",
            "submitter_key": SUBMITTER_KEY_FILE,
        },
        "consensus": {"listen": f"{host}:{block + 1}", "metrics": f"{host}:{block + 11}"},
        "transport": {"listen": f"{host}:{block + 2}", "metrics": f"{host}:{block + 12}"},
        "storage": {"listen": f"{host}:{block + 3}", "metrics": f"{host}:{block + 13}"},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return data


def _refuse_old_data(directory: Path, names: list[str], data_dir: str | None) -> None:
    """New keys make a new cluster: a node's old database and signing mark belong to the
    old one (their certificates fail under the new keys), so ``--force`` does not run
    over them. With ``reuse_keys`` they stay valid and are kept."""
    relative = Path(data_dir or "data")
    if relative.is_absolute():
        return  # outside the cluster directory (a container volume): the operator's
    for name in names:
        data = directory / name / relative
        if data.is_dir() and any(data.iterdir()):
            raise ConfigError(
                f"{data}: holds {name}'s database and signing mark, made under its old "
                "keys; --force writes new keys (a new cluster), which cannot use them. "
                "Move the data directories away first, or keep the keys with --reuse-keys"
            )


#: Held (flock) by ``cluster up`` for as long as it runs, and by the ``cluster init``
#: command over an existing cluster: two supervisors on one directory each took the
#: other's ports and databases for their own and gave every node up (an audit, 2026-12-04).
LOCK_FILE = ".cluster.lock"


@contextlib.contextmanager
def cluster_lock(directory: Path, doing: str) -> Iterator[None]:
    """Hold ``directory``'s cluster lock; :class:`ConfigError` when another process does."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"{directory}: a cretoai-node cluster up (or init) runs on this directory "
                f"(it holds {directory / LOCK_FILE}); stop it before {doing}"
            ) from None
        yield
    finally:
        os.close(fd)


def _refuse_another_size(directory: Path, nodes: int, data_dir: str | None) -> None:
    """``--reuse-keys`` with another ``--nodes`` over a cluster that holds data: every node
    would run under another validator set than its database's (there is no
    reconfiguration). An audit (2026-12-04) rewrote a running 4-node cluster's configs
    for 7 nodes: a consensus restarted after it banned its three honest peers."""
    try:
        held = json.loads((directory / CLUSTER_FILE).read_text())["nodes"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(held, list) or len(held) == nodes:
        return
    relative = Path(data_dir or "data")
    names = [n.get("name") for n in held if isinstance(n, dict)]
    with_data = [
        name
        for name in names
        if isinstance(name, str)
        and not relative.is_absolute()
        and (directory / name / relative).is_dir()
        and any((directory / name / relative).iterdir())
    ]
    if with_data:
        raise ConfigError(
            f"{directory} holds a {len(held)}-node cluster whose nodes hold its history "
            f"({', '.join(with_data)}); --nodes {nodes} would run them under another "
            "validator set, which a cluster cannot change. Use another --dir for a "
            f"{nodes}-node cluster, or move the data directories away first"
        )


def init_cluster(
    directory: Path,
    nodes: int,
    *,
    host: str = "127.0.0.1",
    http_port: int = DEFAULT_HTTP_PORT,
    base_port: int = DEFAULT_BASE_PORT,
    force: bool = False,
    reuse_keys: bool = False,
    extra: dict[str, Any] | None = None,
    tls: bool = True,
    service_host: str | None = None,
    data_dir: str | None = None,
    key_dir: str | None = None,
) -> ClusterLayout:
    """Write keys, one config per node and ``cluster.json`` for an ``nodes``-node cluster.

    Existing files are not overwritten unless ``force``; with ``reuse_keys``,
    existing key pairs are kept and only configs are (re)written. ``extra``
    adds settings to every node's config, e.g. ``{"fault_injection": {"enabled": True}}``.
    ``tls``: give each node its own CA and certificate for mutual TLS between its
    services (``<node>/tls/``); kept as they are with ``reuse_keys``.
    ``service_host``: a template such as ``"{node}-{service}"``: each service is its own
    host (containers; see the module docstring); needs ``tls``. ``data_dir``: every
    node's ``node.data_dir`` (default ``data``, next to its config). ``key_dir``: where
    each node's validator key pair goes instead of its directory, a template with
    ``{node}`` (relative: to ``directory``), e.g. a volume only consensus and transport
    mount.
    """
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    if not (http_port >= 1 and http_port + nodes - 1 <= 65535):
        raise ConfigError(f"--http-port {http_port} leaves no room for {nodes} gateways")
    if not (base_port >= 1024 and base_port + PORTS_PER_NODE * nodes <= 65535):
        raise ConfigError(f"--base-port {base_port} leaves no room for {nodes} nodes")
    if service_host is not None:
        _check_service_host(service_host, nodes)
        if not tls:
            raise ConfigError("--service-host: services on other hosts need internal TLS")
    directory = directory.resolve()
    cluster_file = directory / CLUSTER_FILE
    if cluster_file.exists() and not (force or reuse_keys):
        raise ConfigError(f"{cluster_file}: already exists (use --force to overwrite)")
    names = [f"node{i}" for i in range(1, nodes + 1)]
    if cluster_file.exists():
        _refuse_another_size(directory, nodes, data_dir)
    if force and not reuse_keys:
        _refuse_old_data(directory, names, data_dir)
    key_dirs = {name: _validator_key_dir(directory, key_dir, name) for name in names}
    problem = check_directories(
        [
            directory,
            *(directory / n for n in names),
            *(directory / n / "tls" for n in names),
            *key_dirs.values(),
        ]
    )
    if problem is not None:
        raise ConfigError(
            f"{problem}: another user could replace the keys, certificates or configs "
            "written there; use a directory only you can write"
        )
    public_keys: list[bytes] = []
    for name in names:
        kdir = key_dirs[name]
        if reuse_keys and (kdir / PRIVATE_KEY_FILE).exists():
            public_keys.append(read_public_key(kdir / PUBLIC_KEY_FILE))
            continue
        write_keypair(kdir, force=force)
        public_keys.append(read_public_key(kdir / PUBLIC_KEY_FILE))
    for name in names:  # the gateways' own keys for unsigned submissions (not validators)
        node_dir = directory / name
        if not (reuse_keys and (node_dir / SUBMITTER_KEY_FILE).exists()):
            write_keypair(node_dir, force=True, stem="submitter")
    validators = [
        {
            "name": name,
            "public_key": public_keys[i].hex(),
            "address": (
                f"{service_hostname(service_host, name, 'transport')}:{base_port}"
                if service_host is not None
                else f"{host}:{base_port + PORTS_PER_NODE * i}"
            ),
        }
        for i, name in enumerate(names)
    ]
    layouts = []
    summary: dict[str, Any] = {"nodes": []}
    for i, name in enumerate(names):
        node_dir = directory / name
        if service_host is None:
            data = _node_sections(
                name=name,
                host=host,
                http_port=http_port + i,
                block=base_port + PORTS_PER_NODE * i,
                extra=extra or {},
            )
            hostnames: list[str] = []
        else:
            data = _node_sections(
                name=name, host=host, http_port=http_port, block=base_port, extra={}
            )
            containers = _container_sections(
                name=name, template=service_host, bind=host, http_port=http_port, block=base_port
            )
            for section, values in {**containers, **(extra or {})}.items():
                data.setdefault(section, {}).update(values)
            hostnames = sorted({service_hostname(service_host, name, s) for s in registry.NAMES})
        if data_dir is not None:
            data["node"]["data_dir"] = data_dir
        if key_dir is not None:
            data["node"]["key"] = str(key_dirs[name] / PRIVATE_KEY_FILE)
        data["validators"] = validators
        if tls:
            data.setdefault("tls", {}).update(
                _node_tls(node_dir, name, reuse=reuse_keys, hostnames=hostnames)
            )
        config_path = node_dir / CONFIG_FILE
        cfg = parse_config(data, config_path)  # validate before writing
        write_atomically(config_path, tomli_w.dumps(to_toml_dict(cfg)).encode())
        if not Path(cfg.node.data_dir).is_absolute():
            # the node never creates it (a missing one is an unmounted volume or a wrong
            # path); an absolute one is the operator's (a container volume)
            cfg.data_dir.mkdir(mode=0o700, exist_ok=True)
        nid = node_id(public_keys[i])
        layouts.append(NodeLayout(name=name, directory=node_dir, config=config_path, node_id=nid))
        gateway_host = (
            None if service_host is None else service_hostname(service_host, name, "gateway")
        )
        summary["nodes"].append(describe_node(cfg, nid, gateway_host=gateway_host))
    write_atomically(cluster_file, (json.dumps(summary, indent=2) + "\n").encode())
    return ClusterLayout(directory=directory, nodes=tuple(layouts))


def _validator_key_dir(directory: Path, template: str | None, name: str) -> Path:
    """Where node ``name``'s validator key pair lives (``template``: see init_cluster)."""
    if template is None:
        return directory / name
    if "{node}" not in template:
        raise ConfigError(f"--key-dir {template!r}: must contain {{node}}")
    try:
        path = Path(template.format(node=name))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"--key-dir {template!r}: use only {{node}} ({exc})") from None
    return path if path.is_absolute() else directory / path


def _node_tls(
    node_dir: Path, name: str, *, reuse: bool, hostnames: list[str] | None = None
) -> dict[str, str]:
    """The node's internal TLS files (made unless ``reuse`` finds them), relative paths."""
    tls_dir = node_dir / TLS_DIR
    names = (CA_FILE, CERT_FILE, KEY_FILE, GATEWAY_CERT_FILE, GATEWAY_KEY_FILE)
    # all anew when one is missing (no CA key is kept to issue the missing one with)
    if not (reuse and all((tls_dir / n).exists() for n in names)):
        generate_node_tls(tls_dir, name, hostnames=hostnames or ())
    return {
        "ca": f"{TLS_DIR}/{CA_FILE}",
        "cert": f"{TLS_DIR}/{CERT_FILE}",
        "key": f"{TLS_DIR}/{KEY_FILE}",
        "gateway_cert": f"{TLS_DIR}/{GATEWAY_CERT_FILE}",
        "gateway_key": f"{TLS_DIR}/{GATEWAY_KEY_FILE}",
    }


def describe_node(cfg: Any, nid: str, *, gateway_host: str | None = None) -> dict[str, Any]:
    """The endpoints of one node, as written to cluster.json: where each is reached
    (``advertise`` when set); ``gateway_host`` names the gateway's host (containers)."""
    http = cfg.gateway.http
    if gateway_host is not None:
        http = f"{gateway_host}:{http.rpartition(':')[2]}"
    return {
        "name": cfg.node.name,
        "node_id": nid,
        "config": str(cfg.source),
        "gateway_url": f"http://{http}",
        "gateway_grpc": cfg.gateway.grpc,
        "quic": cfg.quic_listen,
        "consensus": registry.service("consensus").target(cfg),
        "transport": registry.service("transport").target(cfg),
        "storage": registry.service("storage").target(cfg),
        "metrics": {
            "gateway": cfg.gateway.metrics,
            "consensus": cfg.consensus.metrics,
            "transport": cfg.transport.metrics,
            "storage": cfg.storage.metrics,
        },
    }


def load_cluster(directory: Path) -> list[Path]:
    """The config files of an initialised cluster directory, in node order."""
    cluster_file = directory / CLUSTER_FILE
    try:
        data = json.loads(cluster_file.read_text())
        configs = [Path(n["config"]) for n in data["nodes"]]
    except FileNotFoundError:
        raise ConfigError(f"{cluster_file}: not found (run: cretoai-node cluster init)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{cluster_file}: malformed ({exc})") from None
    for config in configs:
        load_config(config)
    return configs


__all__ = [
    "ClusterLayout",
    "KeyFileError",
    "NodeLayout",
    "cluster_lock",
    "init_cluster",
    "load_cluster",
]
