"""The dynamic batcher: coalesces queued items into batches and runs them, under static knobs or a latency objective.

Contract:
- ``submit()`` is synchronous and cheap: it enqueues and returns a future, or
  raises at once, never blocking the caller: ``QueueFull`` when the request's
  priority level holds its ``max_queue_size`` items, or, with a latency
  objective, when the request is predicted to miss it; ``InvalidInput`` for a
  priority outside ``0..levels``; ``DeadlineExceeded`` (objective only) when it
  is predicted to miss its own deadline.
- Priority 1 is the highest; 0 means the default level. Higher levels are
  batched first; the aging rule of batching/queues.py bounds starvation.
- Queue timeouts (per level, optionally shortened per request) fail the
  request with ``DeadlineExceeded`` (REJECT) or move it behind its level
  (DELAY). A request whose deadline has passed is never executed; with an
  objective, neither is one that cannot finish by its deadline given the
  expected run time. Items whose future is done (cancelled by the caller) are
  dropped before execution.
- Items with different ``key`` (e.g. non-batch shapes) are never merged.
- At most ``max_concurrent_batches`` batches run at once; while all are busy,
  items keep queueing and the next batch is formed from them.
- ``run_batch`` returns one result per item, in order, or raises: either
  at once (a list: it ran the batch right there, so no task is made for
  it) or through an awaitable (it runs elsewhere). On an error every
  item of that batch gets the error (a ``ServingError`` as is, anything else
  wrapped in ``BackendError``) and the batcher keeps running. No future is
  ever left pending, also on ``stop()``. With ``preserve_ordering`` outcomes
  are released in arrival order.
- ``drain()`` (shutdown, before the transports stop) ends every wait for a batch
  to fill: what is queued, and whatever is submitted from then on, is
  dispatched as soon as an instance is free, in batches of up to
  ``max_batch_size`` rows, still in priority order, with queue timeouts,
  deadlines, cancellation and ordering as above. Unlike ``stop()`` it keeps
  accepting, so the requests the transports are still finishing get in.
- ``stop(timeout_s, cut_reason)`` (a shutdown's drain timeout ending, ``timeout_s`` 0) fails what is queued and
  runs with ``ShuttingDown`` at once, saying whether each had started to run; also during a plain ``stop()``.
- Every successful batch's run time feeds the run-time estimate, exposed by
  ``estimate`` in every mode: timed here from dispatch to results on the
  injected clock, or reported by the owner (``record_run_time``).
- Loop-bound: call everything from the event loop that ran ``start()``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

from batching.config import BatcherConfig, ScheduleEstimate
from batching.estimate import RunTimeEstimator
from batching.admission import SloAdmission
from batching.planner import SloPlanner
from batching.ordering import InOrderRelease, deliver
from batching.policy import Decision, WaitPayoff, decide, preferred_rows
from batching.queues import Entry, Expiry, PriorityQueues, expiry_error
from ops.errors import BackendError, InvalidInput, ModelNotReady, QueueFull, ServingError, ShuttingDown

log = logging.getLogger(__name__)
_TIMER_RESOLUTION_S = 0.001

T = TypeVar("T")
R = TypeVar("R")
Clock = Callable[[], float]
_NEVER = 1 << 62  # wake_rows that no queue reaches
_LOG_EVERY_S = 1.0

__all__ = ["BatcherConfig", "DynamicBatcher", "ScheduleEstimate"]


class DynamicBatcher(Generic[T, R]):
    """See the module docstring. ``name`` only labels log lines and errors."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]] | list[R]],
        config: BatcherConfig,
        *,
        name: str = "batcher",
        clock: Clock = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self.config = config
        self.name = name
        self._clock = clock
        self._queues: PriorityQueues[T, R] = PriorityQueues(config.queue_policies(), config.aging_s)
        self._default_level = config.default_priority - 1
        self._release = InOrderRelease() if config.preserve_ordering else None
        objective = config.objective
        self._estimator = RunTimeEstimator(quantile=objective.percentile / 100 if objective else 0.99)
        self._planner: SloPlanner | None = None
        self._admission: SloAdmission | None = None  # SLO mode's shedding at submit
        if objective is not None:
            self._planner = SloPlanner(objective, config.policy.max_batch_size, config.max_concurrent_batches)
            self._admission = SloAdmission(name, objective, self._planner)
        self._last = Decision()
        self._payoff = WaitPayoff()  # read by the static policy only (SLO mode plans its own waits)
        self._admitted_rows = 0  # running totals: the planner's arrival rates
        self._offered_rows = 0
        self._seq = 0
        self._wake = asyncio.Event()
        self._wake_rows = 1
        self._wake_at = -math.inf  # when the loop's current sleep ends by itself (-inf: not sleeping)
        self._running: set[asyncio.Task[None]] = set()
        self._ends: list[float] = []  # expected end of each running batch
        self._free_at = 0.0  # when the first instance frees up, if all are busy; else 0
        self._logged_at = -math.inf
        self._loop_task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._draining = False  # drain(): no more waiting for batches to fill
        self._cut_reason = ""  # stop(cut_reason=...): why the requests still queued or running fail

    @property
    def queue_depth(self) -> int:
        """Requests waiting now (a caller's cancellation leaves at once; O(queue): for gauges, not the hot path)."""
        return self._queues.waiting()

    @property
    def accepting(self) -> bool:
        """Whether ``submit`` takes requests: started and not stopping."""
        return self._accepting

    @property
    def draining(self) -> bool:
        """Whether ``drain`` was called: queued requests go without waiting for their batch to fill."""
        return self._draining

    @property
    def batches_in_flight(self) -> int:
        return len(self._running)

    @property
    def estimate(self) -> ScheduleEstimate:
        """The current run-time fit and scheduling choice (built on each read; not for the hot path)."""
        curve, last = self._estimator.curve, self._last
        if self._planner is None:
            return ScheduleEstimate(curve, last.wake_rows, last.wait_s)
        return self._planner.estimate(self._clock(), self._admitted_rows, self._offered_rows, curve, last)

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._accepting = True
        self._loop_task = self._event_loop.create_task(self._loop(), name=f"{self.name}-loop")

    def submit(
        self, item: T, rows: int = 1, key: Hashable = None, deadline: float | None = None,
        priority: int = 0, timeout_us: int = 0,
    ) -> asyncio.Future[R]:
        """Queue ``item`` (``rows`` rows, batchable with items of equal ``key``); see the module docstring.

        ``deadline`` is on the batcher's clock; ``priority`` 0 is the default
        level; ``timeout_us`` asks for a shorter queue timeout (0: the level's).
        """
        if not self._accepting or self._event_loop is None:
            raise ModelNotReady(f"{self.name} is not accepting requests (stopping or not started)")
        queues = self._queues
        if priority == 0:
            level = self._default_level
        elif 0 < priority <= queues.levels:
            level = priority - 1
        else:
            raise InvalidInput(
                f"{self.name}: priority {priority} is outside 0..{queues.levels} "
                f"(1 is the highest; 0 uses the default, {self._default_level + 1})"
            )
        self._offered_rows += rows
        if queues.full(level):
            which = "the queue" if queues.levels == 1 else f"the queue of priority level {level + 1}"
            raise QueueFull(
                f"{self.name}: {which} is full ({queues.policy(level).max_queue_size} requests waiting); retry later"
            )
        now = self._clock()
        admission = self._admission
        probe = admission is not None and admission.admit(
            now, self._estimator.curve, queues.rows_up_to(level), rows,
            self._free_at - now if self._free_at > now else 0.0, not (self._ends or queues.count), deadline,
        )
        policy = queues.policy(level)
        timeout = policy.timeout_for(timeout_us) if (timeout_us or policy.timeout_s) else 0.0
        future: asyncio.Future[R] = self._event_loop.create_future()
        self._seq += 1
        entry: Entry[T, R] = Entry(item, rows, key, future, now, deadline, (now + timeout) if timeout else None,
                                   level, self._seq)
        queues.push(entry)
        if probe:
            assert admission is not None
            admission.probe_queued(entry)
        self._admitted_rows += rows
        if self._release is not None:
            self._release.add(entry)
        if queues.rows >= self._wake_rows or (entry.timeout_at is not None and entry.timeout_at < self._wake_at):
            self._wake.set()  # enough rows, or a queue timeout due before the loop would wake to fire it
        return future

    def drain(self) -> None:
        """Stop waiting for batches to fill (shutdown, before the transports stop, so their grace covers runs, not
        queue delays nothing will fill): see the module docstring. Still accepting; ``stop`` ends it."""
        self._draining = True
        self._wake.set()

    async def stop(self, timeout_s: float | None = None, cut_reason: str = "") -> None:
        """Stop accepting, run what is queued, wait for running batches (up to ``timeout_s``); then fail any
        leftovers. With ``cut_reason`` (a shutdown's drain timeout ending) the leftovers fail with
        ``ShuttingDown`` (UNAVAILABLE) saying so, and whether the request had run; else ``ModelNotReady``."""
        self._accepting = False
        self._wake.set()
        self._cut_reason = cut_reason or self._cut_reason
        loop_task = self._loop_task
        if loop_task is not None:
            # not wait_for: a cut meanwhile may cancel the loop, which must end this wait, not raise into the caller
            await asyncio.wait({loop_task}, timeout=timeout_s)
            if not loop_task.done():
                loop_task.cancel()
            self._loop_task = None
        running = set(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        stopped = (ShuttingDown(f"{self._cut_reason} before this request ran; it can be sent again") if self._cut_reason
                   else ModelNotReady(f"{self.name} stopped before the request ran"))
        for entry in self._queues.drain():
            self._settle(entry, None, stopped)
        if self._release is not None:
            self._release.fail_all(stopped)

    async def _loop(self) -> None:
        queues = self._queues
        cap = self.config.max_concurrent_batches
        while self._accepting or queues.count:
            now = self._clock()
            if queues.next_timer() <= now:
                for entry, why in queues.fire_timers(now):
                    self._settle(entry, None, expiry_error(self.name, entry, why, now))
            if self._release is not None:
                self._release.release()
            if queues.count == 0:
                if not self._accepting:
                    break
                await self._sleep(math.inf, 1)
                continue
            if len(self._ends) >= cap:  # not _running: a finished task leaves it only after the loop wakes
                await self._sleep(queues.next_timer() - now, _NEVER)
                continue
            head, oldest_at = queues.front(now)
            if head is None:
                continue
            decision = self._decide(now, now - oldest_at, head)
            if decision.rows == 0 and self._accepting and not self._draining:
                self._payoff.waiting(queues.rows)
                await self._sleep(min(decision.wait_s, queues.next_timer() - now), decision.wake_rows or queues.rows + 1)
                continue
            self._payoff.dispatched(now, queues.rows)
            if self._dispatch(now, head, decision.rows or self.config.policy.max_batch_size):
                await asyncio.sleep(0)  # it ran right here: let the transports in before the next one
        if self._running:
            await asyncio.wait(set(self._running))
        if self._release is not None:
            self._release.release()

    def _decide(self, now: float, oldest_wait_s: float, head: Entry[T, R]) -> Decision:
        policy, queues = self.config.policy, self._queues
        if self._planner is not None:
            self._last = self._planner.decide(now, self._estimator.curve, queues.rows, oldest_wait_s,
                                              self._admitted_rows, self._offered_rows)
        else:
            preferred, formed = policy.preferred_batch_sizes, None
            if preferred and queues.rows >= min(preferred):  # the preferred batch the queue forms in order
                formed = preferred_rows(preferred, queues.prefix_rows(head, policy.max_batch_size, now))
            self._last = decide(policy, queues.rows, oldest_wait_s, self._payoff.pays(now), formed)
        return self._last

    async def _sleep(self, timeout_s: float, wake_rows: int) -> None:
        """Wait for a submission that brings the queue to ``wake_rows`` rows or has a queue timeout due before
        the sleep ends, a finished batch, stop, or the timeout."""
        if timeout_s <= 0:
            return
        wake = self._wake
        wake.clear()
        self._wake_rows = wake_rows
        self._wake_at = self._clock() + timeout_s
        handle = None
        if timeout_s != math.inf:
            assert self._event_loop is not None
            # Timers are 1 ms coarse (uvloop fires a wait under 0.5 ms at once): at least one tick makes one
            # wake-up per wait, not dozens of re-decisions; a sub-ms delay lasts 1-2 ms (README, Dynamic batching).
            handle = self._event_loop.call_later(max(timeout_s, _TIMER_RESOLUTION_S), wake.set)
        try:
            await wake.wait()
        finally:
            self._wake_rows = 1
            self._wake_at = -math.inf
            if handle is not None:
                handle.cancel()

    def _dispatch(self, now: float, head: Entry[T, R], rows: int) -> bool:
        """Take a batch from the queues and run it; True when it ran (and finished) right here."""
        # Only SLO mode plans with the curve; reading it rebuilds the snapshot after every batch.
        curve = self._estimator.curve if self._planner is not None else None
        expected = curve.predict(rows) if curve is not None else 0.0  # at the quantile: deadlines are hard
        doomed: list[Entry[T, R]] = []
        batch = self._queues.take(head, rows, now + expected, doomed)
        for entry in doomed:
            self._settle(entry, None, expiry_error(self.name, entry, Expiry.DEADLINE, now, expected))
        if not batch:
            return False
        assert self._event_loop is not None
        end = now + (curve.mean(rows) if curve is not None else 0.0)  # when admission expects it free
        self._ends.append(end)
        self._update_free_at()
        started = self._clock()
        try:
            outcome = self._run_batch([e.item for e in batch])
        except BaseException as exc:
            self._finish(batch, end, started, None, exc)
            return True
        if isinstance(outcome, list):  # the owner ran it right here (a tiny batch on the loop)
            self._finish(batch, end, started, outcome, None)
            return True
        task = self._event_loop.create_task(self._execute(batch, end, started, outcome))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return False

    def _update_free_at(self) -> None:
        ends = self._ends
        self._free_at = min(ends) if len(ends) >= self.config.max_concurrent_batches else 0.0

    async def _execute(self, batch: list[Entry[T, R]], end: float, started: float, running: Awaitable[list[R]]) -> None:
        try:
            results = await running
        except BaseException as exc:
            self._finish(batch, end, started, None, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self._finish(batch, end, started, results, None)

    def _finish(self, batch: list[Entry[T, R]], end: float, started: float, results: list[R] | None,
                exc: BaseException | None) -> None:
        """Settle a batch's entries with its results or its error, then free its instance."""
        try:
            if exc is None and results is not None and len(results) != len(batch):
                exc = BackendError(f"{self.name}: the batch returned {len(results)} results for {len(batch)} requests")
            if self._admission is not None:
                self._admission.settled(self._clock(), batch, exc is None)
            if exc is not None:
                error = exc if isinstance(exc, ServingError) else BackendError(
                    f"{self.name}: batch execution failed: {exc!r}")
                if isinstance(exc, asyncio.CancelledError) and self._cut_reason:  # stop() cut it short
                    error = ShuttingDown(f"{self._cut_reason} while this request's batch was running; its result "
                                         "is lost")
                if not isinstance(exc, (ServingError, asyncio.CancelledError)):
                    log.error("%s: batch of %d failed", self.name, len(batch), exc_info=exc)
                for entry in batch:
                    self._settle(entry, None, error)
            elif results is not None:  # always, when there is no error
                now = self._clock()
                if self.config.measure_run_time:
                    self.record_run_time(sum(e.rows for e in batch), now - started)
                if self._planner is not None:
                    self._planner.settled(now, (e.enqueued_at for e in batch))
                for entry, result in zip(batch, results):
                    self._settle(entry, result, None)
        finally:
            self._ends.remove(end)
            self._update_free_at()
            if self._release is not None:
                self._release.release()
            self._wake.set()

    def _settle(self, entry: Entry[T, R], result: Any, error: BaseException | None) -> None:
        if self._release is not None:
            self._release.settle(entry, result, error)
        else:
            deliver(entry, result, error)

    def record_run_time(self, rows: int, seconds: float) -> None:
        """Feed the run-time estimate one batch of ``rows`` rows that took ``seconds`` (see ``measure_run_time``)."""
        estimator = self._estimator
        estimator.observe(rows, seconds)
        if self._planner is not None:
            assert self._admission is not None  # both or neither
            self._admission.observed(self._clock())
            self._planner.refit(estimator.curve)
        if log.isEnabledFor(logging.DEBUG):
            curve = estimator.curve
            if curve is None:
                return
            now = self._clock()
            if now - self._logged_at >= _LOG_EVERY_S:
                self._logged_at = now
                log.debug("%s: %s", self.name, self.estimate.describe())

    def record_loop_lag(self, seconds: float) -> None:
        """How late the event loop took up one batch's results (reported by the owner for batches run off
        the loop); with an objective it comes off the budget (batching/planner.py)."""
        if self._planner is not None:
            self._planner.observe_loop_lag(seconds, self._estimator.curve)
