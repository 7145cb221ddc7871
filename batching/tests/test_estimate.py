"""The run-time estimator and the arrival rate, on synthetic data with a fixed seed."""

import random

import pytest

from batching.estimate import ArrivalRate, RunTimeCurve, RunTimeEstimator

A, C = 0.002, 0.0001  # the true curve: 2 ms + 0.1 ms per row


def noisy(rng: random.Random, rows: int, scale: float = 1.0, sigma: float = 0.1) -> float:
    """A run time with multiplicative log-normal noise around the true curve (mean-preserving)."""
    return (A + C * rows) * scale * rng.lognormvariate(-sigma * sigma / 2, sigma)


def feed(est: RunTimeEstimator, rng: random.Random, n: int, scale: float = 1.0, **kw) -> RunTimeCurve:
    for _ in range(n):
        rows = rng.randint(1, 64)
        est.observe(rows, noisy(rng, rows, scale, **kw))
    assert est.curve is not None
    return est.curve


def coverage(curve: RunTimeCurve, rng: random.Random, n: int = 4000, scale: float = 1.0) -> float:
    hits = 0
    for _ in range(n):
        rows = rng.randint(1, 64)
        hits += noisy(rng, rows, scale) <= curve.predict(rows)
    return hits / n


def test_converges_on_noisy_data_and_predicts_the_requested_quantile():
    rng = random.Random(7)
    est = RunTimeEstimator(quantile=0.99)
    curve = feed(est, rng, 3000)
    assert curve.intercept_s == pytest.approx(A, rel=0.25)
    assert curve.per_row_s == pytest.approx(C, rel=0.15)
    assert 0.1 < curve.margin < 0.6  # log-normal sigma 0.1: the p99 is about 26% above the mean
    assert 0.95 <= coverage(curve, rng) <= 1.0


def test_a_lower_quantile_gives_a_smaller_margin():
    curves = [feed(RunTimeEstimator(quantile=q), random.Random(3), 2000) for q in (0.5, 0.9, 0.99)]
    margins = [c.margin for c in curves]
    assert margins == sorted(margins) and margins[0] < 0.05


def test_isolated_stalls_barely_move_the_mean_fit():
    rng = random.Random(11)
    est = RunTimeEstimator()
    feed(est, rng, 500)
    for i in range(2000):
        rows = rng.randint(1, 64)
        stall = 50.0 if i % 100 == 0 else 1.0  # 1% of batches stall 50x (a GC pause, a page fault)
        est.observe(rows, noisy(rng, rows) * stall)
    curve = est.curve
    assert curve is not None
    mean_at_32 = curve.intercept_s + curve.per_row_s * 32
    assert mean_at_32 == pytest.approx(A + C * 32, rel=0.15)


def test_reacts_to_a_slowdown_within_a_few_batches_and_relaxes_slowly():
    rng = random.Random(5)
    est = RunTimeEstimator()
    before = feed(est, rng, 1000)
    p32 = before.predict(32)
    after_few = feed(est, rng, 6, scale=2.0)
    assert after_few.predict(32) >= 1.7 * p32  # cautious at once: the residuals show the step
    settled = feed(est, rng, 400, scale=2.0)
    assert settled.intercept_s + settled.per_row_s * 32 == pytest.approx(2 * (A + C * 32), rel=0.15)
    assert 0.95 <= coverage(settled, rng, scale=2.0) <= 1.0
    back = feed(est, rng, 6, scale=1.0)
    assert back.predict(32) > 1.5 * p32  # a speed-up is believed only slowly


def test_without_spread_in_rows_the_fit_is_proportional():
    est = RunTimeEstimator(min_samples=2)
    for _ in range(5):
        est.observe(4, 0.004)
    curve = est.curve
    assert curve is not None
    assert (curve.intercept_s, curve.per_row_s) == (0.0, pytest.approx(0.001))
    assert curve.predict(8) == pytest.approx(0.008)


def test_warms_up_before_it_answers_and_ignores_nonsense():
    est = RunTimeEstimator(min_samples=4)
    for _ in range(3):
        est.observe(2, 0.001)
        assert est.curve is None
    est.observe(0, 0.001)  # zero rows: ignored
    est.observe(2, float("nan"))
    assert est.curve is None
    est.observe(2, 0.001)
    assert est.curve is not None


@pytest.mark.parametrize(
    "curve, seconds, rows",
    [
        (RunTimeCurve(0.002, 0.001), 0.010, 8),
        (RunTimeCurve(0.002, 0.001, margin=1.0), 0.010, 3),  # (2 + b) * 2 <= 10
        (RunTimeCurve(0.002, 0.001), 0.001, 0),  # not even one row
        (RunTimeCurve(0.002, 0.0), 0.010, 1 << 30),  # flat: any size
    ],
)
def test_rows_within(curve, seconds, rows):
    assert curve.rows_within(seconds) == rows


def test_arrival_rate_converges_and_follows_a_step():
    rate = ArrivalRate(time_constant_s=0.1)
    now, total = 0.0, 0
    for _ in range(1000):  # 1000 rows/s in 1 ms steps
        now += 0.001
        total += 1
        rate.update(now, total)
    assert rate.rows_per_s == pytest.approx(1000, rel=0.02)
    for _ in range(300):  # step to 5000 rows/s: after 3 time constants within 5%
        now += 0.001
        total += 5
        rate.update(now, total)
    assert rate.rows_per_s == pytest.approx(5000, rel=0.06)
    peeked = rate.peek(now + 1.0, total)  # a second with nothing, read without recording it ...
    assert peeked < 1.0 and rate.rows_per_s == pytest.approx(5000, rel=0.06)
    assert rate.update(now + 1.0, total) == peeked  # ... is what recording it gives: the rate decays
    assert rate.rows_per_s < 1.0
    assert rate.peek(now, total + 100) == rate.rows_per_s  # no time passed: nothing to add
