import pytest

from batching.policy import FRUITLESS_WAITS, WAIT_PROBE_S, BatchPolicy, Decision, WaitPayoff, decide, preferred_rows

P = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.010)
PREF = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.010, preferred_batch_sizes=(4, 8))
SMALL_PREF = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.010, preferred_batch_sizes=(2, 4))
NO_DELAY = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.0)
NO_DELAY_PREF = BatchPolicy(max_batch_size=16, max_queue_delay_s=0.0, preferred_batch_sizes=(4, 8))


@pytest.mark.parametrize(
    "policy, rows, waited, expected",
    [
        (P, 0, 0.0, Decision()),  # nothing queued
        (P, 8, 0.0, Decision(rows=8)),  # full batch goes at once
        (P, 20, 0.0, Decision(rows=8)),  # more than a batch: cap at max_batch_size
        (P, 3, 0.004, Decision(wait_s=pytest.approx(0.006), wake_rows=8)),  # wait out the oldest's delay, or a full batch
        (P, 3, 0.010, Decision(rows=3)),  # delay reached: send what is there
        (P, 3, 0.050, Decision(rows=3)),
        (PREF, 4, 0.0, Decision(rows=4)),  # preferred size reached exactly: go now
        (PREF, 5, 0.001, Decision(rows=4)),  # past 4 but not 8: the largest preferred size it forms goes (Triton)
        (PREF, 2, 0.001, Decision(wait_s=pytest.approx(0.009), wake_rows=4)),  # the next preferred size wakes it
        (PREF, 5, 0.010, Decision(rows=5)),  # delay over: send all
        (SMALL_PREF, 5, 0.001, Decision(rows=4)),  # past the largest preferred size: no wait forms one, send it now
        (SMALL_PREF, 3, 0.001, Decision(rows=2)),  # between sizes: the smaller one goes now, as in Triton
        (SMALL_PREF, 8, 0.0, Decision(rows=4)),  # a full batch too: the largest preferred size, before the delay
        (SMALL_PREF, 5, 0.010, Decision(rows=5)),  # delay over: send all
        (SMALL_PREF, 20, 0.010, Decision(rows=8)),  # delay over: all, up to max_batch_size
        (NO_DELAY_PREF, 3, 0.0, Decision(rows=3)),  # no delay, no preferred size formed: what is queued
        (NO_DELAY_PREF, 6, 0.0, Decision(rows=4)),  # no delay: the largest preferred size formed, not all 6
        (NO_DELAY_PREF, 12, 0.0, Decision(rows=8)),  # a burst past the largest: that size, not 12
        (NO_DELAY_PREF, 40, 0.0, Decision(rows=8)),  # nor max_batch_size
        (NO_DELAY, 1, 0.0, Decision(rows=1)),  # no delay: eager
    ],
)
def test_decide(policy, rows, waited, expected):
    assert decide(policy, rows, waited) == expected


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ([1, 2, 3], 0),  # below every preferred size
        ([1, 2, 3, 4, 5, 6], 4),  # the largest preferred size reached
        ([3, 6], 0),  # two 3-row requests skip 4 and stay under 8: none formed yet
        ([3, 6, 9], 6),  # the third overshoots 8: the rows before it
        ([1, 4, 8, 9], 8),  # 8 reached, then overshot: 8
        ([10], 10),  # one request larger than every preferred size goes whole
        ([10, 11], 10),
    ],
)
def test_preferred_rows_is_the_largest_preferred_batch_formed_in_order(prefix, expected):
    assert preferred_rows((4, 8), prefix) == expected


@pytest.mark.parametrize(
    "policy, rows, waited, formed, expected",
    [
        (PREF, 6, 0.001, 0, Decision(wait_s=pytest.approx(0.009), wake_rows=8)),  # 3+3 rows form no preferred size: wait
        (PREF, 6, 0.010, 0, Decision(rows=6)),  # until the delay
        (NO_DELAY_PREF, 6, 0.0, 0, Decision(rows=6)),  # or at once without one
        (NO_DELAY_PREF, 9, 0.0, 6, Decision(rows=6)),  # 3+3+3: the rows before the one that overshoots 8
        (PREF, 9, 0.010, 6, Decision(rows=8)),  # past the delay preferred sizes no longer count
    ],
)
def test_decide_with_the_preferred_batch_the_queue_forms(policy, rows, waited, formed, expected):
    assert decide(policy, rows, waited, formed_rows=formed) == expected


@pytest.mark.parametrize(
    "policy, rows, waited, expected",
    [
        (P, 0, 0.0, Decision()),  # nothing queued
        (P, 3, 0.0, Decision(rows=3)),  # waiting does not pay: what is queued goes at once
        (P, 20, 0.0, Decision(rows=8)),  # still capped at max_batch_size
        (PREF, 2, 0.001, Decision(rows=2)),  # no waiting for the next preferred size either
    ],
)
def test_decide_when_waiting_does_not_pay(policy, rows, waited, expected):
    assert decide(policy, rows, waited, wait_pays=False) == expected


def test_wait_payoff_stops_waiting_after_fruitless_waits_and_probes_again():
    payoff = WaitPayoff()
    now = 0.0
    for _ in range(FRUITLESS_WAITS):
        assert payoff.pays(now)
        payoff.waiting(1)  # a lone request waits ...
        now += 0.001
        payoff.dispatched(now, 1)  # ... and goes alone
    assert not payoff.pays(now)
    payoff.dispatched(now, 1)  # a batch that did not wait changes nothing
    assert not payoff.pays(now + WAIT_PROBE_S / 2)
    now += WAIT_PROBE_S
    assert payoff.pays(now)  # the probe: one wait
    payoff.waiting(1)
    payoff.dispatched(now, 1)  # gathered nothing: skip again for another probe interval
    assert not payoff.pays(now)
    now += WAIT_PROBE_S
    assert payoff.pays(now)
    payoff.waiting(1)
    payoff.waiting(2)  # the wait is woken and resumed: it still counts from where it began
    payoff.dispatched(now, 3)  # gathered rows: waiting pays again
    assert payoff.pays(now)
    payoff.waiting(2)
    payoff.dispatched(now, 2)
    assert payoff.pays(now)  # one fruitless wait is not enough to stop


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_batch_size=0), "max_batch_size must be >= 1"),
        (dict(max_batch_size=4, max_queue_delay_s=-1), "max_queue_delay_s must be >= 0"),
        (dict(max_batch_size=4, preferred_batch_sizes=(2, 9)), r"preferred batch sizes \[9\]"),
    ],
)
def test_policy_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kwargs)
