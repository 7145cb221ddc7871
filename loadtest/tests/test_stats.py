"""Latency percentiles, error counts by status, goodput and window stability."""

import numpy as np
import pytest

from loadtest import stats


@pytest.mark.parametrize("q, expected", [(0, 1), (10, 1), (11, 2), (50, 5), (90, 9), (91, 10), (99, 10), (100, 10)])
def test_nearest_rank_percentile(q, expected):
    assert stats.percentile(np.arange(1, 11), q) == expected


def test_percentile_needs_values_and_a_valid_q():
    with pytest.raises(ValueError):
        stats.percentile(np.array([]), 50)
    with pytest.raises(ValueError):
        stats.percentile(np.arange(3), 101)


def test_latency_summary_in_milliseconds():
    ns = np.arange(1, 1001) * 1_000_000  # 1..1000 ms
    lat = stats.latency_ms(ns)
    assert (lat.p50, lat.p90, lat.p99, lat.p999, lat.max) == (500, 900, 990, 999, 1000)
    assert lat.mean == pytest.approx(500.5)
    assert stats.latency_ms(np.array([], dtype=np.int64)).p99 == 0


def test_errors_are_counted_by_status_name():
    codes = np.array([0, 0, 14, 14, 4, stats.STREAM_ERROR, stats.DROPPED, 0, 77], dtype=np.int16)
    assert stats.count_errors(codes) == {
        "CLIENT_DROPPED": 1, "CODE_77": 1, "DEADLINE_EXCEEDED": 1, "STREAM_ERROR": 1, "UNAVAILABLE": 2,
    }
    assert stats.count_errors(np.zeros(5, dtype=np.int16)) == {}


def test_goodput_counts_successes_within_the_slo_per_second():
    latency_ns = np.array([5, 10, 10, 11, 1, 2]) * 1_000_000
    codes = np.array([0, 0, 0, 0, 8, 0])
    # within 10 ms and OK: 5, 10, 10, 2 -> 4 requests over 2 s
    assert stats.goodput_rps(latency_ns, codes, slo_ms=10, duration_s=2.0) == 2.0
    with pytest.raises(ValueError):
        stats.goodput_rps(latency_ns, codes, slo_ms=10, duration_s=0)


@pytest.mark.parametrize("windows, count, tolerance, stable", [
    ([100, 100, 100], 3, 0.1, True),
    ([50, 100, 105, 95], 3, 0.1, True),  # only the last three count
    ([100, 100], 3, 0.1, False),  # not enough windows yet
    ([100, 130, 100], 3, 0.1, False),
    ([0, 0, 0], 3, 0.1, False),  # nothing completed is not "stable"
    ([91, 100, 109], 3, 0.1, True),
    ([100, 120], 1, 0.1, True),
])
def test_stability_of_the_last_windows(windows, count, tolerance, stable):
    assert stats.is_stable(windows, count, tolerance) is stable
