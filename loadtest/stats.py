"""Statistics of a load point: latency percentiles, error counts by status, goodput, stability.

Pure functions over numpy arrays of what the load generator recorded per completed request:
completion time and latency in integer nanoseconds, and an outcome code (0 = OK, gRPC's
canonical codes 1-16, HTTP statuses as ``HTTP_BASE`` + status, and two of ours: a per-request
error inside a stream, and an open-loop arrival dropped by the client because too many requests
were already in flight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

OK = 0
STREAM_ERROR = 100  # ModelStreamInferResponse.error_message set: the stream carries no status code
DROPPED = 101  # open loop: the client's in-flight cap was reached, the arrival was never sent
HTTP_BASE = 1000  # HTTP transports: a status other than 200 is recorded as HTTP_BASE + status
# gRPC's canonical status codes (grpc.StatusCode), by number.
_GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
CODE_NAMES: dict[int, str] = {i: name for i, name in enumerate(_GRPC_CODES)}
CODE_NAMES[STREAM_ERROR] = "STREAM_ERROR"
CODE_NAMES[DROPPED] = "CLIENT_DROPPED"

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class LatencyMs:
    """Latency of successful requests in milliseconds; all zero when there were none."""

    p50: float
    p90: float
    p99: float
    p999: float
    mean: float
    max: float


def percentile(values: np.ndarray, q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q``% of values at or below it."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    k = _rank(len(values), q)
    return float(np.partition(np.asarray(values), k)[k])


def _rank(n: int, q: float) -> int:
    """0-based index of the nearest-rank ``q``th percentile of ``n`` sorted values."""
    # The epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) from skipping a rank.
    return max(1, math.ceil(q * n / 100 - 1e-9)) - 1


def latency_ms(latencies_ns: np.ndarray) -> LatencyMs:
    """Percentiles, mean and max of ``latencies_ns`` (any integer or float array), in ms."""
    if len(latencies_ns) == 0:
        return LatencyMs(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    values = np.sort(np.asarray(latencies_ns, dtype=np.float64)) / 1e6
    p50, p90, p99, p999 = (float(values[_rank(len(values), q)]) for q in PERCENTILES)
    return LatencyMs(p50, p90, p99, p999, float(values.mean()), float(values[-1]))


def code_name(code: int) -> str:
    """A recorded outcome's name: gRPC's status name, "HTTP 503", or one of ours."""
    if HTTP_BASE <= code < HTTP_BASE + 1000:
        return f"HTTP {code - HTTP_BASE}"
    return CODE_NAMES.get(code, f"CODE_{code}")


def count_errors(codes: np.ndarray) -> dict[str, int]:
    """Failed requests by status name (OK excluded), sorted by name."""
    codes = np.asarray(codes)
    found, counts = np.unique(codes[codes != OK], return_counts=True)
    by_name = {code_name(int(c)): int(n) for c, n in zip(found, counts)}
    return dict(sorted(by_name.items()))


def goodput_rps(latencies_ns: np.ndarray, codes: np.ndarray, slo_ms: float, duration_s: float) -> float:
    """Requests per second that succeeded within ``slo_ms``."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    good = (np.asarray(codes) == OK) & (np.asarray(latencies_ns) <= slo_ms * 1e6)
    return float(np.count_nonzero(good)) / duration_s


def is_stable(window_rps: Sequence[float], windows: int, tolerance: float) -> bool:
    """Whether the last ``windows`` throughputs are all within ``tolerance`` (a fraction) of their mean."""
    if windows < 1:
        raise ValueError(f"stable window count must be >= 1, got {windows}")
    if len(window_rps) < windows:
        return False
    last = window_rps[-windows:]
    mean = sum(last) / windows
    return mean > 0 and all(abs(x - mean) <= tolerance * mean for x in last)
