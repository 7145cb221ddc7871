"""Capacity planning arithmetic: pure functions, and the command's output."""

import math
import re
from decimal import Decimal

import pytest

from loadtest.plan import PlanError, PlanInputs, choose_capacity, format_plan, main, make_plan, parse_rate
from loadtest.stats import LatencyMs


@pytest.mark.parametrize("text, expected", [
    ("1e12/day", (1e12, 86400.0)),
    ("5000/s", (5000.0, 1.0)),
    ("5000", (5000.0, 1.0)),
    ("2e6/h", (2e6, 3600.0)),
    ("3.5e3 / min", (3500.0, 60.0)),
    ("1E12/DAY", (1e12, 86400.0)),
])
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lots/day", "cannot parse"), ("1e12/week", "unknown period 'week'"), ("0/s", "positive"), ("-5/s", "cannot parse"),
    ("1e400/day", "finite"),
])
def test_bad_rates(text, message):
    with pytest.raises(PlanError, match=message):
        parse_rate(text)


@pytest.fixture
def measured(make_result, make_point):
    return make_result([
        make_point(level=8.0, throughput_rps=3000.0, latency_ms=LatencyMs(2, 4, 8, 9, 2, 10)),
        make_point(level=32.0, throughput_rps=4000.0, latency_ms=LatencyMs(6, 12, 20, 25, 7, 30)),
        make_point(level=64.0, throughput_rps=5000.0, latency_ms=LatencyMs(12, 30, 60, 80, 14, 90)),
        make_point(level=128.0, throughput_rps=6000.0, latency_ms=LatencyMs(20, 30, 40, 45, 21, 50),
                   errors={"RESOURCE_EXHAUSTED": 500}, error_rate=0.05),
    ])


@pytest.mark.parametrize("p99_ms, level", [(None, 64.0), (100, 64.0), (50, 32.0), (20, 32.0), (10, 8.0)])
def test_capacity_is_the_highest_error_free_throughput_meeting_the_p99(measured, p99_ms, level):
    assert choose_capacity(measured.points, p99_ms).level == level


def test_no_level_meeting_the_objective_is_an_error(measured):
    with pytest.raises(PlanError, match="lowest measured p99 is 8.0 ms"):
        choose_capacity(measured.points, 5)


def test_no_level_without_errors_says_so_without_an_objective(make_result, make_point):
    failing = make_result([make_point(errors={"INTERNAL": 10}, error_rate=0.01)])
    with pytest.raises(PlanError, match="no measured load level had a successful request") as raised:
        choose_capacity(failing.points, None)
    assert "None" not in str(raised.value)


def test_replicas_are_the_ceiling_of_the_arithmetic_shown(make_result, make_point):
    # 325 x (1 - 0.3) is 227.49999999999997 in floating point: 2,275 / it must still be 10 replicas, not 11.
    result = make_result([make_point(throughput_rps=325.4)])
    plan = make_plan(result, PlanInputs("2275/s", headroom=0.3))
    assert plan.replicas == 10
    assert "ceil(2,275 / 227.50)" in format_plan(plan) and "= 10\n" in format_plan(plan)


def test_a_replica_slower_than_one_request_a_second(make_result, make_point):
    result = make_result([make_point(throughput_rps=0.6, rows_per_s=0.6)])
    plan = make_plan(result, PlanInputs("86400/day", headroom=0.5))  # 1/s; 0.3/s usable per replica
    assert plan.usable_per_replica == pytest.approx(0.3) and plan.replicas == 4
    assert "= 0.6 requests/s" in format_plan(plan)


def test_one_trillion_a_day(measured):
    plan = make_plan(measured, PlanInputs("1e12/day", peak_to_average=3, p99_ms=50, headroom=0.3))
    average = 1e12 / 86400  # 11,574,074 /s
    peak = average * 3  # 34,722,222 /s
    usable = 4000 * 0.7  # c=32 meets p99 50 ms: 2,800 /s each
    assert plan.peak_requests_per_s == pytest.approx(peak)
    assert plan.usable_per_replica == pytest.approx(usable)
    assert plan.replicas == math.ceil(peak / usable) == 12401
    assert plan.cores == 12401 * 2  # the measuring machine's 2 cores
    text = format_plan(plan)
    assert "11,574,074 inferences/s" in text and "34,722,222 inferences/s" in text
    assert "ceil(34,722,222.22 / 2,800.00)" in text and "= 12,401" in text and "24,802 cores" in text


