"""The batcher through its public seam (submit) with a fake kernel and a fake clock.

Priorities, the starvation bound, per-level queue bounds, queue timeouts
(REJECT, DELAY, overrides), deadlines, cancellation, ordering, and the
latency-objective mode (admission, deadlines against the expected run time,
the observable estimate).
"""

import asyncio
import contextlib
import logging

import pytest

from batching.batcher import BatcherConfig, DynamicBatcher
from batching.policy import BatchPolicy
from batching.queues import QueuePolicy, TimeoutAction
from batching.slo import LatencyObjective
from batching.testing import FakeClock, FakeKernel
from ops.errors import BackendError, DeadlineExceeded, InvalidInput, ModelNotReady, QueueFull

DELAY = TimeoutAction.DELAY


def batcher(kernel, clock=None, *, max_batch_size=1, concurrent=1, levels=(), default_priority=1, aging_s=1.0,
            ordered=False, objective=None, delay_s=0.0):
    config = BatcherConfig(
        policy=BatchPolicy(max_batch_size=max_batch_size, max_queue_delay_s=delay_s),
        max_concurrent_batches=concurrent,
        levels=tuple(levels),
        default_priority=default_priority,
        aging_s=aging_s,
        preserve_ordering=ordered,
        objective=objective,
    )
    return DynamicBatcher(kernel, config, name="model 'm' version 1", **({"clock": clock} if clock else {}))


async def until(condition, timeout_s=2.0):
    """Let the loop run until ``condition()`` holds (real time, bounded)."""
    async def poll():
        while not condition():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout_s)


async def test_higher_priority_is_dispatched_first():
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, max_batch_size=2, levels=[QueuePolicy(), QueuePolicy()], default_priority=2)
    await b.start()
    first = b.submit(0)
    await until(lambda: kernel.batches)
    low = [b.submit(1), b.submit(2, priority=0)]  # 0: the default level, here 2
    high = [b.submit(3, priority=1), b.submit(4, priority=1)]
    gate.set()
    await asyncio.gather(first, *low, *high)
    assert kernel.batches == [[0], [3, 4], [1, 2]]
    await b.stop()


@pytest.mark.parametrize("priority", [3, -1])
async def test_a_priority_outside_the_levels_is_invalid_input_naming_the_range(priority):
    b = batcher(FakeKernel(), levels=[QueuePolicy(), QueuePolicy()])
    await b.start()
    with pytest.raises(InvalidInput, match=r"priority .* is outside 0\.\.2 \(1 is the highest; 0 uses the default, 1\)"):
        b.submit(1, priority=priority)
    await b.stop()


@pytest.mark.parametrize(
    "aging_s, low_runs_at",
    [
        (0.045, 5),  # after 5 batches of 10 ms the low request has waited 50 ms: the oldest aged, it goes next
        (0.0, 20),  # strict priority: the low request waits for all 20 high ones
    ],
)
async def test_starvation_is_bounded_by_aging(aging_s, low_runs_at):
    clock = FakeClock()
    kernel = FakeKernel(clock=clock, run_time=lambda rows: 0.010)
    b = batcher(kernel, clock, levels=[QueuePolicy(), QueuePolicy()], aging_s=aging_s)
    await b.start()
    futures = [b.submit(-1, priority=2)]
    clock.advance(0.001)
    futures += [b.submit(i, priority=1) for i in range(20)]
    await asyncio.gather(*futures)
    assert kernel.executed.index(-1) == low_runs_at
    await b.stop()


async def test_a_full_level_rejects_at_once_while_other_levels_accept():
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, levels=[QueuePolicy(max_queue_size=2), QueuePolicy(max_queue_size=1)], default_priority=2)
    await b.start()
    running = b.submit(0)
    await until(lambda: kernel.batches)
    queued = [b.submit(1)]
    with pytest.raises(QueueFull, match=r"the queue of priority level 2 is full \(1 requests waiting\); retry later"):
        b.submit(2)
    queued += [b.submit(3, priority=1), b.submit(4, priority=1)]
    with pytest.raises(QueueFull, match="priority level 1 is full"):
        b.submit(5, priority=1)
    gate.set()
    assert await asyncio.gather(running, *queued) == [0, 10, 30, 40]
    await b.stop()


async def test_reject_timeout_fails_the_request_on_time_and_it_never_runs():
    clock = FakeClock()
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, clock, levels=[QueuePolicy(timeout_s=0.010)])
    await b.start()
    running = b.submit(0)
    await until(lambda: kernel.batches)
    doomed = b.submit(1)
    clock.advance(0.020)
    with pytest.raises(DeadlineExceeded, match=r"longer than its queue timeout of 10\.0 ms .* it was not executed"):
        await asyncio.wait_for(doomed, 1.0)  # answered while the kernel is still busy
    gate.set()
    await running
    assert kernel.executed == [0]
    await b.stop()


