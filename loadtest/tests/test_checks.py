"""``--assert`` expressions: parsing (including bad ones, with clear messages) and evaluation."""

import pytest

from loadtest.checks import Check, CheckSyntaxError, evaluate_checks, format_actual, parse_checks
from loadtest.stats import LatencyMs


@pytest.mark.parametrize("text, expected", [
    ("p99<50ms", [Check("p99<50ms", "p99", "<", 50.0)]),
    ("p99.9 <= 0.2s", [Check("p99.9 <= 0.2s", "p999", "<=", 200.0)]),
    ("p999<1500us", [Check("p999<1500us", "p999", "<", 1.5)]),
    ("P50<5MS", [Check("P50<5MS", "p50", "<", 5.0)]),
    ("errors<0.1%", [Check("errors<0.1%", "error_rate", "<", 0.001)]),
    ("errors<=0", [Check("errors<=0", "errors", "<=", 0.0)]),
    ("throughput>1000", [Check("throughput>1000", "throughput", ">", 1000.0)]),
    ("throughput>=1e3/s", [Check("throughput>=1e3/s", "throughput", ">=", 1000.0)]),
    ("rows>5e4", [Check("rows>5e4", "rows", ">", 50000.0)]),
    ("mean<3ms, max < 1s", [Check("mean<3ms", "mean", "<", 3.0), Check("max < 1s", "max", "<", 1000.0)]),
    ("p99<50ms,errors<0.1%,throughput>1000", [
        Check("p99<50ms", "p99", "<", 50.0), Check("errors<0.1%", "error_rate", "<", 0.001),
        Check("throughput>1000", "throughput", ">", 1000.0)]),
])
def test_parse(text, expected):
    assert parse_checks(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty --assert"),
    ("p99<50ms,", "empty clause"),
    ("p99<<50ms", "cannot parse 'p99<<50ms'"),
    ("p99=50ms", "cannot parse"),
    ("p99<fast", "cannot parse"),
    ("p99<50", "a latency needs a unit"),
    ("p99<50%", "a latency needs a unit"),
    ("throughput>10ms", "throughput is per second"),
    ("errors<5ms", "errors takes a percentage"),
    ("errors<101%", "cannot exceed 100"),
    ("errors<0.001", "a whole number; for a share write a percentage .e.g. 'errors<0.1%'."),  # not "no error"
    ("errors<=2.5", "a count of failed requests, a whole number"),
    ("p98<5ms", "unknown metric 'p98'"),
    ("latency<5ms", "known: p50, p90"),
    ("goodput>100", "add --slo-ms"),
])
def test_bad_expressions_say_what_is_wrong(text, message):
    with pytest.raises(CheckSyntaxError, match=message.replace("(", r"\(").replace("'", "'")):
        parse_checks(text)


def test_goodput_is_accepted_with_an_slo():
    assert parse_checks("goodput>100", slo_ms=20) == [Check("goodput>100", "goodput", ">", 100.0)]


def test_every_clause_is_checked_at_every_level(make_point):
    fast = make_point(level=1.0, latency_ms=LatencyMs(1, 2, 3, 4, 1, 5), throughput_rps=500.0)
    slow = make_point(level=64.0, latency_ms=LatencyMs(40, 60, 80, 90, 45, 95), throughput_rps=2000.0,
                      errors={"RESOURCE_EXHAUSTED": 10}, error_rate=0.01)
    outcomes = evaluate_checks(parse_checks("p99<50ms,errors<0.1%,throughput>=500,errors<=10"), [fast, slow])
    table = [(o.point, o.check.text, o.actual, o.passed) for o in outcomes]
    assert table == [
        ("c=1", "p99<50ms", 3.0, True), ("c=1", "errors<0.1%", 0.0, True), ("c=1", "throughput>=500", 500.0, True),
        ("c=1", "errors<=10", 0.0, True),
        ("c=64", "p99<50ms", 80.0, False), ("c=64", "errors<0.1%", 0.01, False),
        ("c=64", "throughput>=500", 2000.0, True), ("c=64", "errors<=10", 10.0, True),
    ]


def test_a_level_without_successes_fails_latency_checks(make_point):
    dead = make_point(ok=0, requests=10, latency_ms=LatencyMs(0, 0, 0, 0, 0, 0), errors={"UNAVAILABLE": 10},
                      error_rate=1.0)
    [outcome] = evaluate_checks(parse_checks("p99<50ms"), [dead])
    assert not outcome.passed


def test_goodput_without_a_measured_goodput_fails(make_point):
    [outcome] = evaluate_checks(parse_checks("goodput>1", slo_ms=5), [make_point(goodput_rps=None)])
    assert not outcome.passed


def test_actual_values_are_shown_in_the_clauses_units(make_point):
    slow = make_point(latency_ms=LatencyMs(40, 60, 80.5, 90, 45, 95), throughput_rps=2000.0, errors={"INTERNAL": 75},
                      error_rate=0.1216, goodput_rps=None)
    dead = make_point(ok=0, latency_ms=LatencyMs(0, 0, 0, 0, 0, 0), error_rate=1.0)
    checks = parse_checks("p99<50ms,errors<0.1%,errors<=0,throughput>1,goodput>1", slo_ms=5)
    shown = [format_actual(o.check, o.actual) for o in evaluate_checks(checks, [slow])]
    assert shown == ["80.5 ms", "12.16%", "75", "2,000/s", "not measured"]
    [latency] = evaluate_checks(checks[:1], [dead])
    assert not latency.passed and format_actual(latency.check, latency.actual) == "not measured"  # not "0 ms"
