"""Test doubles for the batcher, public so that other packages' tests and benchmarks reuse them.

``FakeClock`` is a monotonic clock moved by hand; ``FakeKernel`` is a
``run_batch`` that records each batch, answers ``item * 10``, can fail or
block on a gate, and, given a clock and a run-time curve, advances the clock
by the simulated run time of each batch (so the run-time estimator sees
exact, or deliberately noisy, measurements). Imports nothing from fleetserve
beyond batching.
"""

from __future__ import annotations

import asyncio
from typing import Callable


class FakeClock:
    """Seconds that move only when told. Call it like ``time.monotonic``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds


class FakeKernel:
    """A fake ``run_batch``: see the module docstring. ``rows_of`` gives an item's rows (default 1)."""

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        run_time: Callable[[int], float] | None = None,
        gate: asyncio.Event | None = None,
        fail_with: BaseException | None = None,
        rows_of: Callable[[int], int] = lambda item: 1,
    ) -> None:
        self.clock = clock
        self.run_time = run_time
        self.gate = gate
        self.fail_with = fail_with
        self.rows_of = rows_of
        self.batches: list[list[int]] = []
        self.running = 0
        self.max_running = 0

    @property
    def executed(self) -> list[int]:
        """Every item run, in execution order."""
        return [item for batch in self.batches for item in batch]

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.clock is not None and self.run_time is not None:
                self.clock.advance(self.run_time(sum(self.rows_of(i) for i in items)))
            if self.fail_with is not None:
                raise self.fail_with
            return [i * 10 for i in items]
        finally:
            self.running -= 1
