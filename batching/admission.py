"""Admission under a latency objective: shed at submit what is predicted to miss, with probes.

``SloAdmission.admit`` sheds a request predicted to miss the model's objective (``QueueFull``) or its
own deadline (``DeadlineExceeded``), from the run-time fit and the queue ahead of it
(``predicted_latency``, batching/slo.py). With no fit yet, it queues at most ``COLD_BATCHES`` full
batches per instance.

Probes: the estimate learns only from batches that run. A stall (a noisy neighbour, a pause) can
inflate it so far that even a lone request on an idle instance is predicted to miss; every request
is then shed, nothing runs, and without a probe the model would shed forever. So an idle model
(nothing queued or running) that has seen no batch for ``PROBE_EVERY_S`` admits one request: at
most one miss a second when the objective is truly out of reach, and a fresh measurement when it is
not. A probe answered within the budget shows the estimate too pessimistic: the next lone request on
an idle model is then a probe at once, not a second later, so the estimate (hundreds of batches in
its windows) relearns at the rate lone requests come, not at one batch a second, which held a light
load to one request a second for 20 seconds and more after a burst (batching/README.md).

Loop-bound, like its batcher. Must not import server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from batching.estimate import RunTimeCurve
from batching.planner import SloPlanner
from batching.slo import LatencyObjective, predicted_latency
from ops.errors import DeadlineExceeded, QueueFull

COLD_BATCHES = 1  # with an objective but no run-time estimate yet, admit this many full batches per instance
PROBE_EVERY_S = 1.0  # an idle model whose estimate sheds even a lone request admits one this often


class SloAdmission:
    """See the module docstring. ``name`` labels error messages."""

    def __init__(self, name: str, objective: LatencyObjective, planner: SloPlanner) -> None:
        self.name = name
        self.objective = objective
        self.planner = planner
        self._last_run_at = -math.inf  # last run-time observation or probe
        self._probe_entry: Any = None  # the probe admitted last (a queue entry), until it is answered
        self._probe_met = False  # whether the last probe answered was within the budget

    def admit(self, now: float, curve: RunTimeCurve | None, ahead: int, rows: int, busy_s: float, idle: bool,
              deadline: float | None) -> bool:
        """Raise for a request to shed; else whether it is admitted only as a probe (then pass its queue entry
        to ``probe_queued``). ``ahead``: rows queued ahead of it; ``busy_s``: until an instance frees up;
        ``idle``: nothing queued or running."""
        planner = self.planner
        plan = planner.plan
        if curve is None:
            if ahead + rows > COLD_BATCHES * plan.max_batch_size * plan.instances:
                raise QueueFull(
                    f"{self.name}: the request cannot be admitted yet: the scheduler is still measuring the model's "
                    f"run time against its latency objective and queues at most {COLD_BATCHES} batches per instance "
                    "meanwhile; retry shortly"
                )
            return False
        predicted = predicted_latency(plan, curve, ahead, rows, busy_s, planner.admission_batch, planner.tail_scale)
        probe = predicted > plan.budget_s
        if probe and not self._probe(now, idle):
            objective = self.objective
            if ahead or busy_s:
                why = f"with {ahead} rows queued ahead it would take about {predicted * 1e3:.1f} ms"
            else:  # the model alone is over the budget: the objective, or a stall the estimate still holds
                why = (f"even alone on an idle instance it would take about {predicted * 1e3:.1f} ms, more than the "
                       f"{plan.budget_s * 1e3:.1f} ms the objective leaves the scheduler (raise latency_slo_ms if "
                       "this lasts; one request a second still runs, to measure the model again)")
            raise QueueFull(
                f"{self.name}: the request cannot meet the model's latency objective of "
                f"{objective.latency_s * 1e3:g} ms (p{objective.percentile:g}): {why}; it was not queued, "
                "retry later or elsewhere"
            )
        if deadline is not None and now + predicted > deadline:
            raise DeadlineExceeded(
                f"{self.name}: the request cannot finish before its deadline ({(deadline - now) * 1e3:.1f} ms left, "
                f"about {predicted * 1e3:.1f} ms needed); it was not queued"
            )
        return probe

    def _probe(self, now: float, idle: bool) -> bool:
        """Whether to admit, as a probe, a request predicted to miss the objective (then it starts the probe)."""
        if not idle or (now - self._last_run_at < PROBE_EVERY_S and not self._probe_met):
            return False
        self._last_run_at = now
        self._probe_met = False
        return True

    def probe_queued(self, entry: Any) -> None:
        self._probe_entry = entry

    def settled(self, now: float, batch: Sequence[Any], ok: bool) -> None:
        """A batch finished (``ok``: with results): if it held the probe, note whether it met the budget."""
        probe = self._probe_entry
        if probe is not None and probe in batch:
            self._probe_entry = None
            self._probe_met = ok and now - probe.enqueued_at <= self.planner.plan.budget_s

    def observed(self, now: float) -> None:
        """A run time was measured: the estimate is fresh, no probe is due for ``PROBE_EVERY_S``."""
        self._last_run_at = now
