"""The services of a node, in start order, and where each one listens.

Written once, here: the command line (``start --service``, ``health``), the
supervisor (start order, child processes), the benchmarks and the tests read
the list from this module, and :meth:`cretoai.serving.GrpcService.for_node`
binds each service where its entry says.

Every service is a package ``services/<name>/`` with the same contract:

* ``services.<name>.service.build(cfg: NodeConfig) -> GrpcService`` builds it
  from the node config (started by :meth:`GrpcService.run`, or by a test with
  :meth:`GrpcService.start` / :meth:`GrpcService.stop`);
* ``python -m services.<name> --config FILE`` runs it until SIGTERM/SIGINT
  (its ``__main__`` is :func:`cretoai.entry.run_service` with that ``build``).

This module names the packages; it does not import them (the shared library
sits below the services).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cretoai.config import NodeConfig


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a node: its name (= its config section) and how it listens."""

    name: str
    #: The field of the service's config section that holds its gRPC listen address.
    listen_field: str = "listen"
    #: Its gRPC API is for clients (plaintext, any address); an internal service uses the
    #: node's mutual TLS when configured, and listens only on loopback without it.
    public: bool = False
    #: What a caller presenting the gateway's certificate may call here (method names;
    #: health and reflection always): None, anything. See cretoai/tls.py.
    gateway_may_call: frozenset[str] | None = None
    #: The nice value of its scheduling group when the supervisor runs it (each child
    #: runs in a session of its own, and with the kernel's autogroups the CPU is shared
    #: between sessions first: see :func:`node.supervisor.favour`). Below 0: it gets a
    #: core before the others when the machine is busy.
    autogroup_nice: int = 0

    @property
    def module(self) -> str:
        """The package that runs it: ``python -m <module> --config FILE``."""
        return f"services.{self.name}"

    def section(self, cfg: NodeConfig) -> Any:
        return getattr(cfg, self.name)

    def listen(self, cfg: NodeConfig) -> str:
        """The address its gRPC server binds."""
        return str(getattr(self.section(cfg), self.listen_field))

    def target(self, cfg: NodeConfig) -> str:
        """The address the node's other services (and tools) dial: ``advertise`` when
        the section has one set, else the bind address."""
        return str(getattr(self.section(cfg), "advertise", "")) or self.listen(cfg)

    def metrics(self, cfg: NodeConfig) -> str | None:
        """The address of its Prometheus ``/metrics`` endpoint; None: none."""
        return str(self.section(cfg).metrics) or None

    def command(self, config: Path | str) -> list[str]:
        """The argv that runs it as a process of this interpreter."""
        return [sys.executable, "-m", self.module, "--config", str(config)]


#: In start order: each service needs only those before it (a node stops in reverse).
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "storage",
        gateway_may_call=frozenset(
            {
                "GetVertex",
                "GetVertexStatuses",
                "ListParents",
                "ListChildren",
                "GetFinalized",
                "ListVerticesByHeight",
                "ListVerticesByTime",
                "GetStats",
            }
        ),
    ),
    ServiceSpec("transport", gateway_may_call=frozenset({"ListPeers", "PingPeer", "GetStats"})),
    ServiceSpec("consensus"),  # its API is the gateway's
    # The node's door: a refusal (429) or an answer waits for its event loop, and it
    # spends little CPU per vertex; favoured, it answers while the others keep the cores
    # busy (docs/benchmarks.md "Overload: the door's share of the cores").
    ServiceSpec("gateway", listen_field="grpc", public=True, autogroup_nice=-5),
)

#: The services' names, in start order.
NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)


def service(name: str) -> ServiceSpec:
    """The entry of service ``name`` (KeyError for no such service)."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(f"no such service: {name!r} (the services are {', '.join(NAMES)})")
