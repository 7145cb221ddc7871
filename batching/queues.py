"""The scheduler's queue: priority levels, per-level queue policy, timers and the anti-starvation rule.

Level 1 is the highest priority (Triton's convention); a model without
priorities has one level. Each level holds two FIFO deques: requests still
within their queue timeout, then requests whose timeout passed under the DELAY
action. Batches are filled level by level, each level's FIFO before its
delayed FIFO, so a higher level always goes first, except:

**Anti-starvation (aging).** A request that has waited ``aging_s`` or more
heads the next batch before any request that has waited less, whatever its
level; among such aged requests the oldest goes first. So no request waits
much longer than ``aging_s`` plus one batch run while an instance is free,
also a DELAY-ed one (Triton may delay those forever). ``aging_s == 0`` turns
aging off: strict priority, and a saturated high level may starve lower ones.

Removal is lazy, so no per-request operation scans the queue: a taken,
expired or cancelled entry is marked ``GONE`` (or found with a done future)
and popped when it reaches a deque's front. Counters (``count``, ``rows``,
per level) count only live entries, except that a request cancelled by its
caller counts until it is swept; a level that looks full is swept before a
request is refused. Queue timeouts sit in a heap of timers, so they fire on
time. Callers' deadlines do not: a transport cancels a call whose deadline
passes (which cancels its future), and ``take`` fails any entry that cannot
finish by its deadline, so an expired request is never executed.

Loop-bound, no locks. Knows nothing of what an item is; must not import
server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import heapq
import math
from dataclasses import dataclass
from typing import Any, Generic, Hashable, Iterator, TypeVar

from ops.errors import DeadlineExceeded

T = TypeVar("T")
R = TypeVar("R")

QUEUED = 0
GONE = 1


class TimeoutAction(enum.Enum):
    """What happens to a request whose queue timeout passes (Triton's ModelQueuePolicy)."""

    REJECT = "REJECT"  # fail it with DeadlineExceeded; it never runs
    DELAY = "DELAY"  # move it behind every request of its level still within its timeout


@dataclass(frozen=True)
class QueuePolicy:
    """The queue policy of one priority level (Triton's ModelQueuePolicy, in seconds)."""

    max_queue_size: int = 1024  # requests waiting at this level; beyond it submit() raises QueueFull
    timeout_s: float = 0.0  # default queue timeout; 0: none
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    allow_timeout_override: bool = False  # a request's `timeout` may shorten (never lengthen) timeout_s

    def __post_init__(self) -> None:
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {self.timeout_s}")

    def timeout_for(self, requested_us: int) -> float:
        """The queue timeout in seconds of a request asking for ``requested_us`` (0: did not ask); 0 is none.

        A request's timeout counts only with ``allow_timeout_override``, and
        only to shorten the default (no default counts as an infinite one),
        as in Triton. Otherwise it is ignored.
        """
        default = self.timeout_s
        if requested_us > 0 and self.allow_timeout_override:
            asked = requested_us / 1e6
            if default == 0.0 or asked < default:
                return asked
        return default


class Entry(Generic[T, R]):
    """One queued request. ``deadline`` is the caller's (hard); ``timeout_at`` the queue policy's."""

    __slots__ = ("item", "rows", "key", "future", "enqueued_at", "deadline", "timeout_at", "level", "seq",
                 "state", "delayed", "settled", "result", "error")

    def __init__(self, item: T, rows: int, key: Hashable, future: asyncio.Future[R], now: float,
                 deadline: float | None, timeout_at: float | None, level: int, seq: int) -> None:
        self.item = item
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued_at = now
        self.deadline = deadline
        self.timeout_at = timeout_at
        self.level = level  # index into the levels, 0 = priority 1
        self.seq = seq  # arrival order
        self.state = QUEUED
        self.delayed = False
        self.settled = False  # result or error stored, waiting for in-order release
        self.result: Any = None
        self.error: BaseException | None = None


class Expiry(enum.Enum):
    DEADLINE = "deadline"  # the caller's deadline passed
    TIMEOUT = "timeout"  # the level's queue timeout passed (REJECT)


class _Level:
    __slots__ = ("policy", "fifo", "delayed", "count", "rows")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.fifo: collections.deque[Entry[Any, Any]] = collections.deque()
        self.delayed: collections.deque[Entry[Any, Any]] = collections.deque()
        self.count = 0
        self.rows = 0


def _live(entry: Entry[Any, Any], in_fifo: bool) -> bool:
    return entry.state == QUEUED and not (in_fifo and entry.delayed) and not entry.future.done()


class PriorityQueues(Generic[T, R]):
    """See the module docstring. ``policies[i]`` is the policy of priority level ``i + 1``."""

    def __init__(self, policies: tuple[QueuePolicy, ...], aging_s: float = 0.0) -> None:
        if not policies:
            raise ValueError("at least one priority level is needed")
        if aging_s < 0:
            raise ValueError(f"aging_s must be >= 0, got {aging_s}")
        self._levels = [_Level(p) for p in policies]
        self.aging_s = aging_s
        self.count = 0  # live entries
        self.rows = 0  # their rows
        self._timers: list[tuple[float, int, Entry[T, R]]] = []

    @property
    def levels(self) -> int:
        return len(self._levels)

    def policy(self, level: int) -> QueuePolicy:
        return self._levels[level].policy

    def level_count(self, level: int) -> int:
        return self._levels[level].count

    def full(self, level: int) -> bool:
        """Whether ``level`` holds ``max_queue_size`` requests, after sweeping cancelled ones if it looks full."""
        lv = self._levels[level]
        if lv.count < lv.policy.max_queue_size:
            return False
        for dq, in_fifo in ((lv.fifo, True), (lv.delayed, False)):
            for entry in dq:
                if entry.state == QUEUED and entry.future.done() and (not in_fifo or not entry.delayed):
                    self._remove(entry)
        return lv.count >= lv.policy.max_queue_size

    def rows_up_to(self, level: int) -> int:
        """Rows queued at ``level`` and every higher-priority level."""
        levels = self._levels
        return levels[0].rows if level == 0 else sum(levels[i].rows for i in range(level + 1))

    def push(self, entry: Entry[T, R]) -> None:
        lv = self._levels[entry.level]
        lv.fifo.append(entry)
        lv.count += 1
        lv.rows += entry.rows
        self.count += 1
        self.rows += entry.rows
        if entry.timeout_at is not None:
            heapq.heappush(self._timers, (entry.timeout_at, entry.seq, entry))

    def next_timer(self) -> float:
        """The time of the earliest pending queue timeout (``inf`` if none)."""
        return self._timers[0][0] if self._timers else math.inf

    def fire_timers(self, now: float) -> list[tuple[Entry[T, R], Expiry]]:
        """Apply the queue timeouts due by ``now``: DELAY-ed entries move, REJECT-ed ones are returned removed."""
        timers = self._timers
        out: list[tuple[Entry[T, R], Expiry]] = []
        while timers and timers[0][0] <= now:
            _, _, entry = heapq.heappop(timers)
            if entry.state != QUEUED:
                continue
            if entry.future.done():
                self._remove(entry)
            elif entry.deadline is not None and entry.deadline <= now:
                self._remove(entry)
                out.append((entry, Expiry.DEADLINE))
            else:
                lv = self._levels[entry.level]
                if lv.policy.timeout_action is TimeoutAction.REJECT:
                    self._remove(entry)
                    out.append((entry, Expiry.TIMEOUT))
                else:
                    entry.timeout_at = None
                    entry.delayed = True
                    lv.delayed.append(entry)
        self._compact()
        return out

    def front(self, now: float) -> tuple[Entry[T, R] | None, float]:
        """The entry that heads the next batch, and the arrival time of the oldest live entry.

        The head is the oldest aged entry if any (see the module docstring),
        else the first entry of the highest non-empty level. O(levels),
        amortised over the dead entries it pops.
        """
        head: Entry[T, R] | None = None
        oldest: Entry[T, R] | None = None
        for lv in self._levels:
            if lv.count == 0:
                continue
            self._sweep(lv.fifo, True)
            self._sweep(lv.delayed, False)
            first = lv.fifo[0] if lv.fifo else None
            late = lv.delayed[0] if lv.delayed else None
            level_oldest = late if late is not None and (first is None or late.enqueued_at < first.enqueued_at) else first
            if head is None:
                head = first if first is not None else late
            if level_oldest is not None and (oldest is None or level_oldest.enqueued_at < oldest.enqueued_at):
                oldest = level_oldest
        if oldest is None:
            self._compact()
            return None, now
        if self.aging_s > 0 and now - oldest.enqueued_at >= self.aging_s:
            head = oldest
        return head, oldest.enqueued_at

    def take(self, head: Entry[T, R], max_rows: int, finish_by: float,
             doomed: list[Entry[T, R]]) -> list[Entry[T, R]]:
        """Remove and return ``head`` and the entries that share its key, in priority order, up to ``max_rows``.

        Entries whose deadline is before ``finish_by`` (the time the batch is
        expected to finish) are removed into ``doomed`` instead, so they never
        run; the batch may then be empty. Stops at the first entry of the same
        key that does not fit (no entry jumps ahead of one that came before it
        at its level, as in Triton); looks past at most ``max_rows`` entries of
        other keys in all.
        """
        batch: list[Entry[T, R]] = []
        rows = 0
        self._remove(head)
        if head.deadline is not None and head.deadline < finish_by:
            doomed.append(head)
        else:
            batch.append(head)
            rows = head.rows
        if rows < max_rows:
            for entry in self._same_key(head.key, max(max_rows, 8)):
                if entry.deadline is not None and entry.deadline < finish_by:
                    self._remove(entry)
                    doomed.append(entry)
                    continue
                if rows + entry.rows > max_rows:
                    break
                self._remove(entry)
                batch.append(entry)
                rows += entry.rows
                if rows >= max_rows:
                    break
        for lv in self._levels:
            self._sweep(lv.fifo, True)
            self._sweep(lv.delayed, False)
        self._compact()
        return batch

    def prefix_rows(self, head: Entry[T, R], max_rows: int, finish_by: float) -> list[int]:
        """The rows a batch that ``take`` would form now holds after each of its entries; removes nothing.

        For Triton's preferred sizes (``policy.preferred_rows``): which batch sizes the queue can
        form in order. O(batch), like ``take``.
        """
        out: list[int] = []
        rows = 0
        if head.deadline is None or head.deadline >= finish_by:
            rows = head.rows
            out.append(rows)
        if rows < max_rows:
            for entry in self._same_key(head.key, max(max_rows, 8)):
                if entry is head or (entry.deadline is not None and entry.deadline < finish_by):
                    continue
                if rows + entry.rows > max_rows:
                    break
                rows += entry.rows
                out.append(rows)
                if rows >= max_rows:
                    break
        return out

    def _same_key(self, key: Hashable, skips: int) -> Iterator[Entry[T, R]]:
        """The live entries of ``key`` in batching order: level by level, each level's FIFO before its
        delayed FIFO. Gives up after passing ``skips`` entries of other keys."""
        for lv in self._levels:
            if lv.count == 0:
                continue
            for dq, in_fifo in ((lv.fifo, True), (lv.delayed, False)):
                for entry in dq:
                    if not _live(entry, in_fifo):
                        continue
                    if entry.key != key:
                        skips -= 1
                        if skips <= 0:
                            return
                        continue
                    yield entry

    def drain(self) -> list[Entry[T, R]]:
        """Remove and return every live entry (for shutdown)."""
        out: list[Entry[T, R]] = []
        for lv in self._levels:
            for dq, in_fifo in ((lv.fifo, True), (lv.delayed, False)):
                for entry in dq:
                    if entry.state == QUEUED and not (in_fifo and entry.delayed):
                        self._remove(entry)
                        if not entry.future.done():
                            out.append(entry)
                dq.clear()
        self._timers.clear()
        return out

    def _remove(self, entry: Entry[T, R]) -> None:
        entry.state = GONE
        lv = self._levels[entry.level]
        lv.count -= 1
        lv.rows -= entry.rows
        self.count -= 1
        self.rows -= entry.rows

    def _compact(self) -> None:
        """With nothing live left, drop the tombstones at once (they hold requests' items)."""
        if self.count == 0:
            for lv in self._levels:
                lv.fifo.clear()
                lv.delayed.clear()
            self._timers.clear()

    def _sweep(self, dq: collections.deque[Entry[T, R]], in_fifo: bool) -> None:
        """Pop dead entries off the front of ``dq``, uncounting callers' cancellations."""
        while dq:
            entry = dq[0]
            if _live(entry, in_fifo):
                return
            dq.popleft()
            if entry.state == QUEUED and not (in_fifo and entry.delayed):
                self._remove(entry)  # cancelled by its caller

    def __len__(self) -> int:
        return self.count

    def waiting(self) -> int:
        """Live entries, without callers' cancellations that no sweep has reached yet: O(queue), for gauges.

        Safe from another thread (a scrape): each deque is copied in one C-level step.
        """
        n = 0
        for lv in self._levels:
            for dq, in_fifo in ((lv.fifo, True), (lv.delayed, False)):
                n += sum(1 for entry in list(dq) if _live(entry, in_fifo))
        return n



def expiry_error(name: str, entry: Entry[Any, Any], why: Expiry, now: float, expected_s: float = 0.0) -> DeadlineExceeded:
    """The error for a request that expired in the queue (``name`` labels the batcher); it was never executed."""
    waited_ms = (now - entry.enqueued_at) * 1e3
    if why is Expiry.TIMEOUT and entry.timeout_at is not None:
        timeout_ms = (entry.timeout_at - entry.enqueued_at) * 1e3
        return DeadlineExceeded(
            f"{name}: the request waited {waited_ms:.1f} ms, longer than its queue timeout of "
            f"{timeout_ms:.1f} ms at priority level {entry.level + 1}; it was not executed"
        )
    if entry.deadline is not None and entry.deadline > now:
        return DeadlineExceeded(
            f"{name}: the request cannot finish before its deadline ({(entry.deadline - now) * 1e3:.1f} ms "
            f"left, its batch is expected to take {expected_s * 1e3:.1f} ms); it was not executed"
        )
    return DeadlineExceeded(
        f"{name}: the request's deadline passed after {waited_ms:.1f} ms in the queue; it was not executed"
    )
