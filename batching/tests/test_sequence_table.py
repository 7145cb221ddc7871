"""batching/sequences.py with a fake run whose futures the test completes: order, state, start, end, idle
release, the bound on live sequences, cancellation, failures and close."""

from __future__ import annotations

import asyncio

import pytest

from batching.sequences import Sequences
from ops.errors import BackendError, InvalidInput, ModelNotReady, QueueFull


class FakeModel:
    """``run`` records each request and returns a future the test finishes with ``answer``: the state after a
    request is the state before plus the request's item (a running sum)."""

    def __init__(self) -> None:
        self.runs: list[tuple[object, int, int, bool, bool]] = []  # (sequence, item, state, start, end)
        self.pending: list[asyncio.Future] = []
        self.refuse: BaseException | None = None

    def run(self, item: int, state: int, sequence_id: object, start: bool, end: bool) -> asyncio.Future:
        if self.refuse is not None:
            raise self.refuse
        self.runs.append((sequence_id, item, state, start, end))
        future = asyncio.get_running_loop().create_future()
        future.item, future.state = item, state  # type: ignore[attr-defined]
        self.pending.append(future)
        return future

    def answer(self, index: int = 0, error: BaseException | None = None) -> None:
        future = self.pending.pop(index)
        if error is not None:
            future.set_exception(error)
        else:
            total = future.state + future.item
            future.set_result((total, total))


def table(model: FakeModel, idle_s: float = 10.0, max_sequences: int = 100) -> Sequences:
    return Sequences("model 'm' version 1", model.run, lambda: 0, idle_s, max_sequences)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_one_sequence_runs_in_order_on_its_state_while_others_run_at_once() -> None:
    model = FakeModel()
    sequences = table(model)
    a1 = sequences.submit("a", True, False, 1)
    a2 = sequences.submit("a", False, False, 2)
    b1 = sequences.submit("b", True, False, 10)

    assert [run[0] for run in model.runs] == ["a", "b"]  # a2 waits for a1; b runs beside a1
    model.answer(0)
    await settle()
    assert await a1 == 1 and model.runs[-1] == ("a", 2, 1, False, False)  # a2 on a1's state
    model.answer(0)  # b1
    model.answer(0)  # a2
    assert (await b1, await a2) == (10, 3)


async def test_end_releases_the_sequence_and_a_later_request_is_refused() -> None:
    model = FakeModel()
    sequences = table(model)
    done = sequences.submit(7, True, True, 5)
    model.answer()

    assert await done == 5
    await settle()
    assert sequences.live == 0
    with pytest.raises(InvalidInput, match="sequence 7 is not live: it never started, it ended, or it was idle"):
        sequences.submit(7, False, False, 1)


async def test_a_request_queued_behind_the_end_is_refused_unless_it_starts_again() -> None:
    model = FakeModel()
    sequences = table(model)
    sequences.submit(1, True, True, 5)
    after = sequences.submit(1, False, False, 1)
    again = sequences.submit(1, True, False, 2)
    model.answer()
    await settle()

    with pytest.raises(InvalidInput, match="not live any more"):
        await after
    model.answer()
    assert await again == 2  # a start: the initial state, not what the ended sequence left


async def test_a_failed_request_leaves_the_state_and_the_sequence_goes_on() -> None:
    model = FakeModel()
    sequences = table(model)
    first = sequences.submit(1, True, False, 5)
    model.answer()
    await first
    failed = sequences.submit(1, False, True, 100)  # a failed end does not end it
    model.answer(error=BackendError("the run failed"))

    with pytest.raises(BackendError):
        await failed
    later = sequences.submit(1, False, False, 1)
    model.answer()
    assert await later == 6


async def test_a_request_refused_by_the_model_fails_alone() -> None:
    model = FakeModel()
    sequences = table(model)
    model.refuse = QueueFull("full")

    with pytest.raises(QueueFull):
        await sequences.submit(1, True, False, 5)
    model.refuse = None
    assert sequences.live == 0  # nothing started: its state was never made


async def test_an_idle_sequence_is_released_after_its_idle_time_and_not_before() -> None:
    model = FakeModel()
    sequences = table(model, idle_s=0.05)
    first = sequences.submit(1, True, False, 1)
    model.answer()
    await first
    await asyncio.sleep(0.02)
    second = sequences.submit(1, False, False, 1)  # activity restarts the idle time
    model.answer()
    assert await second == 2
    await asyncio.sleep(0.03)
    assert sequences.live == 1

    await asyncio.sleep(0.05)

    assert sequences.live == 0
    with pytest.raises(InvalidInput, match="not live"):
        sequences.submit(1, False, False, 1)