@pytest.mark.parametrize("target, throughput, headroom", [
    ("1110.4/s", 111.0, 0.0),  # 1,110.4 / 111 is 10.004: shown as "1,110 / 111.00" it read as 10
    ("50.04/s", 5.0, 0.0),  # shown as "50 / 5.00"
    ("4e6/h", 333.0, 0.333),  # 1,111.11 / 222.11 (333 x 0.667 = 222.111, counted as the 222.11 shown)
    ("86.4/day", 0.0123, 0.5),  # below one request a second on both sides
])
def test_the_replicas_shown_are_the_ceiling_of_the_numbers_shown(make_result, make_point, target, throughput, headroom):
    plan = make_plan(make_result([make_point(throughput_rps=throughput)]), PlanInputs(target, headroom=headroom))
    text = format_plan(plan)
    requests, usable, replicas = re.search(r"ceil\(([0-9.,]+) / ([0-9.,]+)\) += ([0-9,]+)", text).groups()
    exact = Decimal(requests.replace(",", "")) / Decimal(usable.replace(",", ""))
    assert int(replicas.replace(",", "")) == plan.replicas == math.ceil(exact)
    assert f"= {requests} requests/s" in text and f"= {usable} requests/s" in text
    assert plan.replicas >= math.ceil(parse_rate(target)[0] / parse_rate(target)[1] / (throughput * (1 - headroom)) - 1e-9)


def test_rows_per_request_and_cores_per_replica(measured):
    plan = make_plan(measured, PlanInputs("86400000/day", rows_per_request=10, cores_per_replica=4, headroom=0))
    # 1,000 inferences/s = 100 requests/s of 10 rows; capacity 5,000 requests/s -> 1 replica of 4 cores
    assert (plan.peak_requests_per_s, plan.replicas, plan.cores) == (100.0, 1, 4.0)
    assert any("measured at 1 row(s)/request" in note for note in plan.notes)


def test_a_run_against_several_replicas_is_divided_among_them(measured):
    import dataclasses

    two = dataclasses.replace(measured, targets=["127.0.0.1:8001", "127.0.0.1:8011"])
    plan = make_plan(two, PlanInputs("1e12/day", peak_to_average=3, p99_ms=50, headroom=0.3))
    # c=32 meets p99 50 ms: 4,000 requests/s from 2 replicas = 2,000 each, 1,400 usable; 1 core each of 2
    assert plan.usable_per_replica == pytest.approx(1400)
    assert plan.replicas == math.ceil(1e12 / 86400 * 3 / 1400) and plan.cores == plan.replicas * 1.0
    assert "4,000 requests/s / 2 replicas measured" in format_plan(plan)


def test_a_level_spread_unevenly_over_the_targets_is_noted(measured):
    import dataclasses

    three = dataclasses.replace(measured, targets=["127.0.0.1:8001", "127.0.0.1:8011", "127.0.0.1:8021"])
    plan = make_plan(three, PlanInputs("1e6/s", p99_ms=50))  # c=32: 11, 11 and 10 slots
    assert any("c=32 was spread unevenly over 3 targets" in note for note in plan.notes)
    two = dataclasses.replace(measured, targets=["127.0.0.1:8001", "127.0.0.1:8011"])
    assert not any("unevenly" in note for note in make_plan(two, PlanInputs("1e6/s", p99_ms=50)).notes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(peak_to_average=0.5), "peak-to-average"), (dict(headroom=1.0), "headroom"), (dict(headroom=-0.1), "headroom"),
    (dict(p99_ms=0), "p99-ms"), (dict(rows_per_request=0), "rows-per-request"), (dict(cores_per_replica=0), "cores"),
    (dict(peak_to_average=math.nan), "peak-to-average"), (dict(p99_ms=math.nan), "p99-ms"),
    (dict(cores_per_replica=math.inf), "cores"),
])
def test_bad_inputs(kwargs, message):
    with pytest.raises(PlanError, match=message):
        PlanInputs("1e6/s", **kwargs)


def test_command(measured, tmp_path, capsys):
    path = measured.save(tmp_path / "r.json")
    assert main([str(path), "--target", "1e12/day", "--peak-to-average", "3", "--p99-ms", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"capacity plan from {path}:") and "7. cores" in out
    with pytest.raises(SystemExit):
        main([str(path), "--target", "1e12/fortnight"])
    assert "unknown period" in capsys.readouterr().err
