import pytest

from batching.policy import BatchPolicy, Decision, decide

P = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.010)
PREF = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.010, preferred_batch_sizes=(4, 8))
NO_DELAY = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.0)


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
        (PREF, 5, 0.001, Decision(wait_s=pytest.approx(0.009), wake_rows=8)),  # past 4 but not 8: wait for more
        (PREF, 2, 0.001, Decision(wait_s=pytest.approx(0.009), wake_rows=4)),  # the next preferred size wakes it
        (PREF, 5, 0.010, Decision(rows=5)),  # delay over: send all
        (NO_DELAY, 1, 0.0, Decision(rows=1)),  # no delay: eager
    ],
)
def test_decide(policy, rows, waited, expected):
    assert decide(policy, rows, waited) == expected


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