async def test_live_sequences_are_bounded() -> None:
    model = FakeModel()
    sequences = table(model, max_sequences=2)
    sequences.submit(1, True, False, 1)
    sequences.submit(2, True, False, 1)

    with pytest.raises(QueueFull, match="holds 2 live sequences"):
        sequences.submit(3, True, False, 1)
    sequences.submit(1, False, False, 1)  # a live one goes on


async def test_a_caller_that_cancels_while_waiting_is_dropped_and_while_running_cancels_the_run() -> None:
    model = FakeModel()
    sequences = table(model)
    running = sequences.submit(1, True, False, 1)
    waiting = sequences.submit(1, False, False, 50)
    waiting.cancel()
    model.answer()
    await running
    await settle()
    assert len(model.runs) == 1  # the cancelled request never ran

    third = sequences.submit(1, False, False, 2)
    third.cancel()
    await settle()
    assert model.pending[0].cancelled()  # the model's batcher is told
    model.pending.clear()
    fourth = sequences.submit(1, False, False, 3)
    model.answer()
    assert await fourth == 4  # the state is what the last request that ran left


async def test_close_fails_what_waits_and_refuses_what_comes() -> None:
    model = FakeModel()
    sequences = table(model)
    sequences.submit(1, True, False, 1)
    waiting = sequences.submit(1, False, False, 1)

    sequences.close("the model version is unloading")

    with pytest.raises(ModelNotReady, match="unloading"):
        await waiting
    with pytest.raises(ModelNotReady):
        sequences.submit(2, True, False, 1)
    assert sequences.live == 0


async def test_finish_lets_live_sequences_go_on_to_their_end_and_refuses_new_ones() -> None:
    model = FakeModel()
    sequences = table(model)
    started = sequences.submit(1, True, False, 1)
    model.answer()
    await started
    assert sequences.holds(1) and not sequences.holds(2)

    finishing = asyncio.ensure_future(sequences.finish(10.0, "version 1 is being replaced"))
    await settle()
    with pytest.raises(ModelNotReady, match="starts no new sequence: version 1 is being replaced"):
        sequences.submit(2, True, False, 1)
    going_on = sequences.submit(1, False, False, 2)  # the live one goes on, on its state
    model.answer()
    assert await going_on == 3
    assert not finishing.done()
    ending = sequences.submit(1, False, True, 3)
    model.answer()
    assert await ending == 6

    assert await asyncio.wait_for(finishing, 1.0) == 0  # none live: the wait ends as the last sequence does
    assert not sequences.holds(1)


async def test_finish_ends_when_the_last_sequence_is_released_idle_or_at_its_timeout() -> None:
    model = FakeModel()
    idle = table(model, idle_s=0.05)
    idle.submit(1, True, False, 1)
    model.answer()
    await settle()
    started = asyncio.get_running_loop().time()
    assert await idle.finish(10.0, "replaced") == 0
    assert asyncio.get_running_loop().time() - started < 1.0  # released after 50 ms idle, not 10 s

    busy = table(model, idle_s=10.0)
    busy.submit(7, True, False, 1)
    model.answer()
    await settle()
    assert await busy.finish(0.05, "replaced") == 1  # still live at the timeout: close ends it
    busy.close("unloading")
    assert busy.live == 0


async def test_stop_finishing_ends_the_wait_at_once() -> None:
    model = FakeModel()
    sequences = table(model)
    sequences.submit(1, True, False, 1)
    model.answer()
    await settle()
    finishing = asyncio.ensure_future(sequences.finish(10.0, "replaced"))
    await settle()

    sequences.stop_finishing()

    assert await asyncio.wait_for(finishing, 1.0) == 1
    assert await sequences.finish(10.0, "replaced") == 1  # and does not wait again


class Recorder:
    """A SequenceObserver that records what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, object]] = []

    def started(self, sequence_id: object) -> None:
        self.heard.append(("started", sequence_id))

    def touched(self, sequence_id: object) -> None:
        self.heard.append(("touched", sequence_id))

    def released(self, sequence_id: object) -> None:
        self.heard.append(("released", sequence_id))


async def test_the_observer_hears_each_start_request_and_release() -> None:
    model, recorder = FakeModel(), Recorder()
    sequences = Sequences("model 'm' version 1", model.run, lambda: 0, 0.05, 100, recorder)
    for sequence_id, start, end in ((1, True, False), (1, False, True), (2, True, False), (3, True, False)):
        submitted = sequences.submit(sequence_id, start, end, 1)
        model.answer()
        await submitted
    await asyncio.sleep(0.03)
    sequences.submit(3, False, False, 1)  # 3 keeps going; 2 is released idle
    model.answer()
    await asyncio.sleep(0.04)
    sequences.close("unloading")  # 3 is still live

    assert recorder.heard == [("started", 1), ("touched", 1), ("released", 1), ("started", 2), ("started", 3),
                              ("touched", 3), ("released", 2), ("released", 3)]
