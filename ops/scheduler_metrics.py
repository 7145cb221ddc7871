"""The scheduler's estimate as gauges: what each model version's batcher currently believes and chose.

Read at scrape time from each handle's ``schedule_estimate`` (a ``batching.config.ScheduleEstimate``,
duck-typed: ops does not import batching). What the numbers mean: batching/README.md.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

SCHEDULER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("intercept", "fleetserve_scheduler_run_time_intercept_seconds",
     "Fitted batch run time at zero rows: run time = intercept + per_row x rows (mean)"),
    ("per_row", "fleetserve_scheduler_run_time_per_row_seconds", "Fitted batch run time per row (mean)"),
    ("margin", "fleetserve_scheduler_run_time_margin_ratio",
     "Relative margin of the run time at the objective's percentile over the mean fit"),
    ("arrivals", "fleetserve_scheduler_arrival_rows_per_second", "Admitted rows per second (latency objective only)"),
    ("offered", "fleetserve_scheduler_offered_rows_per_second",
     "Offered rows per second, admitted or shed (latency objective only)"),
    ("target", "fleetserve_scheduler_target_batch_rows", "The batch the last decision aimed for (0: dispatched at once)"),
    ("wait", "fleetserve_scheduler_wait_seconds", "How long the last decision chose to wait for more rows"),
    ("admission", "fleetserve_scheduler_admission_batch_rows",
     "The batch size admission plans with (latency objective only)"),
    ("budget", "fleetserve_scheduler_budget_seconds",
     "The latency objective minus headroom and loop-lag allowance (latency objective only)"),
    ("lag", "fleetserve_scheduler_loop_lag_allowance_seconds",
     "Taken off the budget for the measured event-loop lag (latency objective only)"),
    ("tail", "fleetserve_scheduler_admission_tail_scale_ratio",
     "Calibrated scale of the run-time tail admission prices; falls while admitted requests meet the objective "
     "(latency objective only)"),
)


def scheduler_families(handles: Iterable[Any], labels: Sequence[str]) -> Iterator[Metric]:
    """Every scheduler gauge family (empty ones too), one sample per handle with an estimate.

    ``handles`` have ``model``, ``version`` and ``schedule_estimate`` (None: not attached)."""
    families = {key: GaugeMetricFamily(name, text, labels=list(labels)) for key, name, text in SCHEDULER_GAUGES}
    for h in handles:
        e = h.schedule_estimate
        if e is None:
            continue
        values: dict[str, float] = {"target": e.target_rows, "wait": e.wait_s}
        if e.curve is not None:
            values.update(intercept=e.curve.intercept_s, per_row=e.curve.per_row_s, margin=e.curve.margin)
        if e.budget_s is not None:
            values.update(arrivals=e.arrival_rows_per_s, offered=e.offered_rows_per_s, admission=e.admission_batch_rows,
                          budget=e.budget_s, lag=e.loop_lag_allowance_s, tail=e.admission_tail_scale)
        for key, value in values.items():
            families[key].add_metric([h.model, h.version], float(value))
    yield from families.values()
