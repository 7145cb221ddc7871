"""The SLO plan one batcher works with, kept current as the event loop's lag and the run-time fit change.

``SloPlanner`` holds the plan ``decide_slo`` and ``predicted_latency`` (batching/slo.py) are
given: the budget net of the loop-lag allowance, and the batch size admission plans with
(``batch_rows``). The batcher feeds it each new run-time fit and each measured loop lag.
Must not import server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from batching.estimate import LoopLag, RunTimeCurve
from batching.slo import LatencyObjective, SloPlan, batch_rows

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
