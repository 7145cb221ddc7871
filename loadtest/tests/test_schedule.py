"""Open-loop schedules: Poisson arrivals, reproducible from the recorded seed."""

import numpy as np
import pytest

from loadtest.schedule import arrival_rng, poisson_arrivals


def test_same_seed_same_schedule_and_other_seeds_differ():
    a = poisson_arrivals(1000, 2.0, arrival_rng(7, 0, 0))
    b = poisson_arrivals(1000, 2.0, arrival_rng(7, 0, 0))
    np.testing.assert_array_equal(a, b)
    for other in (arrival_rng(8, 0, 0), arrival_rng(7, 1, 0), arrival_rng(7, 0, 1)):
        c = poisson_arrivals(1000, 2.0, other)
        assert len(c) != len(a) or not np.array_equal(a, c)


def test_arrivals_are_increasing_and_within_the_duration():
    a = poisson_arrivals(500, 3.0, arrival_rng(1, 0, 0))
    assert np.all(np.diff(a) > 0)
    assert a[0] >= 0 and a[-1] < 3.0


@pytest.mark.parametrize("rate", [50.0, 2000.0, 20000.0])
def test_mean_gap_is_one_over_the_rate_and_gaps_are_exponential(rate):
    a = poisson_arrivals(rate, 5.0, arrival_rng(3, 0, 0))
    gaps = np.diff(a)
    n = len(a)
    expected = rate * 5.0
    assert abs(n - expected) < 5 * np.sqrt(expected)  # Poisson count: sd = sqrt(mean)
    assert gaps.mean() == pytest.approx(1 / rate, rel=5 / np.sqrt(n))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.15)  # exponential: CV 1


def test_burstiness_below_one_is_burstier_with_the_same_mean():
    a = poisson_arrivals(1000, 10.0, arrival_rng(0, 0, 0), burstiness=0.25)
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(1 / 1000, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.15)  # gamma CV = 1/sqrt(shape)


def test_max_count_bounds_the_schedule():
    assert len(poisson_arrivals(10000, 10.0, arrival_rng(0, 0, 0), max_count=123)) == 123


def test_a_long_schedule_is_topped_up_and_complete():
    a = poisson_arrivals(2.0, 500.0, arrival_rng(0, 0, 0))
    assert a[-1] > 490  # the last arrival is near the end: no truncated schedule


@pytest.mark.parametrize("rate, duration, burstiness", [(0, 1, 1), (-5, 1, 1), (float("inf"), 1, 1), (10, 0, 1), (10, 1, 0)])
def test_bad_arguments_are_rejected(rate, duration, burstiness):
    with pytest.raises(ValueError):
        poisson_arrivals(rate, duration, arrival_rng(0, 0, 0), burstiness=burstiness)
