"""The batcher's configuration and its observable state: plain frozen dataclasses.

Must not import server, kernels, model_store, grpc or numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batching.estimate import RunTimeCurve
from batching.policy import BatchPolicy
from batching.queues import QueuePolicy
from batching.slo import LatencyObjective


@dataclass(frozen=True)
class BatcherConfig:
    """A model's scheduling: batching knobs, priority levels, ordering, and an optional latency objective.

    With ``objective`` set, the objective decides when to dispatch and
    ``policy.max_queue_delay_s`` and ``policy.preferred_batch_sizes`` are not used.
    """

    policy: BatchPolicy = field(default_factory=BatchPolicy)
    max_queue_size: int = 1024  # the one level's bound when ``levels`` is empty
    max_concurrent_batches: int = 1
    levels: tuple[QueuePolicy, ...] = ()  # one per priority level, level 1 first; empty: one level
    default_priority: int = 1  # the level of requests that give priority 0
    aging_s: float = 1.0  # anti-starvation bound (batching/queues.py); 0: strict priority
    preserve_ordering: bool = False
    objective: LatencyObjective | None = None
    # True: a batch's run time is timed here, dispatch to results. False: the owner reports it with
    # ``record_run_time`` (e.g. the kernel's own compute time, which event-loop lag does not inflate).
    measure_run_time: bool = True

    def __post_init__(self) -> None:
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be >= 1, got {self.max_concurrent_batches}")
        if not 1 <= self.default_priority <= len(self.queue_policies()):
            raise ValueError(f"default_priority must be in 1..{len(self.queue_policies())}, got {self.default_priority}")

    def queue_policies(self) -> tuple[QueuePolicy, ...]:
        return self.levels or (QueuePolicy(max_queue_size=self.max_queue_size),)


@dataclass(frozen=True)
class ScheduleEstimate:
    """What the scheduler currently believes and chose; read-only, for metrics and logs."""

    curve: RunTimeCurve | None  # batch run time vs rows; None until a few batches ran
    target_rows: int  # the batch the last decision aimed for (0: dispatched without waiting)
    wait_s: float  # how long the last decision chose to wait
    # objective mode only (batching/planner.py), else these defaults:
    arrival_rows_per_s: float = 0.0  # admitted rows per second
    offered_rows_per_s: float = 0.0  # rows per second offered, admitted or shed
    admission_batch_rows: int = 0  # the batch size admission plans with
    budget_s: float | None = None  # the objective minus headroom and loop-lag allowance
    loop_lag_allowance_s: float = 0.0  # taken off the budget for the measured event-loop lag
    admission_tail_scale: float = 1.0  # the calibrated scale of the run-time tail admission prices

    def describe(self) -> str:
        """One line for the DEBUG log (batching/README.md shows one)."""
        c = self.curve
        fit = (f"batch run time {c.intercept_s * 1e3:.3f} ms + {c.per_row_s * 1e3:.4f} ms/row, "
               f"+{c.margin * 100:.0f}% margin ({c.samples} batches)" if c is not None else "no run-time fit yet")
        return (f"{fit}; arrivals {self.arrival_rows_per_s:.0f} rows/s admitted of {self.offered_rows_per_s:.0f} "
                f"offered; last decision: target {self.target_rows} "
                f"rows, wait {self.wait_s * 1e3:.2f} ms; admission plans {self.admission_batch_rows}-row batches; "
                f"loop lag allowance {self.loop_lag_allowance_s * 1e3:.2f} ms; "
                f"admission tail x{self.admission_tail_scale:.2f}")
