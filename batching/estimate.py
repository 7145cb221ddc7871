"""Online estimates the scheduler decides with: batch run time versus rows, and the arrival rate.

``RunTimeEstimator`` learns ``t(b)``, the time one batch of ``b`` rows takes
from dispatch to results (merging, the executor hop, the kernel, splitting):

- the mean curve ``a + c*b`` is fitted by least squares over exponentially
  decayed sums (half-life ``half_life_batches``), so it follows drift; a run
  longer than ``clip`` times the current fit enters the fit as ``clip`` times
  the fit, so a stall (GC pause, page fault, a noisy neighbour) moves it little;
- the spread is kept as relative residuals ``t / fit(b) - 1`` of the last
  ``window`` batches, each measured against the fit *before* that batch was
  added (honest, out-of-sample); ``margin`` is their ``quantile``;
- predictions are ``(a + c*b) * (1 + margin)``: the ``quantile`` of the run
  time, not its mean. A slowdown shows at once: when the last 4 batches all
  ran slower than the fit (a step, not a stall), the margin is scaled by the
  smallest of their excesses, while the mean catches up over a few
  half-lives;
  a speed-up relaxes the margin only as fast residuals replace slow ones, so
  the estimate is quick to turn cautious and slow to relax.
- while every batch had about the same rows the slope is not identifiable;
  the fit is then proportional, ``t(b) = mean_t * b / mean_b`` (pessimistic
  for larger batches, which get measured as soon as they run).

``ArrivalRate`` is a continuous-time exponentially weighted rate of rows
admitted. ``LoopLag`` is a quantile of how late the event loop picked up
finished batches. All are fed per batch or per loop turn, never per request.

Pure Python, no I/O, no clock of its own; must not import server, kernels,
model_store, grpc or numpy.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

_MIN_ROW_SPREAD = 0.05  # variance of rows below which the slope is not fitted (std < 0.22 row: e.g. 1 batch in 19 one row larger)
_NO_LIMIT = 1 << 30
_STEP_BATCHES = 4  # this many slow batches in a row are a step, not a stall (``_margin`` unrolls it)


@dataclass(frozen=True)
class RunTimeCurve:
    """A snapshot of the fitted run time: ``(intercept_s + per_row_s * rows) * (1 + margin)``."""

    intercept_s: float
    per_row_s: float
    margin: float = 0.0  # the residuals' quantile, relative to the mean curve
    samples: int = 0  # batches it was fitted on
    identified: bool = True  # False: every batch had about the same rows, the slope is the proportional guess

    def predict(self, rows: int) -> float:
        """Seconds a batch of ``rows`` rows takes, at the estimator's quantile."""
        return (self.intercept_s + self.per_row_s * rows) * (1.0 + self.margin)

    def mean(self, rows: int) -> float:
        """Seconds a batch of ``rows`` rows takes on average."""
        return self.intercept_s + self.per_row_s * rows

    def rows_within(self, seconds: float) -> int:
        """The most rows whose predicted run time is at most ``seconds`` (0 if not even one; large if unbounded)."""
        room = seconds / (1.0 + self.margin) - self.intercept_s
        if room < 0:
            return 0
        if self.per_row_s <= 0:
            return _NO_LIMIT
        return min(_NO_LIMIT, int(room / self.per_row_s))


