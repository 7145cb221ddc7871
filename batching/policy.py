"""The dispatch decision: given the queue and the clock, dispatch now or wait how long.

A pure function over numbers, tested with tables of cases; the batcher's loop
only applies it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """Static batching knobs of one model (Triton's names, in rows and seconds)."""

    max_batch_size: int = 1  # rows; 1 with batching off
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size ({self.max_batch_size})")


@dataclass(frozen=True)
class Decision:
    """Dispatch up to ``rows`` rows now (rows > 0), or wait ``wait_s`` seconds for more.

    While waiting, an arrival need not wake the scheduler before ``wake_rows``
    rows are queued (0: any arrival may change the decision).
    """

    rows: int = 0
    wait_s: float = 0.0
    wake_rows: int = 0


def decide(policy: BatchPolicy, queued_rows: int, oldest_wait_s: float, wait_pays: bool = True,
           formed_rows: int | None = None) -> Decision:
    """Decide for the rows that can share a batch with the oldest request, as Triton's dynamic batcher does.

    - until the oldest request has waited ``max_queue_delay_s`` (always, with no delay), a batch of
      the largest preferred size that the queue can form goes at once, also when more rows are
      queued, up to ``max_batch_size`` and beyond (a burst, or a request of several rows that
      overshoots it): ``formed_rows``, from ``preferred_rows`` over the batch as it would be taken
      (None: the largest preferred size up to ``queued_rows``, exact for requests of one row);
    - a full batch (``max_batch_size`` rows) goes at once;
    - once the oldest request has waited ``max_queue_delay_s``, whatever is queued goes, up to
      ``max_batch_size`` (preferred sizes no longer matter, as in Triton); so it does at once with
      no delay, or when ``wait_pays`` is False (recent waits gathered nothing: ``WaitPayoff``);
    - otherwise wait for the rest of the oldest request's delay, or until the next preferred size
      or a full batch is queued.
    """
    if queued_rows <= 0:
        return Decision()
    cap = policy.max_batch_size
    preferred = policy.preferred_batch_sizes
    remaining = policy.max_queue_delay_s - oldest_wait_s
    if preferred and (remaining > 0 or policy.max_queue_delay_s == 0):
        if formed_rows is None:
            formed_rows = max((p for p in preferred if p <= queued_rows), default=0)
        if formed_rows > 0:
            return Decision(rows=formed_rows)
    if queued_rows >= cap:
        return Decision(rows=cap)
    if remaining <= 0 or not wait_pays:
        return Decision(rows=queued_rows)
    wake = min((p for p in preferred if p > queued_rows), default=cap)
    return Decision(wait_s=remaining, wake_rows=wake)


def preferred_rows(preferred: tuple[int, ...], prefix_rows: list[int]) -> int:
    """The rows of the preferred batch a queue can form now (Triton's rule); 0: none yet.

    ``prefix_rows`` are the rows a batch would hold after each request, taken in order (the
    batch stops at the first request that does not fit). The answer is the largest of them that
    is a preferred size; or, when the queue holds more than the largest preferred size, the
    rows before the request that overshoots it (at least the first request's).
    """
    largest = max(preferred)
    best = before = 0
    for rows in prefix_rows:
        if rows > largest:
            return best or before or rows
        if rows in preferred:
            best = rows
        before = rows
    return best


FRUITLESS_WAITS = 8  # consecutive waits that gathered no row before the delay is skipped
WAIT_PROBE_S = 0.1  # while the delay is skipped, one batch in this long waits it out again


class WaitPayoff:
    """Whether waiting out ``max_queue_delay`` still gathers rows; the batcher stops waiting when it does not.

    The delay buys batches only if more requests arrive while a request waits. A caller that sends
    its next request only after the answer (a single client, a synchronous service) never adds to
    its own batch: every wait is pure latency, and the event loop's timers make a sub-millisecond
    delay last 1-2 ms. So after ``FRUITLESS_WAITS`` consecutive waits that ended with no more rows
    queued than they began with, ``pays`` turns False and requests go at once; one wait per
    ``WAIT_PROBE_S`` still happens, and the first wait that gathers a row turns waiting back on.
    Under load waits keep gathering rows and nothing changes. Fed by the batcher: ``waiting`` when
    a wait begins, ``dispatched`` with the rows queued when the next batch goes.
    """

    __slots__ = ("_fruitless", "_from_rows", "_probe_at")

    def __init__(self) -> None:
        self._fruitless = 0
        self._from_rows = 0  # rows queued when the current wait began; 0: not waiting
        self._probe_at = 0.0

    def pays(self, now: float) -> bool:
        return self._fruitless < FRUITLESS_WAITS or now >= self._probe_at

    def waiting(self, queued_rows: int) -> None:
        if not self._from_rows:
            self._from_rows = queued_rows

    def dispatched(self, now: float, queued_rows: int) -> None:
        if not self._from_rows:
            return  # this batch did not wait
        if queued_rows > self._from_rows:
            self._fruitless = 0
        else:
            self._fruitless += 1
            if self._fruitless >= FRUITLESS_WAITS:
                self._probe_at = now + WAIT_PROBE_S
        self._from_rows = 0
