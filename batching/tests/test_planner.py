"""SloPlanner: the loop-lag allowance is covered in test_scheduler.py; here the admission tail's calibration."""

import pytest

from batching.planner import MISS_SHARE, TAIL_SCALE_RANGE, TAIL_STEP, SloPlanner
from batching.slo import LatencyObjective

BUDGET = 0.009  # 10 ms objective minus 10% headroom


def planner() -> SloPlanner:
    p = SloPlanner(LatencyObjective(0.010), max_batch_size=8, instances=1)
    assert p.plan.budget_s == pytest.approx(BUDGET) and p.tail_scale == 1.0
    return p


def test_requests_within_the_budget_lower_the_tail_and_misses_raise_it():
    p = planner()
    now = 100.0
    p.settled(now, [now - 0.001] * 8)  # eight on time
    on_time = TAIL_STEP * MISS_SHARE * 0.01  # each lowers it by the step times the target miss share (0.5% at p99)
    assert p.tail_scale == pytest.approx(1.0 - 8 * on_time)
    p.settled(now, [now - 0.001, now - 0.020])  # one on time, one over the 9 ms budget
    assert p.tail_scale == pytest.approx(1.0 - 9 * on_time + TAIL_STEP * (1 - MISS_SHARE * 0.01))


def test_the_tail_scale_stays_in_its_range():
    p = planner()
    for _ in range(1000):
        p.settled(10.0, [9.999] * 8)  # a long quiet stretch: every request on time
    assert p.tail_scale == TAIL_SCALE_RANGE[0]
    for _ in range(200):
        p.settled(10.0, [9.0])  # a stall: every request a second late
    assert p.tail_scale == TAIL_SCALE_RANGE[1]


@pytest.mark.parametrize("miss_every, direction", [(100, +1), (400, -1)])
def test_the_tail_settles_where_the_target_share_misses(miss_every, direction):
    """Target: half of the 1% a p99 objective allows. Missing 1 in 100 raises the tail, 1 in 400 lowers it."""
    p = planner()
    for i in range(1, 4001):
        p.settled(10.0, [9.0 if i % miss_every == 0 else 9.999])
    assert (p.tail_scale - 1.0) * direction > 0.4  # about +1 and -0.5 after 4,000 requests
