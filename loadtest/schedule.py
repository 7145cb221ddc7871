"""Open-loop arrival schedules, precomputed before a run so sending never waits on randomness.

A schedule is an array of send offsets in seconds from the start of a load point. Gaps between
arrivals are exponential (a Poisson process) or, with ``burstiness`` != 1, gamma-distributed with
the same mean (as vLLM's benchmark does): burstiness < 1 is burstier than Poisson, > 1 smoother.
The generator is seeded, so a recorded seed reproduces the exact schedule. Pure numpy; no I/O.
"""

from __future__ import annotations

import math

import numpy as np


def arrival_rng(seed: int, point: int, process: int) -> np.random.Generator:
    """The generator of one process's schedule at one load point: independent streams, one recorded seed."""
    return np.random.default_rng([seed, point, process])


def poisson_arrivals(
    rate_per_s: float,
    duration_s: float,
    rng: np.random.Generator,
    *,
    burstiness: float = 1.0,
    max_count: int | None = None,
) -> np.ndarray:
    """Arrival offsets (float64 seconds, increasing, all < ``duration_s``) at mean rate ``rate_per_s``.

    Raises ValueError for a non-positive rate, duration or burstiness.
    """
    if rate_per_s <= 0 or not math.isfinite(rate_per_s):
        raise ValueError(f"arrival rate must be a positive number, got {rate_per_s}")
    if duration_s <= 0:
        raise ValueError(f"schedule duration must be positive, got {duration_s}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be positive (1 is Poisson), got {burstiness}")
    expected = rate_per_s * duration_s
    # Enough gaps that running short is very unlikely (mean + 8 sd), topped up below if it happens.
    chunk = int(expected + 8 * math.sqrt(expected) + 16)
    parts: list[np.ndarray] = []
    last = 0.0
    while last < duration_s:
        gaps = rng.gamma(burstiness, 1.0 / (rate_per_s * burstiness), chunk)
        times = last + np.cumsum(gaps)
        parts.append(times)
        last = float(times[-1])
        if max_count is not None and sum(len(p) for p in parts) >= max_count:
            break
    arrivals = np.concatenate(parts)
    arrivals = arrivals[arrivals < duration_s]
    return arrivals[:max_count] if max_count is not None else arrivals
