import asyncio
import time

import pytest

from batching.batcher import BatcherConfig, DynamicBatcher
from batching.policy import FRUITLESS_WAITS, WAIT_PROBE_S, BatchPolicy
from batching.testing import FakeKernel
from ops.errors import BackendError, DeadlineExceeded, InvalidInput, ModelNotReady, QueueFull


def make(recorder, max_batch_size=8, delay_s=0.0, queue=1024, concurrent=1, preferred=()):
    policy = BatchPolicy(max_batch_size=max_batch_size, max_queue_delay_s=delay_s, preferred_batch_sizes=preferred)
    return DynamicBatcher(recorder, BatcherConfig(policy, max_queue_size=queue, max_concurrent_batches=concurrent))


async def test_concurrent_items_are_batched_and_each_gets_its_own_result():
    rec = FakeKernel()
    b = make(rec, max_batch_size=8, delay_s=0.05)
    await b.start()
    futures = [b.submit(i) for i in range(8)]
    assert await asyncio.gather(*futures) == [i * 10 for i in range(8)]
    assert rec.batches == [list(range(8))]  # full batch dispatched without waiting the delay
    await b.stop()


async def test_delay_is_honoured_then_partial_batch_goes():
    rec = FakeKernel()
    b = make(rec, max_batch_size=8, delay_s=0.05)
    await b.start()
    t0 = time.monotonic()
    futures = [b.submit(i) for i in range(3)]
    await asyncio.gather(*futures)
    waited = time.monotonic() - t0
    assert rec.batches == [[0, 1, 2]]
    assert 0.045 <= waited < 1.0
    await b.stop()


async def test_a_lone_caller_stops_paying_the_delay_and_a_second_caller_brings_it_back():
    """Waits that gather nothing (a caller that sends only after each answer) are skipped after
    FRUITLESS_WAITS of them; one wait per WAIT_PROBE_S still happens, and one that gathers a row
    turns waiting back on."""
    rec = FakeKernel()
    delay = 0.05
    b = make(rec, max_batch_size=8, delay_s=delay)
    await b.start()

    async def lone(i: int) -> float:
        t0 = time.monotonic()
        assert await b.submit(i) == i * 10
        return time.monotonic() - t0

    waited = [await lone(i) for i in range(FRUITLESS_WAITS + 2)]
    assert all(w >= delay * 0.9 for w in waited[:FRUITLESS_WAITS]), waited
    assert all(w < delay * 0.8 for w in waited[FRUITLESS_WAITS:]), waited  # dispatched at once
    await asyncio.sleep(WAIT_PROBE_S)
    first = b.submit(100)  # the probe waits the delay ...
    await asyncio.sleep(delay / 5)
    second = b.submit(101)  # ... and gathers a second caller's request
    assert await asyncio.gather(first, second) == [1000, 1010]
    assert rec.batches[-1] == [100, 101]
    assert await lone(102) >= delay * 0.9  # waiting is back on
    await b.stop()


async def test_preferred_size_dispatches_before_the_delay():
    rec = FakeKernel()
    b = make(rec, max_batch_size=8, delay_s=5.0, preferred=(4,))
    await b.start()
    t0 = time.monotonic()
    await asyncio.gather(*[b.submit(i) for i in range(4)])
    assert time.monotonic() - t0 < 1.0
    assert rec.batches == [[0, 1, 2, 3]]
    await b.stop()


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([1] * 11, [[0], [1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11]]),  # 8 of the 11 queued, then the 3 left
        ([3, 3, 3, 1], [[0], [1, 2], [3, 4]]),  # 3+3, as the third overshoots 8; then 3+1 forms 4
    ],
    ids=["one-row-requests", "several-rows"],
)
async def test_without_a_delay_the_largest_preferred_batch_formed_goes_not_the_whole_queue(rows, expected):
    """Triton's preferred sizes with max_queue_delay 0: requests queued behind a busy instance go in
    the largest preferred batch they form in order (or what is queued when they form none)."""
    gate = asyncio.Event()
    rec = FakeKernel(gate=gate)
    b = make(rec, max_batch_size=16, delay_s=0.0, preferred=(4, 8))
    await b.start()
    futures = [b.submit(0)]
    await asyncio.sleep(0.01)  # item 0 runs alone and holds the only instance
    futures += [b.submit(i, rows=n) for i, n in enumerate(rows, start=1)]
    gate.set()
    await asyncio.gather(*futures)
    assert rec.batches == expected
    await b.stop()


