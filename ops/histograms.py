"""The histograms behind fleetserve's metrics, and their bucket configuration.

``Histogram`` keeps bucket counts of integer observations (nanoseconds or rows) in a plain list: a
``bisect`` and two integer additions per observation, no lock (loop-bound), exported as a
Prometheus histogram family when scraped (ops/metrics.py). ``MetricsConfig`` holds the bucket
bounds (checked at construction: ``bucket_problem``) and whether to add prometheus_client's
process collectors.

Imports prometheus_client only.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

DEFAULT_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
DEFAULT_BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_LOAD_BUCKETS_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def bucket_problem(bounds: Sequence[float]) -> str | None:
    """Why ``bounds`` cannot be a histogram's bucket bounds, or None."""
    if not bounds:
        return "give at least one bucket bound"
    if any(not math.isfinite(b) or b <= 0 for b in bounds):
        return f"bucket bounds must be positive and finite, got {list(bounds)}"
    if any(b >= c for b, c in zip(bounds, bounds[1:])):
        return f"bucket bounds must be strictly increasing, got {list(bounds)}"
    return None


def _check_buckets(name: str, bounds: Sequence[float]) -> None:
    problem = bucket_problem(bounds)
    if problem:
        raise ValueError(f"{name}: {problem}")


@dataclass(frozen=True)
class MetricsConfig:
    """Histogram buckets (upper bounds; +Inf is implied) and which standard collectors to add."""

    latency_buckets_s: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS_S  # request, queue and compute durations
    batch_size_buckets: tuple[float, ...] = DEFAULT_BATCH_SIZE_BUCKETS  # rows per kernel run
    load_buckets_s: tuple[float, ...] = DEFAULT_LOAD_BUCKETS_S  # model version load durations
    process_metrics: bool = True  # process_* and python_* from prometheus_client

    def __post_init__(self) -> None:
        _check_buckets("latency buckets", self.latency_buckets_s)
        _check_buckets("batch size buckets", self.batch_size_buckets)
        _check_buckets("load buckets", self.load_buckets_s)


class Histogram:
    """Bucket counts of integer observations (nanoseconds or rows). Loop-bound; see the module docstring."""

    __slots__ = ("_bounds", "_labels", "_scale", "counts", "sum")

    def __init__(self, bounds: Sequence[float], scale: int = 1) -> None:
        """``bounds`` in exported units; observations are ``scale`` times finer (ns for seconds)."""
        self._bounds = [round(b * scale) for b in bounds]
        self._labels = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._scale = scale
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def export(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        counts = self.counts[:]  # one atomic copy: the cumulative counts below stay consistent
        total = self.sum
        buckets, running = [], 0
        for le, count in zip(self._labels, counts):
            running += count
            buckets.append((le, running))
        family.add_metric(labels, buckets, total / self._scale)
