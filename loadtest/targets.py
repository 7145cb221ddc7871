"""A benchmark's target: what was measured, what was needed, the verdict, and the figure printed beside it.

Shared by ``fleetserve bench`` (loadtest/bench.py) and ``fleetserve bench-scheduling``
(loadtest/scheduling_report.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    needed: float
    passed: bool
    detail: str

    def shown(self, decimals: int, scale: float = 1.0, below: bool = False) -> str:
        """``measured * scale`` to ``decimals`` places, or to as many more (up to 4) as it takes for the printed
        figure to sit on the same side of ``needed`` as the value itself: a share of 98.98% against 99% prints
        98.98, not 99.0 beside FAIL. ``below``: the target is ``measured < needed``, else ``>=``."""
        value, needed = self.measured * scale, self.needed * scale

        def holds(v: float) -> bool:
            return v < needed if below else v >= needed

        places = decimals
        while places < decimals + 4 and holds(round(value, places)) != holds(value):
            places += 1
        return f"{value:.{places}f}"
