"""Shutdown's hold on model loads: the registry runs every version load through a ``LoadGate``.

Contract:
- ``close()`` (the first moment of shutdown) shuts the gate: from then on ``check`` and ``run`` raise
  ``ShuttingDown`` (UNAVAILABLE, "the server is shutting down: ..."), so neither a poll nor an explicit
  load starts a load, and a load waiting for its model's lock is refused once it gets it.
- ``run(name, version, load)`` runs one version's load and returns what it built. A load still running
  when the gate closes is not waited for: ``run`` raises ``ShuttingDown`` at once (its caller, holding
  the model's lock, lets go, so the shutdown's unloads are not held up by it), the version never serves,
  and what the load builds is closed as soon as the load ends. A caller of ``run`` cancelled mid-load
  leaves the same way: the load cannot be interrupted (onnxruntime builds the session in a worker
  thread), so it runs on and what it built is released, never leaked.
- ``outlive_caller(operation)`` runs a whole load or unload (the registry's, under the model's lock) to its
  end even when whoever awaits it is cancelled: an explicit load whose client gave up still serves (as in
  Triton) rather than being thrown away and leaving its version LOADING until the next load. After ``close``
  a cancelled caller (shutdown's poller) cancels the operation, as before.
- ``loading`` counts the loads still running (abandoned ones included); ``wait_released(timeout_s)``
  waits, up to a bound, for them and for the releases of what they built.
- Loop-bound: call from the event loop. Imports model_store.model_state and ops.errors only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Coroutine, Generic

from model_store.model_state import S
from ops.errors import ShuttingDown

log = logging.getLogger(__name__)


class LoadGate(Generic[S]):
    """See the module docstring."""

    def __init__(self) -> None:
        self._closed = False
        self._wake: asyncio.Event | None = None  # made on first use, on the running loop
        self._loads: set[asyncio.Future[S]] = set()
        self._releases: set[asyncio.Task[None]] = set()
        self._outliving: set[asyncio.Future[None]] = set()  # operations whose callers went away (``outlive_caller``)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loading(self) -> int:
        """Loads still running, abandoned ones (their caller gone, or the gate closed) included."""
        return len(self._loads)

    def close(self) -> None:
        """Refuse loads from now on; loads under way stop being waited for (see the module docstring)."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    def check(self, name: str) -> None:
        if self._closed:
            raise ShuttingDown(f"the server is shutting down: model '{name}' is not loaded (loads are refused "
                               "from the start of shutdown)")

    async def outlive_caller(self, operation: Coroutine[Any, Any, None], what: str) -> None:
        """Await ``operation``; if the caller is cancelled first, ``operation`` runs on to its end (its outcome is
        then logged by whoever recorded it, not raised) and the caller gets its ``CancelledError``. Once the gate
        is closed (shutdown) a cancelled caller cancels ``operation`` too."""
        task = asyncio.ensure_future(operation)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            if self._closed:  # shutdown cancels its poller: what is under way stops with it, as before
                task.cancel()
                raise
            log.info("the caller of the %s went away; it runs to its end", what)
            self._outliving.add(task)
            task.add_done_callback(self._outlived)
            raise

    def _outlived(self, task: "asyncio.Future[None]") -> None:
        self._outliving.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the registry recorded and logged it

    async def run(self, name: str, version: int, load: Callable[[], Awaitable[S]]) -> S:
        """``load()``'s result, unless the gate closes first (``ShuttingDown``); see the module docstring."""
        self.check(name)
        if self._wake is None:
            self._wake = asyncio.Event()
        task: asyncio.Future[S] = asyncio.ensure_future(load())
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        closing: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(task, name, version)
            raise
        finally:
            closing.cancel()
        if not self._closed:
            return task.result()  # the load's own error, if it failed
        self._abandon(task, name, version)
        raise ShuttingDown(f"the server is shutting down: model '{name}' version {version} was still loading and "
                           "will not serve; what it loaded is released")

    def _abandon(self, task: asyncio.Future[S], name: str, version: int) -> None:
        """Nobody waits for ``task`` any more: close what it builds once it ends."""
        def release(done: asyncio.Future[S]) -> None:
            if done.cancelled() or done.exception() is not None:
                return  # nothing was built (the load's error was logged by whoever raised it, or not at all)
            log.info("model '%s' version %d finished loading after it was abandoned; releasing it", name, version)
            closing = asyncio.ensure_future(done.result().close())
            self._releases.add(closing)
            closing.add_done_callback(self._releases.discard)

        task.add_done_callback(release)

    async def wait_released(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the loads still running and the releases of what they built; whether
        all ended."""
        pending: set[asyncio.Future[Any]] = {*self._loads, *self._releases}
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
            await asyncio.sleep(0)  # a load that just ended starts its release
            if self._releases:
                await asyncio.wait(set(self._releases), timeout=timeout_s)
        return not self._loads and not self._releases
