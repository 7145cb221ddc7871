"""Per model-version inference statistics, in the shape of Triton's ModelStatistics.

Plain counters updated from the event loop (single-threaded, no locks); the
transports read a snapshot. Durations are nanoseconds, as the protocol reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Cumulative statistics of one model version since it was loaded."""

    inference_count: int = 0  # rows inferred (Triton counts batch rows)
    execution_count: int = 0  # kernel runs
    last_inference_ms: int = 0  # wall-clock milliseconds since the epoch
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # answered from the response cache: lookup time
    cache_miss: Duration = field(default_factory=Duration)  # computed after a cache miss: lookup + insert time
    batches: dict[int, BatchStats] = field(default_factory=dict)  # by rows in the batch

    def record_batch(self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One kernel run of ``rows`` rows merged from ``requests`` requests."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        per_batch = self.batches.get(rows)
        if per_batch is None:
            per_batch = self.batches[rows] = BatchStats()
        per_batch.compute_input.add(input_ns)
        per_batch.compute_infer.add(infer_ns)
        per_batch.compute_output.add(output_ns)
        # Triton attributes each request the whole batch's compute time.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
