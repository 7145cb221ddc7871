"""SLO-driven dispatch and admission: pure functions, tables of cases.

The curve is 2 ms + 0.1 ms per row; the budget 20 ms; at most 64 rows.
"""

import pytest

from batching.estimate import RunTimeCurve
from batching.policy import Decision
from batching.slo import (
    LatencyObjective,
    SloPlan,
    batch_rows,
    decide_slo,
    predicted_latency,
    rows_needed,
    rows_reachable,
)

CURVE = RunTimeCurve(0.002, 0.0001)
SLOW = RunTimeCurve(0.002, 0.0001, margin=1.0)  # the same curve at a quantile twice the mean
PLAN = SloPlan(budget_s=0.020, max_batch_size=64, instances=1, target_utilization=0.5)
GUESS = RunTimeCurve(0.0, 0.006, identified=False)  # 6 ms per row, through the origin: a 1-row mean
PLAN_GUESS = SloPlan(budget_s=0.020, max_batch_size=64)
TWO = SloPlan(budget_s=0.020, max_batch_size=64, instances=2, target_utilization=0.5)
approx = pytest.approx


@pytest.mark.parametrize(
    "plan, curve, queued, oldest_wait, rate, expected",
    [
        (PLAN, CURVE, 0, 0.0, 1000.0, Decision()),  # nothing queued
        (PLAN, None, 5, 0.0, 1000.0, Decision(rows=5)),  # no estimate yet: dispatch what is there
        (PLAN, None, 100, 0.0, 1000.0, Decision(rows=64)),  # ... up to max_batch_size
        (PLAN, CURVE, 10, 0.019, 1000.0, Decision(rows=10)),  # the oldest is late anyway: clear the backlog
        (PLAN, CURVE, 100, 0.019, 1000.0, Decision(rows=64)),
        (PLAN, CURVE, 70, 0.010, 1000.0, Decision(rows=64)),  # more than a full batch fits: a full batch
        (PLAN, CURVE, 40, 0.015, 1000.0, Decision(rows=40)),  # no room left to wait: go; a backlog is never shrunk
        (PLAN, SLOW, 50, 0.0, 1000.0, Decision(rows=46)),  # never more than the planned batch (batch_rows)
        (PLAN, CURVE, 1, 0.0, 100.0, Decision(rows=1)),  # light load: a batch of 1 keeps up, go now
        (PLAN, CURVE, 1, 0.0, 0.0, Decision(rows=1)),  # no arrivals expected: go now
        # 2000 rows/s needs 14-row batches to stay half busy: wait 6 ms for 12 more rows
        (PLAN, CURVE, 2, 0.0, 2000.0, Decision(wait_s=approx(0.006), wake_rows=14)),
        (PLAN, CURVE, 14, 0.0, 2000.0, Decision(rows=14)),  # the target is queued: go
        # the oldest already waited 15 ms: only 6 rows can still be gathered and run in time
        (PLAN, CURVE, 2, 0.015, 2000.0, Decision(wait_s=approx(0.002), wake_rows=6)),
        # a wide run-time spread leaves less room: after 10 ms only 10 rows can still be gathered and run
        (PLAN, SLOW, 2, 0.010, 2000.0, Decision(wait_s=approx(0.004), wake_rows=10)),
        (TWO, CURVE, 2, 0.0, 2000.0, Decision(wait_s=approx(0.0015), wake_rows=5)),  # two instances: smaller batches
        (PLAN, CURVE, 2, 0.0, 1e6, Decision(wait_s=approx(62 / 1e6), wake_rows=64)),  # overload: full batches
        # the slope is a proportional guess (all batches had 1 row): 2 ms per row plans 1-row batches ...
        (PLAN_GUESS, GUESS, 5, 0.0, 1e6, Decision(rows=2)),  # ... so explore one row more while it fits
        (PLAN_GUESS, GUESS, 5, 0.014, 1e6, Decision(rows=1)),  # 6 ms left: no room to explore
        (PLAN_GUESS, GUESS, 1, 0.0, 1e6, Decision(rows=1)),  # nothing more queued to explore with
    ],
)
def test_decide_slo(plan, curve, queued, oldest_wait, rate, expected):
    assert decide_slo(plan, curve, queued, oldest_wait, rate) == expected


@pytest.mark.parametrize(
    "plan, curve, rate, rows",
    [
        (PLAN, CURVE, 0.0, 1),
        (PLAN, CURVE, 100.0, 1),
        (PLAN, CURVE, 2000.0, 14),  # 2000 * 2 ms / (0.5 - 2000 * 0.1 ms)
        (TWO, CURVE, 2000.0, 5),
        (PLAN, CURVE, 4000.0, 16),  # half busy takes 80 rows, over max_batch_size: 90% busy, 4000 * 2 ms / 0.5
        (PLAN, CURVE, 5000.0, 25),  # beyond half the instance: the batch that keeps it 90% busy, 5000 * 2 ms / 0.4
        (PLAN, CURVE, 10000.0, 64),  # beyond even that: the largest batch
        (PLAN, SLOW, 2000.0, 14),  # utilisation is about the mean: the spread does not count
    ],
)
def test_rows_needed(plan, curve, rate, rows):
    assert rows_needed(plan, curve, rate) == rows


