"""The request pool: pending client requests, deduplicated by hash and bounded.

Bounded in count and in bytes, in all and per peer: a request may be as large as a
batch (1 MiB by default), so a count alone would let one Byzantine replica, forwarding
its share of validly signed large vertices, hold gigabytes in every honest replica.

Each entry remembers when its timer started: a request unexecuted for one
request timeout is relayed to every replica; after another, the replica
suspects the primary (paper §4.4, "a backup starts a timer when it receives a
request"). The replica's progress timer reads the arrival of the oldest entry
(:meth:`Pool.oldest_waiting_since`). Entries stay until executed; the primary batches only those not
yet assigned to a sequence number.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from services.consensus.core.messages import Request


@dataclass(slots=True)
class Entry:
    request: Request
    #: Tick at which it entered the pool (the primary's batch timeout counts from here).
    arrived: int
    #: Tick at which its request timer (re)started.
    timer: int
    #: Whether it was already relayed to every replica (next expiry: view change).
    relayed: bool
    #: The peer it came from, None for a local client.
    origin: int | None
    assigned: bool = False


class Pool:
    def __init__(
        self, *, capacity: int, per_peer: int, capacity_bytes: int, per_peer_bytes: int
    ) -> None:
        self._capacity = capacity
        self._per_peer = per_peer
        self._capacity_bytes = capacity_bytes
        self._per_peer_bytes = per_peer_bytes
        #: Every entry, oldest timer first.
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        #: Unassigned entries in arrival order (what the primary batches).
        self._pending: OrderedDict[bytes, Entry] = OrderedDict()
        #: Every entry in arrival order (timers restart; arrivals do not).
        self._by_arrival: OrderedDict[bytes, Entry] = OrderedDict()
        self.pending_bytes = 0
        #: Bytes of every entry (assigned or not).
        self.total_bytes = 0
        self._from_peer: dict[int, int] = {}
        self._bytes_from_peer: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_hash: bytes) -> bool:
        return request_hash in self._entries

    def get(self, request_hash: bytes) -> Request | None:
        entry = self._entries.get(request_hash)
        return None if entry is None else entry.request

    def origin(self, request_hash: bytes) -> int | None:
        """The peer a pooled request came from (None: a local client, or not pooled)."""
        entry = self._entries.get(request_hash)
        return None if entry is None else entry.origin

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def full_for(self, origin: int | None, size: int) -> bool:
        """Whether a request of ``size`` bytes from ``origin`` (None: a local client)
        would exceed the pool's bounds, or that peer's share of them."""
        if len(self._entries) >= self._capacity or self.total_bytes + size > self._capacity_bytes:
            return True
        if origin is None:
            return False
        return (
            self._from_peer.get(origin, 0) >= self._per_peer
            or self._bytes_from_peer.get(origin, 0) + size > self._per_peer_bytes
        )

    def add(self, request: Request, *, now: int, origin: int | None, relayed: bool) -> None:
        entry = Entry(request=request, arrived=now, timer=now, relayed=relayed, origin=origin)
        self._entries[request.hash] = entry
        self._by_arrival[request.hash] = entry
        self._pending[request.hash] = entry
        self.pending_bytes += request.size
        self.total_bytes += request.size
        if origin is not None:
            self._from_peer[origin] = self._from_peer.get(origin, 0) + 1
            self._bytes_from_peer[origin] = self._bytes_from_peer.get(origin, 0) + request.size

    def remove(self, hashes: Iterable[bytes]) -> None:
        for h in hashes:
            entry = self._entries.pop(h, None)
            if entry is None:
                continue
            del self._by_arrival[h]
            if not entry.assigned:
                del self._pending[h]
                self.pending_bytes -= entry.request.size
            self.total_bytes -= entry.request.size
            if entry.origin is not None:
                self._from_peer[entry.origin] -= 1
                self._bytes_from_peer[entry.origin] -= entry.request.size

    def oldest_waiting_since(self) -> int | None:
        """Arrival tick of the oldest entry, assigned or not (relays do not reset it)."""
        for entry in self._by_arrival.values():
            return entry.arrived
        return None

    def oldest(self, *, max_count: int, max_bytes: int) -> tuple[Request, ...]:
        """The requests that waited longest (assigned or not), at most a batch's worth."""
        out: list[Request] = []
        size = 0
        for entry in self._by_arrival.values():
            if len(out) == max_count or (out and size + entry.request.size > max_bytes):
                break
            out.append(entry.request)
            size += entry.request.size
        return tuple(out)

    def oldest_arrival(self) -> int | None:
        """Arrival tick of the oldest unassigned request."""
        for entry in self._pending.values():
            return entry.arrived
        return None

    def take_batch(self, *, max_count: int, max_bytes: int) -> tuple[Request, ...]:
        """Assign the oldest unassigned requests that fit in one batch."""
        batch: list[Request] = []
        size = 0
        for entry in self._pending.values():
            if len(batch) == max_count or size + entry.request.size > max_bytes:
                break
            batch.append(entry.request)
            size += entry.request.size
        self.assign(r.hash for r in batch)
        return tuple(batch)

    def assign(self, hashes: Iterable[bytes]) -> None:
        """Mark requests as ordered at some sequence number (no longer batched)."""
        for h in hashes:
            entry = self._pending.pop(h, None)
            if entry is not None:
                entry.assigned = True
                self.pending_bytes -= entry.request.size

    def unassign_all(self) -> None:
        """After a view change: every unexecuted request may need ordering again."""
        for h, entry in self._entries.items():
            if entry.assigned:
                entry.assigned = False
                self._pending[h] = entry
                self.pending_bytes += entry.request.size

    def pending(self) -> list[Request]:
        return [e.request for e in self._pending.values()]

    def restart_timers(self, now: int) -> None:
        for entry in self._entries.values():
            entry.timer = now
            entry.relayed = False

    def expired(self, now: int, timeout: int) -> list[Entry]:
        """Entries whose timer started at least ``timeout`` ticks ago, oldest first."""
        out = []
        for entry in self._entries.values():
            if now - entry.timer < timeout:
                break
            out.append(entry)
        return out

    def restart(self, entries: Iterable[Entry], now: int) -> None:
        """Restart the timers of ``entries`` (after relaying them)."""
        for entry in entries:
            entry.timer = now
            entry.relayed = True
            self._entries.move_to_end(entry.request.hash)
