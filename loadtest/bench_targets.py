"""Issue 5's targets: ratios of loads measured side by side in one ``fleetserve bench`` run.

Each ratio target is the median over rounds of each round's ratio, so a slow minute on a shared
machine, which lowers both sides of one round's ratio, moves the verdict less. The loads may come
from the harness or from perf_analyzer: the targets read only what ``Measured`` names.
"""

from __future__ import annotations

import statistics
from typing import Protocol, Sequence, TypeVar

from loadtest.targets import Target


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


class Measured(Protocol):
    """What the targets read of a load, whichever load generator drove it."""

    @property
    def name(self) -> str: ...
    @property
    def round(self) -> int: ...
    @property
    def throughput_rps(self) -> float: ...
    @property
    def rows_per_s(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...


M = TypeVar("M", bound=Measured)


def by_name(loads: Sequence[M]) -> dict[str, list[M]]:
    """Each load's measurements, in round order."""
    out: dict[str, list[M]] = {}
    for load in loads:
        out.setdefault(load.name, []).append(load)
    return out


def median_load(measured: list[M]) -> M:
    """The measurement with the median throughput (the lower middle one of an even count)."""
    ordered = sorted(measured, key=lambda load: load.throughput_rps)
    return ordered[(len(ordered) - 1) // 2]


def _round_ratios(loads: dict[str, list[M]], top: str, bottom: str) -> list[float]:
    """``top`` / ``bottom`` throughput within each round both were measured in."""
    under = {load.round: load.throughput_rps for load in loads[bottom]}
    return [_ratio(load.throughput_rps, under[load.round]) for load in loads[top] if load.round in under]


def evaluate_targets(loads: Sequence[Measured], inprocess_best: float, rss_mb: float | None,
                     driver: str = "") -> list[Target]:
    """Issue 5's targets as ratios measured side by side: the median over rounds of each round's ratio.

    ``driver`` names the load generator in each target's name when it is not the harness."""
    named = by_name(loads)
    suffix = f", {driver}" if driver else ""

    def ratio_target(name: str, top: str, bottom: str, needed: float, extra: str = "", ok: bool = True) -> Target:
        ratios = _round_ratios(named, top, bottom)
        r = statistics.median(ratios) if ratios else 0.0
        detail = ", ".join(f"{x:.2f}" for x in ratios)
        detail = (f"rounds {detail}" if len(ratios) > 1 else "") + (f"; {extra}" if extra and len(ratios) > 1 else extra)
        return Target(name + suffix, r, needed, r >= needed and ok, detail)

    targets = [
        ratio_target("tiny unary / bare unary (c=64)", "tiny unary c=64", "bare unary c=64", 0.8),
        ratio_target("tiny stream / bare stream (c=64)", "tiny stream c=64", "bare stream c=64", 0.7),
    ]
    for transport in ("unary", "stream"):
        mlp = median_load(named[f"mlp {transport} c=64"])
        tail = _ratio(mlp.p99_ms, mlp.p50_ms)
        targets.append(ratio_target(f"mlp {transport} / tiny {transport} (c=64), p99 < 3x p50", f"mlp {transport} c=64",
                                    f"tiny {transport} c=64", 0.75, f"p99/p50 = {tail:.2f}", tail < 3))
    rows = median_load(named["mlp 64-row unary c=8"]).rows_per_s
    targets.append(Target("mlp 64-row rows/s / in-process best" + suffix, r := _ratio(rows, inprocess_best), 0.8,
                          r >= 0.8, ""))
    if rss_mb is not None:
        targets.append(Target("server resident memory (MB) <", rss_mb, 400, rss_mb < 400, "after the loads"))
    return targets
