"""The priority queue: timeout override rules, priority order, aging, timers, lazy removal."""

import asyncio

import pytest

from batching.queues import GONE, Entry, Expiry, PriorityQueues, QueuePolicy, TimeoutAction

REJECT = TimeoutAction.REJECT
DELAY = TimeoutAction.DELAY


@pytest.mark.parametrize(
    "policy, requested_us, expected_s",
    [
        (QueuePolicy(), 0, 0.0),  # no timeout anywhere
        (QueuePolicy(), 5000, 0.0),  # a request's timeout is ignored without allow_timeout_override
        (QueuePolicy(timeout_s=0.010), 0, 0.010),  # the default applies
        (QueuePolicy(timeout_s=0.010), 2000, 0.010),  # override not allowed: still the default
        (QueuePolicy(timeout_s=0.010, allow_timeout_override=True), 2000, 0.002),  # shorter: taken
        (QueuePolicy(timeout_s=0.010, allow_timeout_override=True), 50000, 0.010),  # longer: never lengthens
        (QueuePolicy(timeout_s=0.010, allow_timeout_override=True), 0, 0.010),  # 0: did not ask
        (QueuePolicy(allow_timeout_override=True), 3000, 0.003),  # no default counts as infinite: taken
    ],
)
def test_timeout_override_rules(policy, requested_us, expected_s):
    assert policy.timeout_for(requested_us) == pytest.approx(expected_s)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_queue_size=0), "max_queue_size must be >= 1"),
        (dict(timeout_s=-1), "timeout_s must be >= 0"),
    ],
)
def test_queue_policy_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QueuePolicy(**kwargs)


class Maker:
    """Builds entries with done-able futures on the running loop."""

    def __init__(self):
        self.seq = 0

    def __call__(self, item, level=0, now=0.0, rows=1, key=None, deadline=None, timeout_at=None):
        self.seq += 1
        future = asyncio.get_running_loop().create_future()
        return Entry(item, rows, key, future, now, deadline, timeout_at, level, self.seq)


def items(batch):
    return [e.item for e in batch]


async def test_higher_levels_are_taken_first_and_fifo_within_a_level():
    q = PriorityQueues((QueuePolicy(), QueuePolicy(), QueuePolicy()))
    make = Maker()
    for item, level in [("c1", 2), ("b1", 1), ("a1", 0), ("b2", 1), ("a2", 0)]:
        q.push(make(item, level))
    head, _ = q.front(now=0.0)
    assert head.item == "a1"
    assert items(q.take(head, 4, 0.0, [])) == ["a1", "a2", "b1", "b2"]
    head, _ = q.front(now=0.0)
    assert items(q.take(head, 4, 0.0, [])) == ["c1"]
    assert (q.count, q.rows) == (0, 0)


async def test_aging_lets_an_old_low_priority_request_head_the_batch():
    q = PriorityQueues((QueuePolicy(), QueuePolicy()), aging_s=1.0)
    make = Maker()
    q.push(make("low", level=1, now=0.0))
    q.push(make("high", level=0, now=0.9))
    assert q.front(now=0.95)[0].item == "high"  # not aged yet: strict priority
    head, oldest_at = q.front(now=1.0)
    assert (head.item, oldest_at) == ("low", 0.0)  # waited aging_s: goes first
    assert items(q.take(head, 1, 1.0, [])) == ["low"]


async def test_without_aging_priority_is_strict():
    q = PriorityQueues((QueuePolicy(), QueuePolicy()), aging_s=0.0)
    make = Maker()
    q.push(make("low", level=1, now=0.0))
    q.push(make("high", level=0, now=50.0))
    assert q.front(now=100.0)[0].item == "high"


async def test_keys_are_never_merged_and_a_too_big_entry_stops_the_batch():
    q = PriorityQueues((QueuePolicy(),))
    make = Maker()
    q.push(make("a", key="x", rows=3))
    q.push(make("b", key="y", rows=1))
    q.push(make("c", key="x", rows=3))
    q.push(make("d", key="x", rows=4))  # does not fit after a + c: stops here
    q.push(make("e", key="x", rows=1))  # would fit, but may not jump ahead of d
    head, _ = q.front(0.0)
    assert items(q.take(head, 8, 0.0, [])) == ["a", "c"]
    head, _ = q.front(0.0)
    assert head.item == "b"
    assert items(q.take(head, 8, 0.0, [])) == ["b"]
    head, _ = q.front(0.0)
    assert items(q.take(head, 8, 0.0, [])) == ["d", "e"]


async def test_entries_that_cannot_finish_by_their_deadline_are_taken_out_as_doomed():
    q = PriorityQueues((QueuePolicy(),))
    make = Maker()
    q.push(make("late", deadline=5.0))
    q.push(make("fine", deadline=20.0))
    q.push(make("free"))
    doomed = []
    head, _ = q.front(0.0)
    assert items(q.take(head, 8, finish_by=10.0, doomed=doomed)) == ["fine", "free"]
    assert items(doomed) == ["late"]
    assert q.count == 0


async def test_reject_timeout_fires_and_delay_timeout_moves_behind_its_level():
    q = PriorityQueues((QueuePolicy(timeout_s=1.0, timeout_action=REJECT), QueuePolicy(timeout_action=DELAY)))
    make = Maker()
    rejected = make("r", level=0, now=0.0, timeout_at=1.0)
    delayed = make("d", level=1, now=0.0, timeout_at=1.0)
    q.push(rejected)
    q.push(delayed)
    q.push(make("fresh", level=1, now=0.5))
    assert q.next_timer() == 1.0
    assert q.fire_timers(0.9) == []
    assert q.fire_timers(1.0) == [(rejected, Expiry.TIMEOUT)]
    assert rejected.state == GONE and q.count == 2
    head, _ = q.front(1.0)
    assert items(q.take(head, 8, 1.0, [])) == ["fresh", "d"]  # the delayed one goes after its level's FIFO


async def test_cancelled_entries_are_swept_lazily_and_a_full_level_sweeps_before_refusing():
    q = PriorityQueues((QueuePolicy(max_queue_size=2),))
    make = Maker()
    a, b = make("a"), make("b")
    q.push(a)
    q.push(b)
    assert q.full(0)
    a.future.cancel()
    assert not q.full(0)  # the sweep uncounted the cancelled one
    q.push(make("c"))
    head, _ = q.front(0.0)
    assert items(q.take(head, 8, 0.0, [])) == ["b", "c"]


async def test_rows_up_to_counts_a_level_and_the_ones_above_it():
    q = PriorityQueues((QueuePolicy(), QueuePolicy(), QueuePolicy()))
    make = Maker()
    q.push(make("a", level=0, rows=2))
    q.push(make("b", level=1, rows=3))
    q.push(make("c", level=2, rows=5))
    assert [q.rows_up_to(i) for i in range(3)] == [2, 5, 10]


async def test_drain_returns_live_entries_and_clears():
    q = PriorityQueues((QueuePolicy(),))
    make = Maker()
    kept, gone = make("kept"), make("gone")
    q.push(kept)
    q.push(gone)
    gone.future.cancel()
    assert q.drain() == [kept]
    assert (q.count, q.rows) == (0, 0)