class RunTimeEstimator:
    """See the module docstring. Not thread-safe: feed it from one thread (the event loop)."""

    def __init__(
        self,
        *,
        quantile: float = 0.99,
        half_life_batches: float = 32.0,
        window: int = 256,
        clip: float = 3.0,
        min_samples: int = 4,
    ) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if half_life_batches <= 0 or window < 1 or clip <= 1.0 or min_samples < 1:
            raise ValueError("half_life_batches > 0, window >= 1, clip > 1 and min_samples >= 1 are required")
        self.quantile = quantile
        self._decay = 0.5 ** (1.0 / half_life_batches)
        self._window = window
        self._clip = clip
        self._min_samples = min_samples
        self._s0 = self._sb = self._sbb = self._st = self._sbt = 0.0
        self._ring: list[float] = []  # residuals in arrival order (a ring once full)
        self._ring_pos = 0
        self._sorted: list[float] = []  # the same residuals, sorted
        self._samples = 0
        self._a = 0.0
        self._c = 0.0
        self._identified = False
        self._fitted = False
        self._curve: RunTimeCurve | None = None
        self._stale = False

    @property
    def curve(self) -> RunTimeCurve | None:
        """The current estimate; None until ``min_samples`` batches were seen. Built lazily, once per change."""
        if self._stale:
            self._curve = RunTimeCurve(self._a, self._c, self._margin(), self._samples, self._identified)
            self._stale = False
        return self._curve

    def observe(self, rows: int, seconds: float) -> None:
        """Add one batch's measured run time (from dispatch to results)."""
        if rows < 1 or not seconds >= 0.0 or math.isinf(seconds):
            return
        if self._fitted:
            mean = self._a + self._c * rows
            if mean > 0:
                self._add_residual(seconds / mean - 1.0)
                seconds = min(seconds, mean * self._clip)
        d = self._decay
        self._s0 = self._s0 * d + 1.0
        self._sb = self._sb * d + rows
        self._sbb = self._sbb * d + rows * rows
        self._st = self._st * d + seconds
        self._sbt = self._sbt * d + rows * seconds
        self._samples += 1
        if self._samples >= self._min_samples:
            self._fit()
            self._fitted = self._stale = True

    def _fit(self) -> None:
        s0 = self._s0
        mean_b = self._sb / s0
        mean_t = self._st / s0
        var_b = self._sbb / s0 - mean_b * mean_b
        self._identified = var_b >= _MIN_ROW_SPREAD
        if self._identified:
            c = (self._sbt / s0 - mean_b * mean_t) / var_b
            a = mean_t - c * mean_b
            if c < 0:  # noise, or a kernel faster on more rows: take the mean, flat
                a, c = mean_t, 0.0
            elif a < 0:  # an intercept below zero is noise: go through the origin and the mean
                a, c = 0.0, mean_t / mean_b
        else:
            a, c = 0.0, mean_t / mean_b
        self._a, self._c = a, c

    def _add_residual(self, residual: float) -> None:
        if len(self._ring) < self._window:
            self._ring.append(residual)
        else:
            old = self._ring[self._ring_pos]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._ring[self._ring_pos] = residual
            self._ring_pos = (self._ring_pos + 1) % self._window
        bisect.insort(self._sorted, residual)

    def _margin(self) -> float:
        """The residuals' quantile, scaled up by a sustained step (the smallest of the last few residuals)."""
        values = self._sorted
        if not values:
            return 0.0
        position = self.quantile * (len(values) - 1)
        low = int(position)
        high = min(low + 1, len(values) - 1)
        value = values[low] + (values[high] - values[low]) * (position - low)
        ring = self._ring
        if len(ring) >= _STEP_BATCHES:
            end = self._ring_pos if len(ring) == self._window else len(ring)
            n = len(ring)
            step = min(ring[(end - 1) % n], ring[(end - 2) % n], ring[(end - 3) % n], ring[(end - 4) % n])
            if step > 0:  # every recent batch was slower than the fit: scale the whole distribution
                value = (1.0 + value) * (1.0 + step) - 1.0
        return max(0.0, value)


class ArrivalRate:
    """Rows per second admitted, smoothed with time constant ``time_constant_s``.

    ``update(now, total_rows)`` takes a running total (a counter the submit
    path bumps), so the hot path pays one integer addition per request.
    """

    def __init__(self, time_constant_s: float = 0.1) -> None:
        if time_constant_s <= 0:
            raise ValueError(f"time_constant_s must be > 0, got {time_constant_s}")
        self.time_constant_s = time_constant_s
        self.rows_per_s = 0.0
        self._last_at: float | None = None
        self._last_total = 0

    def update(self, now: float, total_rows: int) -> float:
        if self._last_at is not None and now <= self._last_at:
            return self.rows_per_s
        self.rows_per_s = self.peek(now, total_rows)
        self._last_at, self._last_total = now, total_rows
        return self.rows_per_s

    def peek(self, now: float, total_rows: int) -> float:
        """The rate ``update`` would return, without recording anything (a read from any thread)."""
        last_at, rate = self._last_at, self.rows_per_s
        if last_at is None or now <= last_at:
            return rate
        dt = now - last_at
        instant = (total_rows - self._last_total) / dt
        return rate + (1.0 - math.exp(-dt / self.time_constant_s)) * (instant - rate)


class LoopLag:
    """The ``quantile`` of the last ``window`` event-loop lags (seconds); 0 until ``min_samples`` were seen."""

    def __init__(self, quantile: float = 0.99, window: int = 128, min_samples: int = 8) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.quantile = quantile
        self.min_samples = min_samples
        self._samples: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> float:
        """Add one lag; return the current quantile (sorting at most ``window`` numbers: per batch, not per request)."""
        samples = self._samples
        samples.append(max(0.0, seconds))
        if len(samples) < self.min_samples:
            return 0.0
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]
