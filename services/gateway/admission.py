"""Consensus's admission state, followed live (``WatchAdmission``).

While consensus says it is overloaded, a submission sent to it is refused there
(RESOURCE_EXHAUSTED), but only after it has waited for the calls ahead of it,
which on an overloaded node take hundreds of milliseconds. Following the state,
the gateway refuses such a submission as it arrives (429). The state is
consensus's: the gateway only learns it earlier. And what the gateway admitted
as it arrived stays admitted: when the state turns, the submissions queued for a
call or in one are carried through (their calls say so,
``SubmitVerticesRequest.admitted``, and consensus does not refuse them as
overloaded), so that a client is refused at once or not for overload at all.

When the stream is down (consensus restarting, an older consensus without the
call), the state is unknown and counts as not overloaded: submissions go to
consensus, which decides as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from services.gateway import metrics
from services.gateway.backends import ConsensusClient
from services.gateway.errors import ApiError

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0


def overloaded() -> ApiError:
    """The refusal of a submission while consensus says it is overloaded."""
    return ApiError(
        "overloaded",
        "consensus at this node is overloaded (a pending vertex waited longer than "
        "consensus.admission_max_wait); retry with backoff",
    )


class AdmissionWatch:
    """Consensus's admission state: :attr:`overloaded`, kept up to date by one stream.

    ``on_overloaded`` runs each time the state turns to overloaded (the gateway
    refuses what is queued for consensus then).
    """

    def __init__(
        self, consensus: ConsensusClient, *, on_overloaded: Callable[[], None] = lambda: None
    ) -> None:
        self._consensus = consensus
        self._on_overloaded = on_overloaded
        #: Consensus said so last, and the stream that said it is up.
        self.overloaded = False
        #: The stream is up: :attr:`overloaded` is consensus's current state.
        self.live = False
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-watch-admission")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._set(overloaded=False, live=False)

    async def wait_until(self, *, overloaded: bool, live: bool = True) -> None:
        """Until the state is this (for callers that must see a change take effect)."""
        async with self._changed:
            await self._changed.wait_for(lambda: (self.overloaded, self.live) == (overloaded, live))

    async def _set(self, *, overloaded: bool, live: bool) -> None:
        turned = overloaded and not self.overloaded
        self.overloaded, self.live = overloaded, live
        metrics.CONSENSUS_OVERLOADED.set(1 if overloaded else 0)
        metrics.ADMISSION_LIVE.set(1 if live else 0)
        if turned:
            self._on_overloaded()
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        failing = False
        while True:
            call = self._consensus.watch_admission()
            try:
                async for state in call:
                    if failing:
                        log.info("admission stream resumed")
                    failing = False
                    backoff = RECONNECT_MIN_S
                    await self._set(overloaded=state.overloaded, live=True)
                log.info("consensus ended the admission stream; subscribing again")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning(
                        "consensus has no WatchAdmission (an older version): overloaded "
                        "submissions are refused by consensus, after their wait"
                    )
                    await self._set(overloaded=False, live=False)
                    return
                level = logging.DEBUG if failing else logging.WARNING
                log.log(
                    level,
                    "admission stream unavailable; retrying",
                    extra={"fields": {"error": str(exc.details() or exc.code().name)}},
                )
            except Exception:  # a bug must not stop the gateway from serving
                log.exception("admission stream failed; retrying")
            finally:
                call.cancel()
            await self._set(overloaded=False, live=False)
            failing = True
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, RECONNECT_MAX_S)
