"""SLO-driven batching: the dispatch decision and the admission test under a latency objective.

Pure functions over numbers, tested with tables; the batcher applies them.
``curve`` is the run-time estimate (batching/estimate.py), at the objective's
percentile. All times are seconds. The algorithm is explained in
batching/README.md; in short:

- **budget**: the objective minus a headroom for the work the batcher does
  not see (decoding, the transport, event-loop jitter).
- **batch_rows**: the largest batch such that waiting for one such batch
  (at its mean run time) and then running (at the quantile) fits the
  budget. Batches never exceed it, and a backlog is served in such full
  batches.
- **decide_slo**, called when an instance is free: the batch the scheduler
  aims for is the smallest that keeps the instances at most
  ``target_utilization`` busy at the measured arrival rate (``rows_needed``),
  but no larger than what can still be gathered and run within the oldest
  request's budget (``rows_reachable``), nor than ``batch_rows``. It
  dispatches as soon as that many rows are queued, or when waiting longer
  would break the oldest request's budget; otherwise it waits for the
  expected arrival of the missing rows.
- **predicted_latency**, called by ``submit``: how long a new request would
  take with the rows queued ahead of it, run in batches of ``batch_rows`` on
  the instances as they free up (means, plus the batches' tails added in
  quadrature). A request predicted over the budget is shed at once.

Must not import server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batching.estimate import RunTimeCurve
from batching.policy import Decision


@dataclass(frozen=True)
class LatencyObjective:
    """A model's latency objective and how the scheduler spends it."""

    latency_s: float  # the end-to-end objective at ``percentile``
    percentile: float = 99.0
    headroom: float = 0.1  # fraction of the objective kept for work outside the batcher
    target_utilization: float = 0.5  # at most this busy fraction of the instances; the rest is burst headroom and CPU for the transport
    rate_time_constant_s: float = 0.1  # smoothing of the arrival rate; sets how fast a load step is seen

    def __post_init__(self) -> None:
        if not self.latency_s > 0:
            raise ValueError(f"latency_s must be > 0, got {self.latency_s}")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile}")
        if not 0 <= self.headroom < 1:
            raise ValueError(f"headroom must be in [0, 1), got {self.headroom}")
        if not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {self.target_utilization}")

    @property
    def budget_s(self) -> float:
        """The part of the objective the batcher plans with: queueing plus one batch run."""
        return self.latency_s * (1.0 - self.headroom)


@dataclass(frozen=True)
class SloPlan:
    """The fixed numbers ``decide_slo`` and ``predicted_latency`` work with, for one model."""

    budget_s: float
    max_batch_size: int
    instances: int = 1
    target_utilization: float = 0.5


KEEP_UP_UTILIZATION = 0.9  # when no batch keeps the instances at target_utilization: the busiest they may run


def rows_needed(plan: SloPlan, curve: RunTimeCurve, arrival_rate: float) -> int:
    """The smallest batch (up to max_batch_size) that serves ``arrival_rate`` rows/s at ``target_utilization``;
    when none can, the smallest that serves it at ``KEEP_UP_UTILIZATION``; when none can, max_batch_size.

    With the mean run time ``t(b) = A + C*b``: ``instances * b / t(b) >= rate / rho``
    gives ``b >= rate*A / (rho*instances - rate*C)``. Near capacity no batch keeps the instances
    half idle; aiming at the largest batch then made the scheduler wait for rows while an instance
    sat idle, spending much of the oldest request's budget on the wait (a median 7-20 ms above the
    fixed delays' near capacity in bench-scheduling). The batch that just keeps up waits less, and
    a backlog still grows batches up to ``batch_rows``.
    """
    if arrival_rate <= 0:
        return 1
    a, c = curve.intercept_s, curve.per_row_s  # utilisation is about the mean run time, not its tail
    for rho in (plan.target_utilization, max(plan.target_utilization, KEEP_UP_UTILIZATION)):
        capacity = rho * plan.instances - arrival_rate * c
        if capacity > 0:
            rows = math.ceil(arrival_rate * a / capacity - 1e-9)
            if rows <= plan.max_batch_size:
                return max(1, rows)
    return plan.max_batch_size


def rows_reachable(curve: RunTimeCurve, queued_rows: int, remaining_s: float, arrival_rate: float) -> int:
    """The largest batch that can be waited for and still run within ``remaining_s``.

    Waiting for ``b - q`` more rows takes ``(b - q) / rate``; then the batch
    runs ``A + C*b``: ``b <= (rate*(remaining - A) + q) / (1 + rate*C)``.
    """
    if arrival_rate <= 0:
        return queued_rows
    scale = 1.0 + curve.margin
    a, c = curve.intercept_s * scale, curve.per_row_s * scale
    return max(queued_rows, int((arrival_rate * (remaining_s - a) + queued_rows) / (1.0 + arrival_rate * c)))