@pytest.mark.parametrize("max_batch_size, asleep_on", [(1, "the running batch"), (8, "a 10 s batching delay")])
async def test_a_queue_timeout_is_on_time_when_the_batcher_already_sleeps(max_batch_size, asleep_on):
    """A request that does not wake the batcher by its rows still wakes it when its queue timeout is due first."""
    clock = FakeClock()
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, clock, max_batch_size=max_batch_size, delay_s=10.0,
                levels=[QueuePolicy(allow_timeout_override=True)])
    await b.start()
    first = b.submit(0)  # with 1-row batches it runs (and hangs on the gate), with 8 it waits for the delay
    await asyncio.sleep(0.01)  # the batcher is asleep on ``asleep_on``
    queued = b.submit(1)  # no timeout: wakes the batcher, which goes back to sleep as long
    await asyncio.sleep(0.01)
    doomed = b.submit(2, timeout_us=10_000)
    clock.advance(0.020)
    with pytest.raises(DeadlineExceeded, match=r"longer than its queue timeout of 10\.0 ms"):
        await asyncio.wait_for(doomed, 1.0)
    gate.set()
    await b.stop()
    assert await asyncio.gather(first, queued) == [0, 10]
    assert 2 not in kernel.executed


async def test_drain_dispatches_what_is_queued_at_once_in_priority_order_and_keeps_accepting():
    """Shutdown (server/app.py, step 4): the batcher stops waiting out the queue delay (10 s, on a clock that does
    not move), so the transports' grace covers run times only; priorities and deadlines still hold, and a request
    the transports were still finishing gets in and goes at once."""
    clock = FakeClock()
    kernel = FakeKernel()
    b = batcher(kernel, clock, max_batch_size=8, delay_s=10.0, levels=[QueuePolicy(), QueuePolicy()], default_priority=2)
    await b.start()
    low = [b.submit(1), b.submit(2)]
    high = b.submit(3, priority=1)
    doomed = b.submit(4, deadline=clock() + 0.001)
    await asyncio.sleep(0.02)
    assert kernel.batches == [] and not b.draining  # waiting for the delay, or for 8 rows
    clock.advance(0.002)  # the doomed request's deadline passes while it waits
    b.drain()
    assert b.draining and b.accepting
    assert await asyncio.wait_for(asyncio.gather(high, *low), 1.0) == [30, 10, 20]
    with pytest.raises(DeadlineExceeded, match="not executed"):
        await asyncio.wait_for(doomed, 1.0)
    assert kernel.batches == [[3, 1, 2]]  # one batch, the higher level first
    assert await asyncio.wait_for(b.submit(5), 1.0) == 50  # still accepting, and no waiting
    assert kernel.batches[-1] == [5]
    await b.stop()


async def test_delay_timeout_moves_the_request_behind_its_level():
    clock = FakeClock()
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, clock, levels=[QueuePolicy(timeout_s=0.010, timeout_action=DELAY)])
    await b.start()
    futures = [b.submit(0)]
    await until(lambda: kernel.batches)
    futures.append(b.submit(1))
    clock.advance(0.020)
    futures += [b.submit(2), b.submit(3)]
    await asyncio.sleep(0.03)  # the timer (10 ms) fires: 1 is delayed
    gate.set()
    await asyncio.gather(*futures)
    assert kernel.executed == [0, 2, 3, 1]
    await b.stop()


@pytest.mark.parametrize(
    "policy, timeout_us, rejected",
    [
        (QueuePolicy(timeout_s=1.0, allow_timeout_override=True), 5000, True),  # shortened to 5 ms
        (QueuePolicy(timeout_s=1.0, allow_timeout_override=False), 5000, False),  # override not allowed: 1 s
        (QueuePolicy(allow_timeout_override=True), 5000, True),  # no default: the request's applies
        (QueuePolicy(), 5000, False),  # no timeouts at all
    ],
)
async def test_timeout_override_rules(policy, timeout_us, rejected):
    clock = FakeClock()
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, clock, levels=[policy])
    await b.start()
    running = b.submit(0)
    await until(lambda: kernel.batches)
    asked = b.submit(1, timeout_us=timeout_us)
    clock.advance(0.010)
    await asyncio.sleep(0.02)
    assert asked.done() is rejected
    gate.set()
    await running
    if rejected:
        with pytest.raises(DeadlineExceeded):
            await asked
    else:
        assert await asked == 10
    await b.stop()