@pytest.mark.parametrize(
    "queued, remaining, rate, rows",
    [
        (3, 0.020, 0.0, 3),  # nothing arrives: what is queued
        (2, 0.020, 2000.0, 31),  # (2000 * 18 ms + 2) / (1 + 0.2)
        (2, 0.005, 2000.0, 6),
        (9, 0.001, 2000.0, 9),  # never fewer than queued
    ],
)
def test_rows_reachable(queued, remaining, rate, rows):
    assert rows_reachable(CURVE, queued, remaining, rate) == rows


@pytest.mark.parametrize(
    "plan, curve, ahead, rows, busy, expected",
    [
        (PLAN, None, 500, 1, 0.0, 0.0),  # no estimate: admit
        (PLAN, CURVE, 0, 1, 0.0, 0.0021),  # an idle instance: its own run
        (PLAN, CURVE, 0, 1, 0.005, 0.0071),  # the instance frees in 5 ms
        (PLAN, CURVE, 100, 1, 0.0, 0.0168),  # one full batch ahead, then its own
        (TWO, CURVE, 100, 1, 0.0, 0.0084),  # ... which runs beside it on the second instance
        (PLAN, CURVE, 200, 1, 0.0, 0.0336),  # three batches ahead: over the 20 ms budget
        # a wide spread (the quantile at twice the mean): 46-row batches of 6.6 ms, three on its path;
        # their overruns add in quadrature: 3 x 6.6 + sqrt(3) x 6.6 ms, not 3 x 13.2 ms
        (PLAN, SLOW, 100, 1, 0.0, approx(0.0198 + 0.0066 * 3 ** 0.5)),
        (PLAN, SLOW, 0, 1, 0.0, 0.0042),  # alone on an idle instance: its own run at the quantile
        # behind a running batch (free in 3 ms at the mean): that batch may overrun too
        (PLAN, SLOW, 0, 1, 0.003, approx(0.003 + 0.0021 + (0.0066 ** 2 + 0.0021 ** 2) ** 0.5)),
    ],
)
def test_predicted_latency(plan, curve, ahead, rows, busy, expected):
    batch = batch_rows(plan, curve) if curve else 1
    assert predicted_latency(plan, curve, ahead, rows, busy, batch) == approx(expected)


@pytest.mark.parametrize("tail_scale", [0.25, 0.5, 2.0])
def test_the_calibrated_tail_scales_only_the_overruns_of_the_batches_ahead(tail_scale):
    batch = batch_rows(PLAN, SLOW)
    means = 0.0198  # three 46-row batches on its path, at their mean: two ahead, then its own
    got = predicted_latency(PLAN, SLOW, 100, 1, 0.0, batch, tail_scale)
    assert got == approx(means + 0.0066 * (1 + 2 * tail_scale**2) ** 0.5)
    busy = predicted_latency(PLAN, SLOW, 0, 1, 0.004, batch, tail_scale)  # behind the running batch only
    assert busy == approx(0.004 + SLOW.mean(1) + (SLOW.mean(1) ** 2 + (tail_scale * 0.0066) ** 2) ** 0.5)


@pytest.mark.parametrize("instances", [1, 2])
def test_a_request_larger_than_the_planned_batch_is_priced_at_its_own_rows(instances):
    """It is never split, so it runs as one batch of its own rows after the batches ahead of it: not as
    several planned batches (over the budget though it fits), nor spread over the instances (within it
    though it misses)."""
    plan = SloPlan(budget_s=0.009, max_batch_size=16, instances=instances)
    curve = RunTimeCurve(0.001, 0.001)  # 1 ms + 1 ms per row
    batch = batch_rows(plan, curve)
    assert batch == 3
    assert predicted_latency(plan, curve, 0, 7, 0.0, batch) == approx(0.008)  # fits the 9 ms budget
    assert predicted_latency(plan, curve, 0, 12, 0.0, batch) == approx(0.013)  # does not
    behind = predicted_latency(plan, curve, 2, 12, 0.0, batch)  # 2 rows queued ahead: their batch goes first
    assert behind == approx(0.013 + (0.004 if instances == 1 else 0.0))


def test_a_lone_request_on_an_idle_instance_is_priced_at_its_own_quantile_whatever_the_scale():
    batch = batch_rows(PLAN, SLOW)
    alone = predicted_latency(PLAN, SLOW, 0, 1, 0.0, batch, tail_scale=3.0)
    assert alone == approx(SLOW.mean(1) * (1 + SLOW.margin))


@pytest.mark.parametrize(
    "curve, budget, rows",
    [
        (CURVE, 0.020, 64),  # wait for one batch (mean) + run one (quantile): 2 * t(b) <= 20 ms -> 80 rows, capped
        (CURVE, 0.006, 10),
        (CURVE, 0.001, 1),  # none fits: at least 1
        (SLOW, 0.020, 46),  # t(b) * (2 + 1) <= 20 ms
    ],
)
def test_batch_rows(curve, budget, rows):
    assert batch_rows(SloPlan(budget, 64), curve) == rows


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(latency_s=0), "latency_s must be > 0"),
        (dict(latency_s=0.02, percentile=100), "percentile must be in"),
        (dict(latency_s=0.02, headroom=1.0), "headroom must be in"),
        (dict(latency_s=0.02, target_utilization=0), "target_utilization must be in"),
    ],
)
def test_objective_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatencyObjective(**kwargs)


def test_budget_keeps_headroom_for_work_outside_the_batcher():
    assert LatencyObjective(0.025).budget_s == approx(0.0225)
