"""The SLO plan one batcher works with, kept current as the event loop's lag and the run-time fit change.

``SloPlanner`` holds the plan ``decide_slo`` and ``predicted_latency`` (batching/slo.py) are
given: the budget net of the loop-lag allowance, and the batch size admission plans with
(``batch_rows``). The batcher feeds it each new run-time fit and each measured loop lag.
Must not import server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

import dataclasses

from batching.estimate import LoopLag, RunTimeCurve
from batching.slo import LatencyObjective, SloPlan, batch_rows

LAG_HOPS = 3  # loop crossings per request the batcher does not time: arrival, results, response
_LAG_STEP_S = 0.0002  # the plan is rebuilt when the allowance moves by at least this much
_MAX_LAG_SHARE = 0.5  # the allowance never takes more than this share of the budget


class SloPlanner:
    """See the module docstring. Loop-bound, like its batcher."""

    def __init__(self, objective: LatencyObjective, max_batch_size: int, instances: int) -> None:
        self.nominal_budget_s = objective.budget_s
        self.plan = SloPlan(objective.budget_s, max_batch_size, instances, objective.target_utilization)
        self.admission_batch = 1
        self.lag_allowance_s = 0.0
        self._lag = LoopLag(quantile=objective.percentile / 100)

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