async def test_expired_requests_are_never_executed():
    clock = FakeClock()
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, clock, max_batch_size=4)
    await b.start()
    running = b.submit(0)
    await until(lambda: kernel.batches)
    late = b.submit(1, deadline=clock() + 0.005)
    fine = b.submit(2, deadline=clock() + 10.0)
    clock.advance(0.010)
    gate.set()
    with pytest.raises(DeadlineExceeded, match="deadline passed after 10.0 ms in the queue; it was not executed"):
        await late
    assert await asyncio.gather(running, fine) == [0, 20]
    assert 1 not in kernel.executed
    await b.stop()


async def test_a_caller_that_goes_away_is_dropped_before_execution():
    gate = asyncio.Event()
    kernel = FakeKernel(gate=gate)
    b = batcher(kernel, max_batch_size=4)
    await b.start()
    running = b.submit(0)
    await until(lambda: kernel.batches)

    async def caller(item):  # what a gRPC handler does; cancelling its task cancels the awaited future
        return await b.submit(item)

    gone = asyncio.get_running_loop().create_task(caller(1))
    kept = asyncio.get_running_loop().create_task(caller(2))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    assert await kept == 20
    await running
    assert kernel.batches == [[0], [2]]
    assert b.queue_depth == 0
    await b.stop()


async def test_preserve_ordering_releases_in_arrival_order():
    gates = {0: asyncio.Event()}
    finished: list[int] = []

    async def kernel(items):
        for item in items:
            if item in gates:
                await gates[item].wait()
        finished.extend(items)
        return [i * 10 for i in items]

    b = batcher(kernel, concurrent=2, ordered=True)
    await b.start()
    futures = [b.submit(0), b.submit(1)]
    released: list[int] = []
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _, i=i: released.append(i))
    await until(lambda: finished == [1])  # 1 ran on the second instance and finished first
    await asyncio.sleep(0.01)
    assert not futures[1].done()  # held back until 0 is answered
    gates[0].set()
    assert await asyncio.gather(*futures) == [0, 10]
    assert released == [0, 1]
    await b.stop()


async def test_preserve_ordering_releases_what_a_cancelled_request_held_back_at_once():
    """A caller that goes away while its batch still runs (a hung or slow instance) holds nothing back."""
    gate = asyncio.Event()  # request 0's batch does not finish while the test looks

    async def kernel(items):
        if 0 in items:
            await gate.wait()
        return [i * 10 for i in items]

    b = batcher(kernel, concurrent=2, ordered=True)
    await b.start()
    first, second = b.submit(0), b.submit(1)
    await asyncio.sleep(0.01)  # 1 ran on the second instance and finished; it is held behind 0
    assert not second.done()
    first.cancel()
    assert await asyncio.wait_for(second, 1.0) == 10
    gate.set()
    await b.stop()


async def test_preserve_ordering_with_a_failing_kernel_leaves_no_future_pending():
    kernel = FakeKernel(fail_with=RuntimeError("boom"))
    b = batcher(kernel, max_batch_size=2, concurrent=2, ordered=True)
    await b.start()
    futures = [b.submit(i) for i in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 2.0)
    assert all(isinstance(r, BackendError) for r in results)
    await b.stop()


async def test_stop_fails_what_is_left_under_ordering_too():
    gate = asyncio.Event()  # never set: the batch hangs
    b = batcher(FakeKernel(gate=gate), ordered=True)
    await b.start()
    futures = [b.submit(i) for i in range(3)]
    await asyncio.sleep(0.01)
    await b.stop(timeout_s=0.05)
    assert all(f.done() for f in futures)
    assert all(isinstance(f.exception(), (ModelNotReady, BackendError)) for f in futures)


# ---- latency objective ------------------------------------------------------------------------

def run_time(rows: int) -> float:
    return 0.002 + 0.0001 * rows  # 2 ms + 0.1 ms per row


