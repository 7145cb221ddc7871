"""``--assert``: pass/fail conditions over a load test's results, so a run can gate a rollout.

Syntax: comma-separated clauses ``METRIC OP NUMBER[UNIT]``, e.g. ``p99<50ms,errors<0.1%,throughput>1000``.

| metric | meaning | units |
|---|---|---|
| p50, p90, p99, p99.9 (or p999), mean, max | latency of successful requests | ms, s, us (required) |
| throughput | successful requests/s | none or /s |
| rows | rows (inferences)/s | none or /s |
| goodput | requests/s within --slo-ms (needs --slo-ms) | none or /s |
| errors | failed requests: with % a share of completed ones, without a whole-number count | %, none |

OP is one of < <= > >=. Every clause must hold at every load level of the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadtest.results import PointResult

_CLAUSE = re.compile(
    r"^(?P<metric>[a-z][a-z0-9.]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<number>[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?|\.[0-9]+)\s*(?P<unit>ms|us|s|%|/s)?$"
)
_LATENCY = {"p50": "p50", "p90": "p90", "p99": "p99", "p99.9": "p999", "p999": "p999", "mean": "mean", "max": "max"}
_RATES = ("throughput", "rows", "goodput")
_TO_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001}


class CheckSyntaxError(ValueError):
    """An ``--assert`` expression that cannot be parsed; the message says which clause and why."""


@dataclass(frozen=True)
class Check:
    """One parsed clause; ``threshold`` is in the metric's base unit (ms, per second, fraction, count)."""

    text: str
    metric: str  # p50 p90 p99 p999 mean max throughput rows goodput errors error_rate
    op: str
    threshold: float


@dataclass(frozen=True)
class CheckOutcome:
    check: Check
    point: str  # the load level's label
    actual: float
    passed: bool


def parse_checks(expression: str, *, slo_ms: float | None = None) -> list[Check]:
    """Parse an ``--assert`` expression; raises CheckSyntaxError with an actionable message.

    ``slo_ms`` is the run's latency objective: goodput clauses need one.
    """
    if not expression.strip():
        raise CheckSyntaxError("empty --assert expression; example: 'p99<50ms,errors<0.1%'")
    checks = [_parse_clause(c.strip()) for c in expression.split(",")]
    for check in checks:
        if check.metric == "goodput" and slo_ms is None:
            raise CheckSyntaxError(f"{check.text!r}: goodput is measured against a latency objective; add --slo-ms")
    return checks


def _parse_clause(text: str) -> Check:
    if not text:
        raise CheckSyntaxError("empty clause in --assert (two commas in a row, or a trailing comma?)")
    match = _CLAUSE.match(text.lower())
    if match is None:
        raise CheckSyntaxError(
            f"cannot parse {text!r}: expected METRIC OP NUMBER[UNIT] such as 'p99<50ms', 'errors<0.1%' or "
            "'throughput>1000', with OP one of < <= > >="
        )
    metric, op, number, unit = match["metric"], match["op"], float(match["number"]), match["unit"]
    if metric in _LATENCY:
        if unit not in _TO_MS:
            raise CheckSyntaxError(f"{text!r}: a latency needs a unit: ms, s or us (e.g. '{metric}<50ms')")
        return Check(text, _LATENCY[metric], op, number * _TO_MS[unit])
    if metric in _RATES:
        if unit not in (None, "/s"):
            raise CheckSyntaxError(f"{text!r}: {metric} is per second; write a plain number or '/s'")
        return Check(text, metric, op, number)
    if metric == "errors":
        if unit == "%":
            if number > 100:
                raise CheckSyntaxError(f"{text!r}: a percentage cannot exceed 100")
            return Check(text, "error_rate", op, number / 100)
        if unit is None:
            if number != int(number):  # 'errors<0.001' would silently mean "no error at all"
                raise CheckSyntaxError(f"{text!r}: without % errors is a count of failed requests, a whole number; "
                                       f"for a share write a percentage (e.g. 'errors<{number * 100:g}%')")
            return Check(text, "errors", op, number)
        raise CheckSyntaxError(f"{text!r}: errors takes a percentage ('errors<0.1%') or a count ('errors<=0')")
    known = ", ".join([*_LATENCY, *_RATES, "errors"])
    raise CheckSyntaxError(f"{text!r}: unknown metric {metric!r}; known: {known}")


def _actual(check: Check, point: PointResult) -> float:
    if check.metric in ("p50", "p90", "p99", "p999", "mean", "max"):
        return float(getattr(point.latency_ms, check.metric))
    if check.metric == "throughput":
        return point.throughput_rps
    if check.metric == "rows":
        return point.rows_per_s
    if check.metric == "goodput":
        return point.goodput_rps if point.goodput_rps is not None else float("nan")
    if check.metric == "error_rate":
        return point.error_rate
    return float(sum(point.errors.values()))


def format_actual(check: Check, actual: float) -> str:
    """``actual`` in the unit its clause was written in: ms, %, per second or a count."""
    if actual != actual:  # nan: a latency with no successful request, goodput without --slo-ms
        return "not measured"
    if check.metric in _LATENCY.values():
        return f"{actual:,.4g} ms"
    if check.metric == "error_rate":
        return f"{actual * 100:.4g}%"
    if check.metric in _RATES:
        return f"{actual:,.4g}/s"
    return f"{actual:,.0f}"


_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}


def evaluate_checks(checks: list[Check], points: list[PointResult]) -> list[CheckOutcome]:
    """Every check at every point. A point with no successful request fails latency checks."""
    outcomes = []
    for point in points:
        for check in checks:
            actual = _actual(check, point)
            if check.metric in _LATENCY.values() and point.ok == 0:
                actual = float("nan")  # no latency was measured: the clause fails, shown as "not measured"
            passed = _OPS[check.op](actual, check.threshold)  # False for nan
            outcomes.append(CheckOutcome(check, point.label, actual, passed))
    return outcomes
