"""The dynamic batcher: coalesces queued items into batches under a delay budget.

Contract:
- ``submit()`` is synchronous and cheap: it enqueues and returns a future, or
  raises ``QueueFull`` at once when the queue holds ``max_queue_size`` items;
  it never blocks the caller.
- Items with different ``key`` (e.g. non-batch shapes) are never merged.
- At most ``max_concurrent_batches`` batches run at once; while all are busy,
  items keep queueing and the next batch is formed from them.
- Items whose future is done (cancelled by the caller) or whose deadline has
  passed are dropped before execution; the latter get ``DeadlineExceeded``.
- ``run_batch`` returns one result per item, in order, or raises: then every
  item of that batch gets the error (a ``ServingError`` as is, anything else
  wrapped in ``BackendError``) and the batcher keeps running. No future is
  ever left pending, also on ``stop()``.
- Loop-bound: call everything from the event loop that ran ``start()``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from batching.policy import BatchPolicy, decide
from ops.errors import BackendError, DeadlineExceeded, ModelNotReady, QueueFull, ServingError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Clock = Callable[[], float]


@dataclass(frozen=True)
class BatcherConfig:
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    max_queue_size: int = 1024  # items; beyond it submit() raises QueueFull
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be >= 1, got {self.max_concurrent_batches}")


class _Entry(Generic[T, R]):
    __slots__ = ("item", "rows", "key", "future", "enqueued_at", "deadline")

    def __init__(self, item: T, rows: int, key: Hashable, future: asyncio.Future[R], now: float, deadline: float | None):
        self.item = item
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued_at = now
        self.deadline = deadline


class DynamicBatcher(Generic[T, R]):
    """See the module docstring. ``name`` only labels log lines and errors."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        config: BatcherConfig,
        *,
        name: str = "batcher",
        clock: Clock = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self.config = config
        self.name = name
        self._clock = clock
        self._queue: collections.deque[_Entry[T, R]] = collections.deque()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def batches_in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        self._accepting = True
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-loop")

    def submit(self, item: T, rows: int = 1, key: Hashable = None, deadline: float | None = None) -> asyncio.Future[R]:
        """Queue ``item`` (``rows`` rows, batchable with items of equal ``key``); see module docstring."""
        if not self._accepting:
            raise ModelNotReady(f"{self.name} is not accepting requests (stopping or not started)")
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(
                f"{self.name}: the queue is full ({self.config.max_queue_size} requests waiting); retry later"
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(item, rows, key, future, self._clock(), deadline))
        self._wake.set()
        return future

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting, run what is queued, wait for running batches; then fail any leftovers."""
        self._accepting = False
        self._wake.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), timeout_s)
            except asyncio.TimeoutError:
                self._loop_task.cancel()
            self._loop_task = None
        for task in list(self._running):
            task.cancel()
        for entry in self._queue:
            if not entry.future.done():
                entry.future.set_exception(ModelNotReady(f"{self.name} stopped before the request ran"))
        self._queue.clear()

    async def _loop(self) -> None:
        policy = self.config.policy
        while self._accepting or self._queue:
            if not self._queue:
                self._wake.clear()
                if not self._accepting:
                    break
                await self._wake.wait()
                continue
            if len(self._running) >= self.config.max_concurrent_batches:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            now = self._clock()
            self._drop_dead(now)
            if not self._queue:
                continue
            head = self._queue[0]
            rows = self._rows_like(head.key, policy.max_batch_size)
            decision = decide(policy, rows, now - head.enqueued_at)
            if decision.rows == 0 and self._accepting:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), decision.wait_s)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self._take(head.key, decision.rows or rows)
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._running:
            await asyncio.wait(set(self._running))

    def _drop_dead(self, now: float) -> None:
        """Remove cancelled items and fail expired ones, so they never execute."""
        if not any(e.future.done() or (e.deadline is not None and e.deadline <= now) for e in self._queue):
            return
        alive: collections.deque[_Entry[T, R]] = collections.deque()
        for entry in self._queue:
            if entry.future.done():
                continue
            if entry.deadline is not None and entry.deadline <= now:
                entry.future.set_exception(
                    DeadlineExceeded(f"{self.name}: the request's deadline passed after "
                                     f"{(now - entry.enqueued_at) * 1e3:.1f} ms in the queue; it was not executed")
                )
                continue
            alive.append(entry)
        self._queue = alive

    def _rows_like(self, key: Hashable, cap: int) -> int:
        rows = 0
        for entry in self._queue:
            if entry.key == key:
                rows += entry.rows
                if rows >= cap:
                    break
        return rows

    def _take(self, key: Hashable, max_rows: int) -> list[_Entry[T, R]]:
        """Pop, in arrival order, the items of ``key`` that fit in ``max_rows`` (at least one)."""
        batch: list[_Entry[T, R]] = []
        rest: collections.deque[_Entry[T, R]] = collections.deque()
        rows = 0
        queue = self._queue
        while queue:
            entry = queue.popleft()
            if entry.key == key and (not batch or rows + entry.rows <= max_rows):
                batch.append(entry)
                rows += entry.rows
                if rows >= max_rows:
                    break
            else:
                rest.append(entry)
        rest.extend(queue)
        self._queue = rest
        return batch

    async def _execute(self, batch: list[_Entry[T, R]]) -> None:
        try:
            results = await self._run_batch([e.item for e in batch])
            if len(results) != len(batch):
                raise BackendError(f"{self.name}: the batch returned {len(results)} results for {len(batch)} requests")
        except BaseException as exc:
            error = exc if isinstance(exc, ServingError) else BackendError(f"{self.name}: batch execution failed: {exc!r}")
            if not isinstance(exc, (ServingError, asyncio.CancelledError)):
                log.exception("%s: batch of %d failed", self.name, len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for entry, result in zip(batch, results):
            if not entry.future.done():
                entry.future.set_result(result)
