"""The model versions the registry has taken out of serving and is closing: listed until their close ends.

A version retired by an unload, or swapped out by a reload, is out of lookup at once but still holds the
requests queued or running on it while its queue drains (``close``). Shutdown reads ``servables()`` so that
its drain timeout answers those requests as it answers a serving version's (server/app.py, ``Servable.cut``).

Contract:
- ``close(servable)`` closes ``servable`` and returns once it is closed, raising what its close raised. The
  close runs to its end even when the caller is cancelled meanwhile (shutdown cancels its poller mid-reload):
  a close given up half-way would leave its queue unanswered and its kernel unreleased, and nobody would know
  of it; it stays listed until it ends.
- A servable whose ``closes_in_background`` is true when its close begins (a sequence model letting its live
  sequences finish, which may take as long as they last) is not waited for: ``close`` returns at once, a
  failure is logged, and the servable stays listed, still serving what it holds, until its close ends.
- ``servables()``: those whose close has not ended, in the order their closes began.
- ``wait_closed()``: returns once every close begun has ended (the registry's own ``close``, at shutdown).
- Loop-bound: call from the event loop. Must not import server, batching or grpc.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Generic

from model_store.model_state import S

log = logging.getLogger(__name__)


class Retirements(Generic[S]):
    """See the module docstring."""

    def __init__(self) -> None:
        self._closing: dict[asyncio.Future[None], S] = {}

    def servables(self) -> list[S]:
        return list(self._closing.values())

    async def close(self, servable: S) -> None:
        closing = asyncio.ensure_future(servable.close())
        self._closing[closing] = servable
        closing.add_done_callback(self._closed)
        if getattr(servable, "closes_in_background", False):
            closing.add_done_callback(self._log_failure)
            return
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            if not closing.done():  # nobody awaits it now: its failure is only logged
                closing.add_done_callback(self._log_failure)
            raise

    def _closed(self, closing: asyncio.Future[None]) -> None:
        del self._closing[closing]

    @staticmethod
    def _log_failure(closing: asyncio.Future[None]) -> None:
        if not closing.cancelled() and closing.exception() is not None:
            log.error("closing a retired model version failed", exc_info=closing.exception())

    async def wait_closed(self) -> None:
        if self._closing:
            await asyncio.wait(set(self._closing))