async def test_the_estimate_reports_the_static_policys_last_decision():
    """The fleetserve_scheduler_target_batch_rows and _wait_seconds gauges read it for every batching model."""
    rec = FakeKernel()
    b = make(rec, max_batch_size=8, delay_s=5.0, preferred=(4,))
    await b.start()
    futures = [b.submit(i) for i in range(2)]
    await asyncio.sleep(0.01)
    assert b.estimate.target_rows == 4  # waiting for the next preferred size ...
    assert 4.9 < b.estimate.wait_s <= 5.0  # ... for at most the rest of the delay
    futures += [b.submit(i) for i in range(2, 4)]
    await asyncio.gather(*futures)
    assert (b.estimate.target_rows, b.estimate.wait_s) == (0, 0.0)  # the preferred size went at once
    await b.stop()


async def test_rows_count_against_max_batch_size_not_requests():
    rec = FakeKernel()
    b = make(rec, max_batch_size=8, delay_s=0.02)
    await b.start()
    futures = [b.submit(i, rows=3) for i in range(4)]  # 12 rows: 3+3 fit, third would overflow 8
    await asyncio.gather(*futures)
    assert rec.batches[0] == [0, 1]
    assert sum(len(x) for x in rec.batches) == 4
    await b.stop()


async def test_items_with_different_keys_are_never_merged():
    rec = FakeKernel()
    b = make(rec, max_batch_size=8, delay_s=0.02)
    await b.start()
    futures = [b.submit(i, key=("a" if i % 2 else "b")) for i in range(6)]
    await asyncio.gather(*futures)
    for batch in rec.batches:
        assert len({i % 2 for i in batch}) == 1
    await b.stop()


async def test_full_queue_rejects_at_once_without_blocking():
    gate = asyncio.Event()
    rec = FakeKernel(gate=gate)
    b = make(rec, max_batch_size=1, queue=2)
    await b.start()
    first = b.submit(0)
    await asyncio.sleep(0.01)  # first is now running and blocked on the gate
    queued = [b.submit(1), b.submit(2)]
    with pytest.raises(QueueFull, match="queue is full"):
        b.submit(3)
    gate.set()
    assert await asyncio.gather(first, *queued) == [0, 10, 20]
    await b.stop()


async def test_concurrent_batches_are_capped():
    gate = asyncio.Event()
    rec = FakeKernel(gate=gate)
    b = make(rec, max_batch_size=1, concurrent=2)
    await b.start()
    futures = [b.submit(i) for i in range(6)]
    await asyncio.sleep(0.02)
    assert rec.running == 2
    gate.set()
    await asyncio.gather(*futures)
    assert rec.max_running == 2
    await b.stop()


async def test_kernel_error_fails_every_item_of_the_batch_and_batcher_keeps_running():
    rec = FakeKernel(fail_with=RuntimeError("boom"))
    b = make(rec, max_batch_size=4, delay_s=0.01)
    await b.start()
    futures = [b.submit(i) for i in range(4)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, BackendError) for r in results)
    rec.fail_with = InvalidInput("bad rows")
    with pytest.raises(InvalidInput, match="bad rows"):
        await b.submit(9)
    rec.fail_with = None
    assert await b.submit(5) == 50
    await b.stop()


async def test_expired_items_are_never_executed():
    gate = asyncio.Event()
    rec = FakeKernel(gate=gate)
    b = make(rec, max_batch_size=1)
    await b.start()
    blocker = b.submit(0)
    await asyncio.sleep(0.01)
    doomed = b.submit(1, deadline=time.monotonic() + 0.01)
    await asyncio.sleep(0.03)
    gate.set()
    with pytest.raises(DeadlineExceeded, match="not executed"):
        await doomed
    await blocker
    assert [1] not in rec.batches
    await b.stop()


async def test_cancelled_items_are_dropped_before_execution():
    gate = asyncio.Event()
    rec = FakeKernel(gate=gate)
    b = make(rec, max_batch_size=1)
    await b.start()
    blocker = b.submit(0)
    await asyncio.sleep(0.01)
    gone = b.submit(1)
    gone.cancel()
    kept = b.submit(2)
    gate.set()
    assert await kept == 20
    await blocker
    assert [1] not in rec.batches
    await b.stop()


async def test_a_cancelled_item_leaves_the_queue_depth_at_once():
    """The fleetserve_queue_depth gauge counts requests waiting, not cancelled ones no sweep has reached yet."""
    gate = asyncio.Event()
    b = make(FakeKernel(gate=gate), max_batch_size=1)
    await b.start()
    blocker = b.submit(0)
    await asyncio.sleep(0.01)
    gone, kept = b.submit(1), b.submit(2)
    assert b.queue_depth == 2
    gone.cancel()
    await asyncio.sleep(0.01)  # the loop sleeps until the running batch ends: nothing sweeps the queue
    assert b.queue_depth == 1
    gate.set()
    assert (await blocker, await kept) == (0, 20)
    assert b.queue_depth == 0
    await b.stop()