async def warmed_up(objective, gate=None, max_batch_size=8):
    """A batcher in objective mode whose estimator has seen batches of 1..8 rows, then a quiet second."""
    clock = FakeClock()
    kernel = FakeKernel(clock=clock, run_time=run_time, rows_of=lambda item: max(1, item // 100))
    b = batcher(kernel, clock, max_batch_size=max_batch_size, objective=objective)
    await b.start()
    for rows in range(1, 9):
        await b.submit(rows * 100, rows=rows)
    kernel.batches.clear()
    kernel.gate = gate
    clock.advance(1.0)  # a quiet second: the arrival rate decays, so a lone request goes at once
    return b, clock, kernel


async def test_the_estimate_is_observable_and_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="batching.batcher")
    b, _, _ = await warmed_up(LatencyObjective(0.010))
    estimate = b.estimate
    assert estimate.curve is not None
    assert estimate.curve.intercept_s == pytest.approx(0.002, rel=0.01)
    assert estimate.curve.per_row_s == pytest.approx(0.0001, rel=0.01)
    assert estimate.budget_s == pytest.approx(0.009)
    assert estimate.admission_batch_rows == 8
    assert "batch run time 2.000 ms + 0.1000 ms/row" in caplog.text
    await b.stop()


async def test_a_lagging_event_loop_comes_off_the_budget():
    """Three loop crossings per request at the lag's p99: the plan shrinks, and never below half the budget."""
    b, _, _ = await warmed_up(LatencyObjective(0.010))
    for _ in range(7):
        b.record_loop_lag(0.0012)
    assert b.estimate.budget_s == pytest.approx(0.009)  # too few samples to judge yet
    b.record_loop_lag(0.0012)
    estimate = b.estimate
    assert estimate.loop_lag_allowance_s == pytest.approx(0.0036)
    assert estimate.budget_s == pytest.approx(0.0054)
    assert estimate.admission_batch_rows == 6  # (2 ms + 0.1 ms x b) x 2 <= 5.4 ms (7 rows just miss), 8 before
    for _ in range(200):
        b.record_loop_lag(0.050)  # a stalled loop
    assert b.estimate.budget_s == pytest.approx(0.0045)  # capped: half the budget
    for _ in range(128):
        b.record_loop_lag(0.0)  # the loop calmed down: the window forgets the stall
    assert b.estimate.budget_s == pytest.approx(0.009) and b.estimate.loop_lag_allowance_s == 0.0
    await b.stop()


async def test_admission_calibrates_its_tail_against_the_requests_it_answers():
    """Requests answered within the budget lower the admission tail (fewer sheds); late ones raise it."""
    b, clock, kernel = await warmed_up(LatencyObjective(0.010))
    start = b.estimate.admission_tail_scale
    for _ in range(50):
        clock.advance(0.1)  # sparse arrivals: each goes at once
        await b.submit(100)  # alone on an idle instance: well within the 9 ms budget
    lowered = b.estimate.admission_tail_scale
    assert lowered < start
    assert "admission tail x" in b.estimate.describe()
    kernel.run_time = lambda rows: 0.050  # a stall: every batch takes 50 ms
    clock.advance(0.1)
    await b.submit(100)
    assert b.estimate.admission_tail_scale > lowered
    await b.stop()


async def test_requests_that_cannot_meet_the_objective_are_shed_at_once():
    gate = asyncio.Event()
    b, clock, kernel = await warmed_up(LatencyObjective(0.010), gate=gate)
    admitted = [b.submit(1)]
    await until(lambda: kernel.batches)  # the instance is busy now
    with pytest.raises(QueueFull) as caught:
        for _ in range(100):
            admitted.append(b.submit(1))
    message = str(caught.value)
    assert "cannot meet the model's latency objective of 10 ms (p99)" in message
    assert "it was not queued" in message
    assert 8 <= len(admitted) <= 24  # about two 8-row batches fit 9 ms behind a busy instance
    gate.set()
    await asyncio.gather(*admitted)
    await b.stop()


async def test_the_offered_rate_counts_the_rows_admission_sheds():
    """Beside the admitted rate the planner observes the offered one, shed rows included (the estimate, a metric)."""
    gate = asyncio.Event()
    b, clock, kernel = await warmed_up(LatencyObjective(0.010), gate=gate)
    admitted = [b.submit(1)]
    await until(lambda: kernel.batches)
    for _ in range(100):
        with contextlib.suppress(QueueFull):
            admitted.append(b.submit(1))
    clock.advance(0.010)
    gate.set()
    await asyncio.gather(*admitted)
    estimate = b.estimate
    assert 0 < 3 * estimate.arrival_rows_per_s < estimate.offered_rows_per_s  # 101 offered, at most 25 admitted
    assert f"admitted of {estimate.offered_rows_per_s:.0f} offered" in estimate.describe()
    clock.advance(1.0)  # the traffic stopped: no decision updates the rates, a read does
    quiet = b.estimate
    assert quiet.offered_rows_per_s < 0.01 * estimate.offered_rows_per_s
    assert quiet.arrival_rows_per_s < 0.01 * estimate.arrival_rows_per_s
    await b.stop()


async def test_an_idle_model_whose_estimate_sheds_everything_admits_a_probe_a_second():
    b, clock, kernel = await warmed_up(LatencyObjective(0.010))
    for _ in range(4):  # a stall: four 50 ms batches, so even a lone request is predicted far over 9 ms
        b.record_run_time(1, 0.050)
    clock.advance(0.5)
    with pytest.raises(QueueFull, match=r"cannot meet the model's latency objective of 10 ms \(p99\): even alone on an "
                                        r"idle instance it would take about \d+\.\d ms, more than the 9\.0 ms the "
                                        r"objective leaves the scheduler \(raise latency_slo_ms if this lasts"):
        b.submit(1)  # idle, but it ran a batch less than a second ago
    clock.advance(0.5)
    kernel.run_time = lambda rows: 0.050  # the stall goes on
    probe = b.submit(2)  # nothing ran for a second: one request goes, to measure the model again
    with pytest.raises(QueueFull):
        b.submit(3)  # one probe at a time
    assert await probe == 20
    assert kernel.batches == [[2]]
    with pytest.raises(QueueFull):
        b.submit(4)  # the probe missed the budget (50 ms): the next one is due a second later
    clock.advance(1.0)
    assert await b.submit(5) == 50
    await b.stop()


async def test_probes_within_the_budget_admit_lone_requests_until_the_estimate_has_recovered():
    """After a stall, a light load is not held to one probe a second while its requests meet the objective."""
    b, clock, kernel = await warmed_up(LatencyObjective(0.010))
    for _ in range(4):  # a stall: even a lone request is predicted far over the 9 ms budget
        b.record_run_time(1, 0.050)
    assert b.estimate.curve.margin > 10
    clock.advance(1.0)
    answered = 0
    for item in range(300):  # one request every 50 ms, each alone; the model is back to 2.1 ms a row
        clock.advance(0.050)
        try:
            answered += await b.submit(item) == item * 10
        except QueueFull:
            pass
    assert answered == 300  # the first probe met the budget, and so did every lone request after it
    assert b.estimate.curve.margin < 0.5  # the stall has left the estimate
    await b.stop()


async def test_a_model_that_only_ran_single_rows_learns_to_batch_under_overload():
    clock = FakeClock()
    kernel = FakeKernel(clock=clock, run_time=lambda rows: 0.010 + 0.001 * rows)  # 11 ms alone, 13 ms for 3 rows
    b = batcher(kernel, clock, max_batch_size=8, objective=LatencyObjective(0.030))  # (10 + 3) x 2 <= 27: 3 rows
    await b.start()
    for item in range(8):  # light load: every request runs alone
        await b.submit(item)
        clock.advance(0.1)
    for _ in range(50):  # then overload: 8 requests at once, 50 times
        admitted = []
        for item in range(8):
            try:
                admitted.append(b.submit(item))
            except QueueFull:
                pass
        await asyncio.gather(*admitted)
        clock.advance(0.001)
    assert max(len(batch) for batch in kernel.batches) > 1
    assert b.estimate.curve is not None and b.estimate.curve.identified
    assert b.estimate.curve.per_row_s == pytest.approx(0.001, rel=0.05)  # the slope, learnt
    assert b.estimate.admission_batch_rows == 3  # (10 + 3) x 2 <= 27 ms
    await b.stop()


async def test_a_request_that_cannot_finish_by_its_deadline_is_refused_or_never_run():
    gate = asyncio.Event()
    b, clock, kernel = await warmed_up(LatencyObjective(0.100), gate=gate)
    with pytest.raises(DeadlineExceeded, match="cannot finish before its deadline .* it was not queued"):
        b.submit(1, deadline=clock() + 0.001)  # an idle instance still needs 2.1 ms
    running = b.submit(1)
    await until(lambda: kernel.batches)
    tight = b.submit(1, deadline=clock() + 0.006)  # 2.1 ms busy + 2.1 ms run: admitted
    clock.advance(0.003)  # but time passes before the instance frees
    gate.set()
    with pytest.raises(DeadlineExceeded, match="cannot finish before its deadline .* it was not executed"):
        await tight
    await running
    assert len(kernel.batches) == 1
    await b.stop()


async def test_objective_mode_dispatches_at_once_under_light_load():
    b, clock, kernel = await warmed_up(LatencyObjective(0.050))
    start = clock()
    assert await b.submit(1) == 10
    assert kernel.batches == [[1]]
    assert clock() - start == pytest.approx(run_time(1))  # no waiting beyond the run itself
    await b.stop()