def decide_slo(
    plan: SloPlan, curve: RunTimeCurve | None, queued_rows: int, oldest_wait_s: float, arrival_rate: float
) -> Decision:
    """Dispatch how many rows now, or wait how long, when an instance is free. See the module docstring.

    Batches never exceed ``batch_rows`` (the size admission plans with), so
    the requests admitted behind a batch are not delayed beyond what their
    admission predicted; and a backlog is served in such full batches, never
    shrunk to rescue a late request at the expense of everyone behind it.

    - nothing queued: nothing to do;
    - no estimate yet (the first batches): dispatch what is queued;
    - a full planned batch is queued, or the oldest request's budget leaves no
      room to wait: dispatch up to a planned batch (one row more while the
      slope is not identified and that row fits the budget: exploration);
    - the target batch is queued, or waiting would break the budget: dispatch all;
    - otherwise wait for the missing rows (``wake_rows`` is the target).
    """
    q = queued_rows
    if q <= 0:
        return Decision()
    if curve is None:
        return Decision(rows=min(q, plan.max_batch_size))
    batch = batch_rows(plan, curve)
    remaining = plan.budget_s - oldest_wait_s
    if q >= batch or curve.rows_within(remaining) <= q:
        if q > batch and not curve.identified and batch < plan.max_batch_size and curve.predict(batch + 1) <= remaining:
            # Explore: every batch so far had the same rows, so the slope is a proportional guess that
            # may be what keeps batches this small; one row more, when its pessimistic run time fits
            # the oldest request's budget, gives the estimator a second size to fit the slope from.
            return Decision(rows=batch + 1)
        return Decision(rows=min(q, batch))
    target = min(rows_needed(plan, curve, arrival_rate), rows_reachable(curve, q, remaining, arrival_rate), batch)
    if q >= target:
        return Decision(rows=q)
    wait = min((target - q) / arrival_rate, remaining - curve.predict(target))
    if wait <= 0:
        return Decision(rows=q)
    return Decision(wait_s=wait, wake_rows=target)


def batch_rows(plan: SloPlan, curve: RunTimeCurve) -> int:
    """The largest batch that can wait for one such batch to run and then run itself within the budget (at least 1).

    The batch waited for counts at its mean and the own run at the
    quantile: ``t_mean(b) + t_q(b) = (A + C*b) * (2 + margin) <= budget``
    (two runs both in their tail are much rarer than the percentile).
    """
    room = plan.budget_s / (2.0 + curve.margin) - curve.intercept_s
    if room < 0:
        return 1
    if curve.per_row_s <= 0:
        return plan.max_batch_size
    return max(1, min(plan.max_batch_size, int(room / curve.per_row_s)))


def predicted_latency(
    plan: SloPlan, curve: RunTimeCurve | None, rows_ahead: int, rows: int, busy_for_s: float, batch: int,
    tail_scale: float = 1.0,
) -> float:
    """Predicted seconds from now until a request of ``rows`` rows is answered (0 without an estimate).

    ``rows_ahead``: rows queued before it (its level and higher ones);
    ``busy_for_s``: until an instance is free (0 if one is), at the mean;
    ``batch``: from ``batch_rows``. The rows ahead run in full batches,
    ``instances`` at a time; then its own batch runs (a request of more
    than ``batch`` rows alone: its batch is as large as it is). Every batch counts at
    its mean, plus the tail: each batch on the request's path (the running
    one, those ahead, its own) may overrun its mean by up to ``margin`` of it,
    and independent overruns add in quadrature, so the tail of the sum is the
    root of the sum of their squares. (Counting every batch at the quantile
    priced a request behind one batch as if both ran in their tail, about
    1 in 10,000 at p99, and shed requests that would have made it.)
    ``tail_scale`` scales the overruns of the batches ahead of it (the running
    one and the queued ones): the planner calibrates it against the latencies
    admitted requests turn out to have (batching/planner.py), which prices
    overruns that come together. Its own batch counts at its measured quantile:
    a batch cannot overrun together with itself, and scaling it too made a lone
    request on an idle instance look late once overload had raised the scale,
    so that nothing was admitted (a model answered 5 requests/s at twice capacity).
    """
    if curve is None:
        return 0.0
    total = rows_ahead + rows
    if rows > batch:  # a request is never split: it runs alone, in a batch of its own rows, after those ahead
        rounds_ahead = -(-rows_ahead // batch) // plan.instances
        full, own = curve.mean(batch), curve.mean(rows)
    else:
        rounds_ahead = ((total - 1) // batch) // plan.instances
        full, own = curve.mean(batch), curve.mean(min(total, batch))
    ahead_sq = rounds_ahead * full * full
    if busy_for_s > 0:
        ahead_sq += full * full  # the running batch may overrun too
    tail = curve.margin * math.sqrt(own * own + tail_scale * tail_scale * ahead_sq)
    return busy_for_s + rounds_ahead * full + own + tail
