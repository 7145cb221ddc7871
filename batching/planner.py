"""The SLO plan one batcher works with, kept current as the event loop's lag and the run-time fit change.

``SloPlanner`` holds the plan ``decide_slo`` and ``predicted_latency`` (batching/slo.py) are
given: the budget net of the loop-lag allowance, the batch size admission plans with
(``batch_rows``), and the admitted and offered arrival rates. The batcher feeds it each new
run-time fit, each measured loop lag, and its running totals of admitted and offered rows.
Must not import server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from batching.config import ScheduleEstimate
from batching.estimate import ArrivalRate, LoopLag, RunTimeCurve
from batching.policy import Decision
from batching.slo import LatencyObjective, SloPlan, batch_rows, decide_slo

LAG_HOPS = 3  # loop crossings per request the batcher does not time: arrival, results, response
MISS_SHARE = 0.5  # admission aims at this share of the misses the objective's percentile allows
TAIL_STEP = 0.05  # how far one miss raises the admission tail scale (a hit lowers it by its share)
TAIL_SCALE_RANGE = (0.25, 3.0)
_LAG_STEP_S = 0.0002  # the plan is rebuilt when the allowance moves by at least this much
_MAX_LAG_SHARE = 0.5  # the allowance never takes more than this share of the budget


class SloPlanner:
    """See the module docstring. Loop-bound, like its batcher."""

    def __init__(self, objective: LatencyObjective, max_batch_size: int, instances: int) -> None:
        self.nominal_budget_s = objective.budget_s
        self.plan = SloPlan(objective.budget_s, max_batch_size, instances, objective.target_utilization)
        self.admission_batch = 1
        self.lag_allowance_s = 0.0
        self.tail_scale = 1.0
        self._miss_target = MISS_SHARE * (1.0 - objective.percentile / 100)
        self._lag = LoopLag(quantile=objective.percentile / 100)
        self.admitted = ArrivalRate(objective.rate_time_constant_s)  # rows per second admitted
        self.offered = ArrivalRate(objective.rate_time_constant_s)  # rows per second offered, shed or not

    def decide(self, now: float, curve: RunTimeCurve | None, queued_rows: int, oldest_wait_s: float,
               admitted_rows: int, offered_rows: int) -> Decision:
        """``decide_slo`` on the plan, with the arrival rates updated from the running totals of rows.

        Batches are sized from the admitted rate, the rows that join the queue. The offered rate is
        observed only (the estimate, a metric): sizing the batch that keeps up from it while admission
        sheds was tried and left out (batching/README.md, "Admission").
        """
        self.offered.update(now, offered_rows)
        return decide_slo(self.plan, curve, queued_rows, oldest_wait_s, self.admitted.update(now, admitted_rows))

    def estimate(self, now: float, admitted_rows: int, offered_rows: int, curve: RunTimeCurve | None,
                 last: Decision) -> ScheduleEstimate:
        """The batcher's ``ScheduleEstimate`` (batching/config.py) in objective mode.

        The arrival rates are read as of ``now`` (``ArrivalRate.peek``, which records nothing: the
        metrics are encoded off the event loop): decisions update them only while rows are queued,
        and a gauge read after the traffic stopped would otherwise show its last rate for good.
        """
        return ScheduleEstimate(
            curve, last.wake_rows, last.wait_s,
            arrival_rows_per_s=self.admitted.peek(now, admitted_rows),
            offered_rows_per_s=self.offered.peek(now, offered_rows),
            admission_batch_rows=self.admission_batch, budget_s=self.plan.budget_s,
            loop_lag_allowance_s=self.lag_allowance_s, admission_tail_scale=self.tail_scale,
        )

    def settled(self, now: float, enqueued_at: Iterable[float]) -> None:
        """Admitted requests answered at ``now``: calibrate the tail admission prices against what they took.

        Admission prices each batch's overrun from the run-time spread (``predicted_latency``); how
        much of it shows up in the latency of whole requests depends on what the model cannot see:
        overruns that come together (a noisy neighbour slows batches in a row), or that cancel out.
        So the tail is scaled by a factor tracked like a quantile (stochastic approximation): each
        request that took longer than the budget raises it by ``TAIL_STEP``, each one within lowers
        it by ``TAIL_STEP`` times the target miss share (``MISS_SHARE`` of what the objective's
        percentile allows, e.g. 0.5% at p99), so it settles where that share of requests misses:
        down near capacity, where requests the tail would have shed make it, and up where they would not.
        """
        n = misses = 0
        budget = self.plan.budget_s
        for t in enqueued_at:
            n += 1
            misses += now - t > budget
        lo, hi = TAIL_SCALE_RANGE
        self.tail_scale = min(hi, max(lo, self.tail_scale + TAIL_STEP * (misses - self._miss_target * n)))

    def refit(self, curve: RunTimeCurve | None) -> None:
        """A new run-time fit: the batch admission plans with follows it."""
        if curve is not None:
            self.admission_batch = batch_rows(self.plan, curve)

    def observe_loop_lag(self, seconds: float, curve: RunTimeCurve | None) -> None:
        """How late the event loop took up one batch's results.

        The plan's budget is the nominal one minus ``LAG_HOPS`` times this lag at the objective's
        percentile over the last 128 batches (``LoopLag``): a request crosses the loop about that many
        times outside the batcher's view (its arrival reaching the handler, its results reaching the
        handler, its response being written), and each crossing waits about as long as this one. A busy
        loop (a CPU-bound transport, shedding at twice capacity, a noisy neighbour) thus shrinks batches
        and sheds earlier instead of letting admitted requests miss.
        """
        lag = self._lag.observe(seconds)
        allowance = min(LAG_HOPS * lag, _MAX_LAG_SHARE * self.nominal_budget_s)
        if abs(allowance - self.lag_allowance_s) < _LAG_STEP_S:
            return
        self.lag_allowance_s = allowance
        self.plan = dataclasses.replace(self.plan, budget_s=self.nominal_budget_s - allowance)
        self.refit(curve)
