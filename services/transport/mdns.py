"""Optional LAN discovery over mDNS/DNS-SD (zeroconf), off by default.

Each node announces ``<node id prefix>._cretoai._udp.local.`` with its advertised
QUIC address and its full node id in the TXT record, and browses for the others.
mDNS is unauthenticated, so what it finds is only a *candidate*: the node dials
the candidate expecting that member, and adopts the address only once the
member has proved its key on that connection (see ``TransportNode.mdns_candidate``).
Non-members' announcements are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from services.transport.auth import format_host_port, parse_host_port

if TYPE_CHECKING:
    from services.transport.node import TransportNode

log = logging.getLogger(__name__)

SERVICE_TYPE = "_cretoai._udp.local."


class MdnsDiscovery:
    def __init__(self, *, node: TransportNode, interfaces: tuple[str, ...]) -> None:
        self._node = node
        self._interfaces = interfaces
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        interfaces: Any = list(self._interfaces) if self._interfaces else None
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if interfaces is not None:
            kwargs["interfaces"] = interfaces
        self._zc = AsyncZeroconf(**kwargs)
        parsed = parse_host_port(self._node.advertised_address)
        if parsed is not None:
            host, port = parsed
            try:
                packed = [socket.inet_aton(str(ipaddress.IPv4Address(host)))]
            except ValueError:
                packed = []
            if packed:
                self._info = AsyncServiceInfo(
                    SERVICE_TYPE,
                    f"{self._node.node_id[:32]}.{SERVICE_TYPE}",
                    addresses=packed,
                    port=port,
                    properties={"id": self._node.node_id, "v": "1"},
                )
                await self._zc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )
        log.info("mDNS discovery on", extra={"fields": {"interfaces": interfaces or "all"}})

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        raw_id = (info.properties or {}).get(b"id")
        if not isinstance(raw_id, bytes):
            return
        node_id = raw_id.decode("ascii", "replace")
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or info.port is None:
            return
        self._node.mdns_candidate(node_id, format_host_port(addresses[0], info.port))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zc is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
                await self._zc.async_close()
        self._zc = None
