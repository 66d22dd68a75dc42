"""``cretoai-node``: the operator's command line.

Every command prints a one-line ``error: ...`` and exits non-zero on bad input
(2 for usage/config errors, 1 for a failed operation) — never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cretoai import __version__, registry
from cretoai.config import ConfigError, NodeConfig, load_config
from cretoai.crypto import KeyFileError, write_keypair

DEFAULT_CLUSTER_DIR = Path("cluster")


class CommandError(Exception):
    """A failed operation (exit code 1)."""


def _cmd_keygen(args: argparse.Namespace) -> int:
    path, nid = write_keypair(Path(args.output), force=args.force)
    print(f"private key: {path} (mode 0600)")
    print(f"public key:  {path.with_name('node.pub')}")
    print(f"node id:     {nid}")
    return 0


def _cmd_cluster_init(args: argparse.Namespace) -> int:
    from node.clusterinit import CLUSTER_FILE, cluster_lock, init_cluster

    host = args.host or ("0.0.0.0" if args.service_host else "127.0.0.1")
    directory = Path(args.dir)
    reuse = args.reuse_keys and any(directory.glob("*/tls/node.key"))
    # not over a cluster that a cluster up runs (a new directory has nobody to race with)
    held = (
        cluster_lock(directory, "initialising it again")
        if (directory / CLUSTER_FILE).exists()
        else contextlib.nullcontext()
    )
    with held:
        layout = init_cluster(
            directory,
            args.nodes,
            host=host,
            http_port=args.http_port,
            base_port=args.base_port,
            force=args.force,
            reuse_keys=args.reuse_keys,
            service_host=args.service_host,
            data_dir=args.data_dir,
            key_dir=args.key_dir,
        )
    done = "reused the keys of" if reuse else "initialised"
    print(f"{done} a {len(layout.nodes)}-node cluster in {layout.directory}")
    for node in layout.nodes:
        print(f"  {node.name}  id {node.node_id[:16]}…  config {node.config}")
    print(f"endpoints: {layout.cluster_file}")
    return 0


def _cmd_cluster_up(args: argparse.Namespace) -> int:
    from node.supervisor import cluster_up

    return cluster_up(args)


def _cmd_start(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.service:
        # the service's own entry point, in this process (what its container runs)
        module = importlib.import_module(registry.service(args.service).module + ".__main__")
        result: int = module.main(["--config", str(cfg.source)])
        return result
    from node.supervisor import start_node

    return start_node(cfg)


def local_target(listen: str) -> str:
    """Where a process on the service's own host reaches a service bound to ``listen``:
    a wildcard bind (``0.0.0.0``, ``::``) is reached on loopback."""
    host, _, port = listen.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = "[::1]" if ":" in host else "127.0.0.1"
    return f"{host}:{port}"


def _health_of(cfg: NodeConfig, service: str, timeout: float, *, local: bool = False) -> str:
    """The gRPC health of ``service``: where its siblings reach it, or with ``local``
    at its bind address (a container checking itself, before any name resolves to it)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cretoai.channels import blocking_channel, service_endpoint

    target, tls = service_endpoint(cfg, service)
    if local:
        target = local_target(registry.service(service).listen(cfg))
    with blocking_channel(target, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            return "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else code.name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def service_targets(cfg: NodeConfig) -> dict[str, str]:
    """Where each service of the node is reached, in start order."""
    from cretoai.channels import service_endpoint

    return {name: service_endpoint(cfg, name)[0] for name in registry.NAMES}


def _cmd_health(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.service:
        status = _health_of(cfg, args.service, args.timeout, local=True)
        where = local_target(registry.service(args.service).listen(cfg))
        if args.json:
            print(json.dumps({"node": cfg.node.name, "services": {args.service: status}}))
        else:
            print(f"{cfg.node.name} {args.service:<10} {where:<22} {status}")
        return 0 if status == "SERVING" else 1
    statuses = {name: _health_of(cfg, name, args.timeout) for name in service_targets(cfg)}
    if args.json:
        print(json.dumps({"node": cfg.node.name, "services": statuses}))
    else:
        for name, status in statuses.items():
            print(f"{cfg.node.name} {name:<10} {service_targets(cfg)[name]:<22} {status}")
    return 0 if all(s == "SERVING" for s in statuses.values()) else 1


def _gateway_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    return f"http://{load_config(args.config).gateway.http}"


def _http(method: str, url: str, body: dict[str, object] | None, timeout: float) -> object:
    """One JSON request to a gateway; errors become CommandError with the server's message."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = exc.reason
        raise CommandError(f"{method} {url}: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise CommandError(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None


def _cmd_status(args: argparse.Namespace) -> int:
    status = _http("GET", _gateway_url(args) + "/v1/status", None, args.timeout)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    assert isinstance(status, dict)
    alone = " [alone in this view: its peers are in a lower one]"
    print(
        f"{status['node_name']} (replica {status['replica']} of n={status['n']}, f={status['f']}) "
        f"view {status['view']} primary {status['primary']}"
        f"{' [view change]' if status['view_changing'] else ''}"
        f"{alone if status.get('alone_in_view') else ''}"
    )
    print(
        f"executed seq {status['last_executed_seq']}, stable checkpoint "
        f"{status['stable_checkpoint']}, pool {status['pool_size']}, "
        f"ready {status['ready']}, evidence {status.get('evidence', 0)}"
    )
    for peer in status["peers"]:
        flags = "connected" if peer["connected"] else "DISCONNECTED"
        if peer["banned"]:
            flags += " BANNED"
        if peer.get("refuses_this_node"):
            flags += " REFUSES-US"
        print(
            f"  peer {peer['name']:<8} {flags:<20} reputation {peer['reputation']:>5} "
            f"rtt {peer['rtt_ms']:.2f} ms"
        )
    services = status.get("services", {})
    print("services: " + ", ".join(f"{k} {v}" for k, v in services.items()))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    import base64

    if args.file:
        try:
            payload = Path(args.file).read_bytes()
        except OSError as exc:
            raise CommandError(f"{args.file}: {exc.strerror}") from None
    else:
        payload = args.payload.encode()
    body = {"payload": base64.b64encode(payload).decode(), "parents": args.parent or []}
    url = _gateway_url(args) + "/v1/vertices" + ("?wait=true" if args.wait else "")
    reply = _http("POST", url, body, args.timeout)
    assert isinstance(reply, dict)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        where = f" at seq {reply['seq']}" if reply.get("seq") else ""
        print(f"{reply['hash']} {reply['status']}{where}")
    return 0


def _delegate(module_name: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A command carried out by ``module_name.func(args)``, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module_name), func)(args)
        return result

    return run


def _cmd_sim(argv: Sequence[str]) -> int:
    from services.consensus.sim.__main__ import main as sim_main

    return sim_main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cretoai-node",
        description="CretoAI node: a PBFT consensus node for a DAG of ML-DSA-87-signed vertices.",
    )
    parser.add_argument("--version", action="version", version=f"cretoai-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("keygen", help="generate an ML-DSA-87 node key pair")
    p.add_argument("--output", required=True, metavar="DIR", help="directory for node.key/node.pub")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=_cmd_keygen)

    cluster = sub.add_parser("cluster", help="a local multi-node cluster on this machine")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    p = csub.add_parser("init", help="write keys, one config per node and cluster.json")
    p.add_argument("--nodes", type=int, default=4, help="number of nodes (default 4)")
    p.add_argument("--dir", default=str(DEFAULT_CLUSTER_DIR), help="output directory")
    p.add_argument(
        "--host",
        help="address every service binds (default 127.0.0.1; 0.0.0.0 with --service-host)",
    )
    p.add_argument("--http-port", type=int, default=8080, help="node 1's gateway HTTP port")
    p.add_argument("--base-port", type=int, default=17000, help="first internal port")
    p.add_argument("--force", action="store_true", help="overwrite an existing cluster")
    p.add_argument(
        "--reuse-keys",
        action="store_true",
        help="keep existing keys and TLS files, (re)write only the configs (idempotent)",
    )
    p.add_argument(
        "--service-host",
        metavar="TEMPLATE",
        help="each service is its own host (containers, Kubernetes), named by TEMPLATE from "
        "{node} and {service}, e.g. '{node}-{service}' -> node1-consensus: every service "
        "binds --host on the same ports on every node (gateway HTTP --http-port; QUIC "
        "--base-port, then +1 consensus, +2 transport, +3 storage, +4 gateway gRPC, "
        "+10..+13 metrics of gateway, consensus, transport, storage), its siblings and "
        "peers dial it by that name, and the node's TLS certificate names them",
    )
    p.add_argument(
        "--data-dir",
        metavar="PATH",
        help="every node's data directory (default: data, next to its config); an absolute "
        "path suits containers, where it is a volume",
    )
    p.add_argument(
        "--key-dir",
        metavar="TEMPLATE",
        help="put each node's validator key pair (node.key, node.pub) in TEMPLATE, a "
        "directory named with {node} (relative: to --dir), e.g. '/keys/{node}': a volume "
        "only the services that sign (consensus, transport) mount",
    )
    p.set_defaults(func=_cmd_cluster_init)
    p = csub.add_parser("up", help="run a whole local cluster in the foreground (Ctrl-C stops)")
    p.add_argument("--nodes", type=int, default=4, help="number of nodes (default 4)")
    p.add_argument("--dir", default=str(DEFAULT_CLUSTER_DIR), help="cluster directory")
    p.add_argument("--http-port", type=int, default=8080, help="node 1's gateway HTTP port")
    p.add_argument("--base-port", type=int, default=17000, help="first internal port")
    p.set_defaults(func=_cmd_cluster_up)

    p = sub.add_parser("start", help="run one node (all four services), or one service of it")
    p.add_argument("--config", required=True, help="the node's TOML config")
    p.add_argument("--service", choices=registry.NAMES, help="run only this service (containers)")
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser("health", help="check every service of a node (exit 0 when all serve)")
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument(
        "--service",
        choices=registry.NAMES,
        help="check only this service, at its bind address on this host (a 0.0.0.0 bind "
        "on loopback): what a container's HEALTHCHECK or a readiness probe runs",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per check")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_health)

    p = sub.add_parser("status", help="a node's view of the cluster (through its gateway)")
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument("--url", help="a gateway URL instead of --config, e.g. http://127.0.0.1:8080")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("submit", help="submit a vertex (signed by the gateway's submitter key)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--payload", help="the payload, as text")
    what.add_argument("--file", help="read the payload from this file")
    p.add_argument("--parent", action="append", metavar="HASH", help="a parent hash (repeat)")
    p.add_argument("--wait", action="store_true", help="wait until the vertex is final")
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument("--url", help="a gateway URL instead of --config")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--json", action="store_true", help="print the gateway's whole answer")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("backup", help="back up a node's database (RocksDB checkpoint)")
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument("--output", required=True, metavar="DIR", help="backup directory (new)")
    p.set_defaults(func=_delegate("services.storage.admin", "backup_command"))

    p = sub.add_parser("restore", help="restore a node's database from a backup")
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="backup dir")
    p.add_argument("--force", action="store_true", help="replace an existing database")
    p.set_defaults(func=_delegate("services.storage.admin", "restore_command"))

    p = sub.add_parser(
        "verify", help="read a node's database (or a backup) whole, every block's checksum"
    )
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument("--path", metavar="DIR", help="a backup or database instead of the node's")
    p.set_defaults(func=_delegate("services.storage.admin", "verify_command"))

    p = sub.add_parser(
        "evidence",
        help="validators this node bans for equivocation; --forgive lifts a ban (node stopped)",
    )
    p.add_argument("--config", default="node.toml", help="the node's TOML config")
    p.add_argument(
        "--forgive", metavar="NAME", help="lift the ban of this validator (its cause gone)"
    )
    p.set_defaults(func=_delegate("services.storage.admin", "evidence_command"))

    sub.add_parser(
        "sim",
        help="run the deterministic PBFT simulator (see: cretoai-node sim --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["sim"]:
            return _cmd_sim(args_list[1:])
        parser = build_parser()
        args = parser.parse_args(args_list)
        result: int = args.func(args)
        return result
    except (ConfigError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path that is a file, a directory it cannot write, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
