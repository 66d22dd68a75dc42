"""Bounded queues with a documented drop policy: pure data structures, no I/O.

* :class:`SendQueue` — one per peer, encoded MSG frames waiting for the peer's
  window. Bounded by message count *and* bytes. When a new message does not
  fit, the **oldest** messages are dropped until it does (drop-oldest: for
  consensus the newest messages matter most, and a peer that comes back gets
  the most recent traffic; older state is recovered by PBFT's retransmission,
  view change and state transfer). Each entry carries the time before which it
  must not be sent (fault injection's delay).
* :class:`InboundMux` — one bounded FIFO per peer of messages for consensus
  (by count and, with a size function, by bytes: 4096 frames of 4 MiB would be
  16 GiB from one peer), drained round-robin so that a flooding peer cannot starve
  the others; also drop-oldest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outgoing:
    frame: bytes
    ready_at: float


class SendQueue:
    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("queue bounds must be positive")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: deque[Outgoing] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, frame: bytes, *, ready_at: float = 0.0) -> int:
        """Append ``frame``; return how many older messages were dropped to make room.

        A frame larger than ``max_bytes`` on its own is dropped itself (returns 1
        and queues nothing): the caller checks frame sizes first.
        """
        size = len(frame)
        if size > self.max_bytes:
            return 1
        dropped = 0
        while self._items and (
            len(self._items) >= self.max_messages or self.bytes + size > self.max_bytes
        ):
            self.bytes -= len(self._items.popleft().frame)
            dropped += 1
        self._items.append(Outgoing(frame=frame, ready_at=ready_at))
        self.bytes += size
        return dropped

    def peek(self) -> Outgoing | None:
        return self._items[0] if self._items else None

    def pop(self) -> Outgoing:
        item = self._items.popleft()
        self.bytes -= len(item.frame)
        return item

    def clear(self) -> int:
        count = len(self._items)
        self._items.clear()
        self.bytes = 0
        return count


class InboundMux(Generic[T]):
    """Per-source bounded FIFOs, taken round-robin across sources.

    With a size function, each item's size is computed once, when it is pushed, and kept
    beside it: for a protobuf message the size is a serialization (``ByteSize``: 85 us for
    a 2-MB envelope), which the bytes bound and :meth:`take`'s budget would otherwise
    repeat for the same item.
    """

    def __init__(
        self,
        *,
        max_per_source: int,
        max_bytes_per_source: int = 0,
        size: Callable[[T], int] | None = None,
    ) -> None:
        if max_per_source < 1 or max_bytes_per_source < 0:
            raise ValueError("max_per_source must be positive, max_bytes_per_source >= 0")
        if max_bytes_per_source and size is None:
            raise ValueError("a bytes bound needs a size function")
        self.max_per_source = max_per_source
        #: 0: no bound in bytes.
        self.max_bytes_per_source = max_bytes_per_source
        self._size = size
        #: Each source's items with their sizes (0 without a size function).
        self._queues: dict[str, deque[tuple[T, int]]] = {}
        self._bytes: dict[str, int] = {}
        self._ready: OrderedDict[str, None] = OrderedDict()
        self._total = 0

    def bytes_of(self, source: str) -> int:
        return self._bytes.get(source, 0)

    def _pop(self, source: str, queue: deque[tuple[T, int]]) -> T:
        item, size = queue.popleft()
        self._total -= 1
        self._bytes[source] -= size
        return item

    def __len__(self) -> int:
        return self._total

    def depth(self, source: str) -> int:
        queue = self._queues.get(source)
        return len(queue) if queue is not None else 0

    def push(self, source: str, item: T) -> int:
        """Queue ``item``; return how many of the source's oldest were dropped for it
        (to stay within the count and, with a size function, the bytes bound; the new
        item itself always stays)."""
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = deque()
        size = self._size(item) if self._size is not None else 0
        dropped = 0
        while queue and (
            len(queue) >= self.max_per_source
            or (
                self.max_bytes_per_source
                and self._bytes.get(source, 0) + size > self.max_bytes_per_source
            )
        ):
            self._pop(source, queue)
            dropped += 1
        queue.append((item, size))
        self._total += 1
        self._bytes[source] = self._bytes.get(source, 0) + size
        self._ready[source] = None
        return dropped

    def take(self, limit: int, *, max_bytes: int = 0) -> list[T]:
        """Up to ``limit`` items, one per source in turn.

        With ``max_bytes`` (which needs the size function), stop before the items would
        exceed ``max_bytes`` in total (at least one item is always taken).
        """
        if max_bytes and self._size is None:
            raise ValueError("a bytes budget needs a size function")
        out: list[T] = []
        total = 0
        while self._ready and len(out) < limit:
            source = next(iter(self._ready))
            queue = self._queues[source]
            if max_bytes:
                total += queue[0][1]
                if out and total > max_bytes:
                    break
            out.append(self._pop(source, queue))
            if queue:
                self._ready.move_to_end(source)
            else:
                del self._ready[source]
        return out

    def clear(self, source: str) -> int:
        queue = self._queues.pop(source, None)
        self._ready.pop(source, None)
        self._bytes.pop(source, None)
        if queue is None:
            return 0
        self._total -= len(queue)
        return len(queue)
