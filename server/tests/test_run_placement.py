"""Tiny batches run on the event loop; anything slow or not yet measured goes to the thread pool."""

from server.servable import RunPlacement


def test_unmeasured_sizes_go_to_the_thread_pool():
    placement = RunPlacement(100_000)
    assert not placement.inline(1)
    placement.observe(1, 20_000)
    assert placement.inline(1)
    assert not placement.inline(64)  # another size bucket: not measured yet


def test_slow_sizes_stay_in_the_thread_pool_and_a_slowdown_moves_a_size_back():
    placement = RunPlacement(100_000)
    placement.observe(64, 1_300_000)
    assert not placement.inline(64)
    placement.observe(2, 30_000)
    assert placement.inline(2) and placement.inline(3)  # 2 and 3 rows share a bucket
    for _ in range(30):
        placement.observe(2, 400_000)  # the model got slower (contention, bigger inputs)
    assert not placement.inline(2)


def test_zero_disables_inline_runs():
    placement = RunPlacement(0)
    placement.observe(1, 1)
    assert not placement.inline(1)


def test_one_fast_run_outweighs_runs_slowed_by_the_thread_pool():
    """Runs in the pool wait for the GIL behind the transport, so their times overstate the model's cost."""
    placement = RunPlacement(100_000)
    for _ in range(10):
        placement.observe(8, 250_000)  # measured in the pool, under contention
    assert not placement.inline(8)
    placement.observe(8, 30_000)  # one undisturbed run shows what the model costs
    assert placement.inline(8)
    placement.observe(8, 400_000)  # a single slow run (a stall) does not move it back
    assert placement.inline(8)
