"""``fleetserve plan``: replicas and cores for a target inference rate, from a loadtest result.

The arithmetic, shown step by step in the output:

1. average rate = target / period
2. peak rate = average x peak-to-average factor
3. peak requests/s = peak rate / rows per request
4. capacity of one replica = the highest measured throughput whose p99 meets the objective
   (and whose error rate is at most 0.1%), divided by the number of targets (replicas) the run drove
5. usable per replica = capacity x (1 - headroom)
6. replicas = ceil(peak requests/s / usable per replica)
7. cores = replicas x cores per replica

The planner counts inferences (rows): a request of 8 rows is 8 inferences. It assumes a replica's
request rate is what was measured, i.e. that per-request cost dominates; when production sends
a different number of rows per request than the measurement did, the output says so.
Pure functions (``parse_rate``, ``choose_capacity``, ``make_plan``, ``format_plan``) plus ``main``.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from loadtest.results import LoadtestResult, PointResult

_PERIODS_S = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400, "d": 86400}
_RATE = re.compile(r"^\s*(?P<count>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?:/\s*(?P<period>[a-z]+))?\s*$")
MAX_ERROR_RATE = 0.001


class PlanError(ValueError):
    """The inputs cannot give a plan; the message says what to change."""


def parse_rate(text: str) -> tuple[float, float]:
    """``'1e12/day'`` -> (1e12, 86400): the count and its period in seconds. No unit means per second."""
    match = _RATE.match(text.lower())
    if match is None:
        raise PlanError(f"cannot parse rate {text!r}: expected COUNT[/PERIOD] such as 1e12/day, 5000/s or 2e6/h")
    period = match["period"] or "s"
    if period not in _PERIODS_S:
        raise PlanError(f"rate {text!r}: unknown period {period!r}; use s, min, h or day")
    count = float(match["count"])
    if not 0 < count < math.inf:
        raise PlanError(f"rate {text!r} must be a positive, finite number")
    return count, float(_PERIODS_S[period])


@dataclass(frozen=True)
class PlanInputs:
    target: str  # as given, e.g. "1e12/day"
    peak_to_average: float = 1.0
    p99_ms: float | None = None
    headroom: float = 0.3  # fraction of each replica's measured capacity kept spare
    rows_per_request: int | None = None  # None: as measured
    cores_per_replica: float | None = None  # None: the measuring machine's core count

    def __post_init__(self) -> None:
        parse_rate(self.target)
        for flag, value in (("--peak-to-average", self.peak_to_average), ("--p99-ms", self.p99_ms),
                            ("--headroom", self.headroom), ("--cores-per-replica", self.cores_per_replica)):
            if value is not None and not math.isfinite(value):
                raise PlanError(f"{flag} must be a finite number, got {value}")
        if self.peak_to_average < 1:
            raise PlanError(f"--peak-to-average is peak / average, so >= 1; got {self.peak_to_average}")
        if not 0 <= self.headroom < 1:
            raise PlanError(f"--headroom is the spare fraction of capacity, in [0, 1); got {self.headroom}")
        if self.p99_ms is not None and self.p99_ms <= 0:
            raise PlanError(f"--p99-ms must be positive, got {self.p99_ms}")
        if self.rows_per_request is not None and self.rows_per_request < 1:
            raise PlanError(f"--rows-per-request must be >= 1, got {self.rows_per_request}")
        if self.cores_per_replica is not None and self.cores_per_replica <= 0:
            raise PlanError(f"--cores-per-replica must be positive, got {self.cores_per_replica}")


@dataclass(frozen=True)
class Step:
    what: str
    arithmetic: str
    result: str


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    capacity: PointResult
    peak_requests_per_s: float
    usable_per_replica: float
    replicas: int
    cores: float
    notes: tuple[str, ...]


def choose_capacity(points: Sequence[PointResult], p99_ms: float | None) -> PointResult:
    """The highest-throughput point whose p99 is within ``p99_ms`` and error rate at most 0.1%."""
    ok = [p for p in points if p.ok > 0 and p.error_rate <= MAX_ERROR_RATE]
    meeting = [p for p in ok if p99_ms is None or p.latency_ms.p99 <= p99_ms]
    if not meeting:
        best = min((p.latency_ms.p99 for p in ok), default=None)
        if best is None:
            raise PlanError("no measured load level had a successful request and at most 0.1% errors; "
                            "measure lower load levels")
        raise PlanError(f"no measured load level meets p99 <= {p99_ms:g} ms with <= 0.1% errors (the lowest measured "
                        f"p99 is {best:.1f} ms); measure lower load levels or relax --p99-ms")
    return max(meeting, key=lambda p: p.throughput_rps)


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def _rounded(x: float, down: bool = False) -> float:
    """Positive ``x`` rounded (``down``: down) to what ``_shown`` prints: 2 decimals, or 3 significant digits below 1.

    The replicas are computed from the numbers as shown (a capacity rounded down, the safe way), so
    the arithmetic printed gives the result printed. The epsilon keeps float error
    (325 x (1 - 0.3) = 227.49999999999997) from moving a value down a rounding step.
    """
    scale = 10.0 ** (2 if x >= 1 else 2 - math.floor(math.log10(x)))
    return (math.floor(x * scale * (1 + 1e-12)) if down else round(x * scale)) / scale


def _shown(x: float, whole: bool = False) -> str:
    """A value ``_rounded`` gave, in full; ``whole``: without decimals when it has none."""
    if whole and x == int(x):
        return f"{x:,.0f}"
    return f"{x:,.2f}" if x >= 1 else f"{x:.3g}"


def make_plan(result: LoadtestResult, inputs: PlanInputs) -> Plan:
    count, period_s = parse_rate(inputs.target)
    average = count / period_s
    peak = average * inputs.peak_to_average
    rows = inputs.rows_per_request or result.rows_per_request
    peak_requests = _rounded(peak / rows)
    chosen = choose_capacity(result.points, inputs.p99_ms)
    measured = max(1, len(result.targets))  # a run against N targets (replicas) measured N replicas together
    # Whole requests/s (below 1/s, the 3 significant digits shown), so the arithmetic shown is exact.
    per_replica = chosen.throughput_rps / measured
    capacity = float(math.floor(per_replica)) if per_replica >= 1 else float(f"{per_replica:.3g}")
    usable = _rounded(capacity * (1 - inputs.headroom), down=True)
    # The epsilon keeps float error in a division that comes out whole from adding a replica.
    replicas = math.ceil(peak_requests / usable * (1 - 1e-12))
    cores_each = inputs.cores_per_replica or float(result.host_cpu_count) / measured
    cores = replicas * cores_each
    objective = f"p99 <= {inputs.p99_ms:g} ms" if inputs.p99_ms is not None else "no p99 objective"
    steps = (
        Step("average rate", f"{count:g}".replace("e+", "e") + f" / {period_s:,.0f} s", f"{_n(average)} inferences/s"),
        Step("peak rate", f"{_n(average)} x {inputs.peak_to_average:g} peak-to-average", f"{_n(peak)} inferences/s"),
        Step("peak requests", f"{_n(peak)} / {rows} rows per request", f"{_shown(peak_requests, True)} requests/s"),
        Step("replica capacity", f"best measured level with {objective}: {chosen.label} of {result.label!r} "
             f"(p99 {chosen.latency_ms.p99:.1f} ms)"
             + (f", {_n(chosen.throughput_rps)} requests/s / {measured} replicas measured" if measured > 1 else ""),
             f"{_n(capacity)} requests/s"),
        Step("usable per replica", f"{_n(capacity)} x (1 - {inputs.headroom:g} headroom)", f"{_shown(usable)} requests/s"),
        Step("replicas", f"ceil({_shown(peak_requests, True)} / {_shown(usable)})", f"{replicas:,}"),
        Step("cores", f"{replicas:,} replicas x {cores_each:g} cores", f"{_n(cores)} cores"),
    )
    notes = [
        f"at average load the fleet runs at {average / rows / (replicas * capacity):.0%} of measured "
        f"capacity, at peak {peak_requests / (replicas * capacity):.0%}",
    ]
    if rows != result.rows_per_request:
        notes.append(f"capacity was measured at {result.rows_per_request} row(s)/request and is applied to {rows}: "
                     "this assumes per-request cost dominates; measure with --rows to confirm")
    if chosen.mode == "concurrency" and measured > 1 and chosen.level % measured:
        notes.append(f"{chosen.label} was spread unevenly over {measured} targets (request slots go round-robin), "
                     f"so the capacity per replica is an average of unequal loads; measure multiples of {measured}")
    if not chosen.stable:
        notes.append(f"the chosen level {chosen.label} never reached stable throughput; treat the capacity with care")
    if inputs.cores_per_replica is None:
        notes.append(f"cores per replica = {cores_each:g}, the core count of the machine that was measured"
                     + (f" / {measured} replicas" if measured > 1 else "")
                     + " (server and load generator shared it; set --cores-per-replica for a dedicated server)")
    return Plan(steps, chosen, peak_requests, usable, replicas, cores, tuple(notes))


def format_plan(plan: Plan, source: str = "") -> str:
    width = max(len(s.what) for s in plan.steps)
    arith = max(len(s.arithmetic) for s in plan.steps)
    lines = [f"capacity plan{f' from {source}' if source else ''}:"]
    for i, step in enumerate(plan.steps, 1):
        lines.append(f"{i}. {step.what:<{width}}  {step.arithmetic:<{arith}}  = {step.result}")
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fleetserve plan", description="Replicas and cores for a target rate, from a "
                                "`fleetserve loadtest` result (JSON).")
    p.add_argument("result", type=Path, help="a loadtest result .json")
    p.add_argument("--target", required=True, help="inferences per period: 1e12/day, 2e6/h, 50000/s")
    p.add_argument("--peak-to-average", type=float, default=1.0, help="peak rate / average rate (default 1)")
    p.add_argument("--p99-ms", type=float, help="latency objective: only levels whose p99 meets it count")
    p.add_argument("--headroom", type=float, default=0.3,
                   help="fraction of each replica's measured capacity kept spare (default 0.3)")
    p.add_argument("--rows-per-request", type=int, help="rows per production request (default: as measured)")
    p.add_argument("--cores-per-replica", type=float, help="default: the measured machine's core count")
    args = p.parse_args(argv)
    try:
        inputs = PlanInputs(args.target, args.peak_to_average, args.p99_ms, args.headroom, args.rows_per_request,
                            args.cores_per_replica)
        result = LoadtestResult.load(args.result)
        plan = make_plan(result, inputs)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    print(format_plan(plan, str(args.result)))
    return 0
