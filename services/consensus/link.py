"""The consensus service's link to its transport: one long-lived ExchangeBatches stream.

Outbound envelopes go into a bounded queue that the stream drains; inbound
envelopes are handed to a callback. When the transport restarts, the link
reconnects with backoff and resumes (PBFT tolerates the messages lost
meanwhile: retransmission is the core's business, via timers and state
transfer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import NamedTuple

import grpc
from prometheus_client import Counter, Gauge

from cretoai.channels import service_channel
from cretoai.protowire import as_is, length_delimited, tag, varint
from cretoai.tls import InternalTls
from cretoai.v1 import transport_pb2, transport_pb2_grpc

log = logging.getLogger(__name__)

LINK_UP = Gauge("cretoai_consensus_transport_link_up", "1 while the transport stream is open")
LINK_DROPS = Counter(
    "cretoai_consensus_outbound_dropped_total",
    "Outbound envelopes dropped because the link queue was full",
)
LINK_RECONNECTS = Counter(
    "cretoai_consensus_transport_reconnects_total", "Transport stream reconnections"
)

#: Envelopes per gRPC message on the batched stream, and their bytes (a larger envelope
#: goes alone): far below the channel's 16-MiB message limit, which a batch of large
#: envelopes (state-transfer answers, NEW-VIEWs) once passed, failing the stream for
#: every peer's traffic.
BATCH_MAX = 256
BATCH_MAX_BYTES = 4 * 1024 * 1024
#: Envelopes and bytes waiting for the transport; beyond either, new ones are dropped
#: and counted (consensus recovers lost messages through its timers).
QUEUE_MAX = 10_000
QUEUE_MAX_BYTES = 64 * 1024 * 1024

Inbound = Callable[[transport_pb2.Envelope], Awaitable[None]]


#: Metadata naming this consensus process to its transport (random per process start):
#: the bans it asks for last as long as it runs (a restarted consensus starts every
#: peer's reputation again; see TransportNode.consensus_session).
SESSION_HEADER = "cretoai-consensus-session"
SESSION_METADATA = ((SESSION_HEADER, os.urandom(8).hex()),)


#: The method of :meth:`TransportLink._exchange` (cretoai/v1/transport.proto).
EXCHANGE_BATCHES = "/cretoai.v1.Transport/ExchangeBatches"
#: EnvelopeBatch's ``envelopes`` and Envelope's ``to`` and ``payload``, written by hand.
_ENVELOPES_TAG = tag(1)
_TO = 1
_PAYLOAD_TAG = tag(3)


class Queued(NamedTuple):
    """An outbound envelope's fields, waiting for the stream."""

    to: str
    payload: bytes
    trace_context: Mapping[str, str] | None
    size: int


class TransportLink:
    """Send envelopes to peers and receive theirs through the local transport service."""

    def __init__(
        self,
        target: str,
        on_inbound: Inbound,
        *,
        queue_max: int = QUEUE_MAX,
        queue_max_bytes: int = QUEUE_MAX_BYTES,
        tls: InternalTls | None = None,
    ) -> None:
        self._tls = tls
        self._target = target
        self._on_inbound = on_inbound
        self._queue_max = queue_max
        self._queue_max_bytes = queue_max_bytes
        self._outbound: deque[Queued] = deque()
        self._outbound_bytes = 0
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.connected = asyncio.Event()

    def send(
        self, payload: bytes, to: str = "", trace_context: Mapping[str, str] | None = None
    ) -> None:
        """Queue ``payload`` for one peer (node id) or, with ``to=""``, for every peer;
        ``trace_context``: the trace it continues (a traced batch's or vertices'; see
        tracing.py), none otherwise.

        Never blocks: when the queue is full (in envelopes or in bytes) the envelope is
        dropped and counted (consensus recovers lost messages through its timers).
        """
        size = len(payload) + len(to) + 64
        if (
            len(self._outbound) >= self._queue_max
            or self._outbound_bytes + size > self._queue_max_bytes
        ):
            LINK_DROPS.inc()
            return
        self._outbound.append(Queued(to, payload, trace_context, size))
        self._outbound_bytes += size
        self._queued.set()

    @property
    def stub(self) -> transport_pb2_grpc.TransportStub:
        if self._channel is None:
            self._channel = service_channel(self._target, tls=self._tls)
        return transport_pb2_grpc.TransportStub(self._channel)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="transport-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()

    async def _outbound_stream(self) -> AsyncIterator[bytes]:
        """What is queued, in batches of at most BATCH_MAX envelopes and BATCH_MAX_BYTES
        (per-message cost is high), each an encoded EnvelopeBatch."""
        while True:
            while not self._outbound:
                self._queued.clear()
                await self._queued.wait()
            yield self._take_batch()

    def _take_batch(self) -> bytes:
        """The next batch's bytes, concatenated: each payload is copied once, into them.
        A batch message would copy each payload in and its serialization copy them out
        again, into growing buffers (3.7-5.4 ms for a 2-MiB PRE-PREPARE when its buffers
        are faulted in: docs/benchmarks.md, "A slow hour, and a peer's message passed on
        as bytes")."""
        parts: list[bytes] = []
        count = held = 0
        queue = self._outbound
        while queue and count < BATCH_MAX:
            queued = queue[0]
            if held and held + queued.size > BATCH_MAX_BYTES:
                break
            queue.popleft()
            head = length_delimited(_TO, queued.to.encode()) if queued.to else b""
            tail = (
                transport_pb2.Envelope(trace_context=queued.trace_context).SerializeToString()
                if queued.trace_context
                else b""
            )
            size = len(head) + len(_PAYLOAD_TAG) + len(varint(len(queued.payload)))
            size += len(queued.payload) + len(tail)
            parts += (
                _ENVELOPES_TAG,
                varint(size),
                head,
                _PAYLOAD_TAG,
                varint(len(queued.payload)),
                queued.payload,
                tail,
            )
            count += 1
            held += queued.size
        self._outbound_bytes -= held
        return b"".join(parts)

    def _exchange(self) -> grpc.aio.StreamStreamMultiCallable[bytes, transport_pb2.EnvelopeBatch]:
        """ExchangeBatches, its requests sent as the bytes :meth:`_take_batch` made."""
        if self._channel is None:
            self._channel = service_channel(self._target, tls=self._tls)
        return self._channel.stream_stream(
            EXCHANGE_BATCHES,
            request_serializer=as_is,
            response_deserializer=transport_pb2.EnvelopeBatch.FromString,
        )

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                call = self._exchange()(self._outbound_stream(), metadata=SESSION_METADATA)
                self.connected.set()
                LINK_UP.set(1)
                log.info("transport stream open", extra={"fields": {"target": self._target}})
                backoff = 0.1
                async for batch in call:
                    for envelope in batch.envelopes:
                        await self._on_inbound(envelope)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "transport stream failed",
                    extra={"fields": {"code": exc.code().name, "detail": exc.details()}},
                )
            self.connected.clear()
            LINK_UP.set(0)
            LINK_RECONNECTS.inc()
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(backoff * 2, 5.0)