async def test_stop_drains_queued_work_and_then_refuses():
    rec = FakeKernel()
    b = make(rec, max_batch_size=2, delay_s=0.5)
    await b.start()
    futures = [b.submit(i) for i in range(3)]
    await b.stop()
    assert [f.result() for f in futures] == [0, 10, 20]
    with pytest.raises(ModelNotReady):
        b.submit(4)


async def test_stop_timeout_fails_leftovers_instead_of_leaving_them_pending():
    gate = asyncio.Event()  # never set: the batch hangs
    rec = FakeKernel(gate=gate)
    b = make(rec, max_batch_size=1)
    await b.start()
    futures = [b.submit(i) for i in range(3)]
    await asyncio.sleep(0.01)
    await b.stop(timeout_s=0.05)
    await asyncio.sleep(0)
    assert all(f.done() for f in futures)


async def test_a_cut_while_a_plain_stop_drains_fails_what_is_left_and_ends_that_stop_too():
    """A version being retired drains in ``stop()`` when shutdown's drain timeout cuts it (``stop(0, cut_reason)``):
    the drain's own ``stop()`` used to raise CancelledError into its caller (the registry's close), as if cancelled."""
    gate = asyncio.Event()  # never set: the batch runs on
    b = make(FakeKernel(gate=gate), max_batch_size=1)
    await b.start()
    futures = [b.submit(i) for i in range(2)]
    await asyncio.sleep(0.01)
    draining = asyncio.ensure_future(b.stop())
    await asyncio.sleep(0.01)
    await b.stop(0, cut_reason="cut")
    await asyncio.wait_for(draining, 1)  # ends, without raising
    assert [str(f.exception()) for f in futures] == [
        "cut while this request's batch was running; its result is lost",
        "cut before this request ran; it can be sent again",
    ]
def test_waiting_out_a_sub_millisecond_delay_does_not_spin_the_loop():
    # uvloop (the server's loop) rounds timers to whole milliseconds: a wait under 0.5 ms fires
    # at once. A batcher that re-decides on every such wake-up spins through the end of every
    # delay, burning about as much CPU as the delay lasts. Sequential single requests with a
    # 0.5 ms delay must cost far less CPU than that.
    uvloop = pytest.importorskip("uvloop")  # a dependency on Linux: never skipped in CI

    async def scenario() -> float:
        rec = FakeKernel()
        b = make(rec, max_batch_size=8, delay_s=0.0005)
        await b.start()
        cpu0 = time.process_time()
        for i in range(200):
            assert await b.submit(i) == i * 10
        cpu = time.process_time() - cpu0
        await b.stop()
        return cpu / 200

    loop = uvloop.new_event_loop()
    try:
        cpu_per_request = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert cpu_per_request < 0.00025, f"{cpu_per_request * 1e6:.0f} us of CPU per request"


async def test_a_batch_run_right_away_needs_no_task_and_lets_the_loop_run_between_batches():
    """An owner that runs a (tiny) batch on the spot returns a list; errors raised on the spot fail that batch only."""
    batches: list[list[int]] = []
    ticks: list[int] = []

    def run_now(items: list[int]) -> list[int]:
        batches.append(list(items))
        if -1 in items:
            raise RuntimeError("the kernel failed")
        return [i * 10 for i in items]

    b = DynamicBatcher(run_now, BatcherConfig(policy=BatchPolicy(max_batch_size=2)), name="now")
    await b.start()

    async def ticker() -> None:  # another task on the loop: it must get turns between the batches
        for n in range(3):
            ticks.append(len(batches))
            await asyncio.sleep(0)

    futures = [b.submit(i) for i in range(5)]
    tick = asyncio.get_running_loop().create_task(ticker())
    assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]
    await tick
    assert batches == [[0, 1], [2, 3], [4]]
    assert ticks[1] < 3  # it ran before the third batch: the batcher yielded between batches
    assert b.batches_in_flight == 0
    failed = [b.submit(-1), b.submit(7)]
    results = await asyncio.gather(*failed, return_exceptions=True)
    assert all(isinstance(r, BackendError) and "the kernel failed" in str(r) for r in results)
    assert await b.submit(8) == 80  # and it keeps serving
    await b.stop()
