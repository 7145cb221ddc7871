"""Releasing outcomes to callers: at once, or in arrival order (``preserve_ordering``).

With ordering, a request whose batch finished early (a higher priority, or a
batch on a faster instance) is held until every request that arrived before it
has its outcome or was cancelled by its caller, as Triton's
``preserve_ordering`` does. A caller's cancellation releases what it held back
at once, not only at the next batch's end: the batch it was in may run for
long, or never end. So when a release stops at an unsettled entry while later
ones wait, that entry's future gets one done callback (once per entry). Holding
costs one deque append per request; the release is O(1) per outcome, amortised.

Loop-bound. Must not import server, kernels, model_store or grpc.
"""

from __future__ import annotations

import collections
from typing import Any

from batching.queues import Entry


def deliver(entry: Entry[Any, Any], result: Any, error: BaseException | None) -> None:
    """Complete the caller's future, unless the caller already cancelled it."""
    future = entry.future
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class InOrderRelease:
    """Holds settled entries until all earlier arrivals are settled too. See the module docstring."""

    def __init__(self) -> None:
        self._pending: collections.deque[Entry[Any, Any]] = collections.deque()
        self._watched: set[Entry[Any, Any]] = set()  # entries whose cancellation already calls release

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, entry: Entry[Any, Any]) -> None:
        """Register ``entry`` at submission (arrival order)."""
        self._pending.append(entry)

    def _on_done(self, future: Any) -> None:
        """A caller's cancellation holds nothing back: release what waited behind it."""
        if future.cancelled():
            self.release()

    def settle(self, entry: Entry[Any, Any], result: Any, error: BaseException | None) -> None:
        """Store ``entry``'s outcome; it is delivered by ``release`` once its turn comes."""
        entry.result = result
        entry.error = error
        entry.settled = True

    def release(self) -> None:
        """Deliver, in arrival order, every outcome no earlier unsettled entry holds back."""
        pending = self._pending
        while pending:
            entry = pending[0]
            if entry.settled:
                pending.popleft()
                self._watched.discard(entry)
                deliver(entry, entry.result, entry.error)
                entry.result = entry.error = None
            elif entry.future.done():  # cancelled by its caller: nothing to wait for
                pending.popleft()
                self._watched.discard(entry)
            else:
                if len(pending) > 1 and entry not in self._watched:  # it holds others back: hear its cancel
                    self._watched.add(entry)
                    entry.future.add_done_callback(self._on_done)
                return

    def fail_all(self, error: BaseException) -> None:
        """Deliver what is settled and fail the rest (shutdown): no future is left pending."""
        self._watched.clear()
        while self._pending:
            entry = self._pending.popleft()
            if entry.settled:
                deliver(entry, entry.result, entry.error)
            else:
                deliver(entry, None, error)
