"""``fleetserve bench --soak SECONDS``: the memory run. One fleetserve cycles through the bench's loads.

The resident set is read after every load; the run passes when it stays under 400 MB, grows by at
most ``SOAK_GROWTH_MB`` after the first minute, and no request fails.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loadtest import servers
from loadtest.procpool import run_event_loop
from loadtest.results import PointResult
from loadtest.runner import LoadRunner, RunSettings


# The soak cycles through the bench's loads on one server, so every code path runs for the whole time.
SOAK_LOADS = (
    ("tiny unary c=64", "add_one", "unary", 64, 1),
    ("tiny stream c=64", "add_one", "stream", 64, 1),
    ("mlp unary c=64", "mlp", "unary", 64, 1),
    ("mlp 64-row unary c=8", "mlp", "unary", 8, 64),
)
SOAK_GROWTH_MB = 10.0  # allowed growth of the resident set after the first minute (allocator arenas settle)


@dataclass
class SoakResult:
    seconds: float
    requests: int
    errors: int
    rss_mb: list[tuple[float, float]]  # (seconds since start, resident MiB) after each load chunk
    peak_rss_mb: float
    growth_mb: float  # last sample minus the first sample taken a minute or more in
    passed: bool


def soak_verdict(samples: list[tuple[float, float]], peak_mb: float, limit_mb: float = 400.0,
                 growth_mb: float = SOAK_GROWTH_MB) -> tuple[float, bool]:
    """Growth after the first minute (the first minute fills pools and caches) and whether the run passes."""
    settled = [mb for t, mb in samples if t >= 60.0] or [mb for _, mb in samples[-1:]]
    growth = settled[-1] - settled[0] if settled else 0.0
    return growth, peak_mb < limit_mb and growth <= growth_mb


def run_soak(seconds: float, processes: int, repository: Path, say: Callable[[str], None] = print,
             chunk_s: float = 10.0) -> SoakResult:
    """Cycle through ``SOAK_LOADS`` against one fleetserve for ``seconds``; sample its memory after each chunk."""
    samples: list[tuple[float, float]] = []
    requests = errors = 0
    with tempfile.TemporaryDirectory(prefix="fleetserve-soak-") as tmp:
        with servers.fleetserve(servers.bench_repository(Path(tmp), repository)) as server:
            start = time.monotonic()
            i = 0
            while (elapsed := time.monotonic() - start) < seconds:
                name, model, transport, concurrency, rows = SOAK_LOADS[i % len(SOAK_LOADS)]
                i += 1
                settings = RunSettings(
                    targets=(server.address,), model=model, transport=transport, rows=rows, processes=processes,
                    warmup_s=0.0, window_s=min(chunk_s, max(1.0, seconds - elapsed)), stable_windows=1,
                    max_duration_s=chunk_s + 5.0, timeout_s=30.0,
                )

                async def run(settings: RunSettings = settings, concurrency: int = concurrency) -> PointResult:
                    async with LoadRunner(settings) as runner:
                        return await runner.run_point("concurrency", concurrency)

                point = run_event_loop(run())
                requests += point.requests
                errors += sum(point.errors.values())
                memory = server.memory_mb()
                if memory is None:
                    raise SystemExit("--soak needs /proc to read the server's resident memory (Linux)")
                samples.append((time.monotonic() - start, memory[0]))
                say(f"  {samples[-1][0]:6.0f} s  {name:<22} {point.throughput_rps:>8,.0f} req/s  "
                    f"resident {memory[0]:6.1f} MB (peak {memory[1]:.1f})")
            peak = (server.memory_mb() or (0.0, 0.0))[1]
    growth, passed = soak_verdict(samples, peak)
    return SoakResult(seconds, requests, errors, samples, peak, growth, passed and errors == 0)


def format_soak(result: SoakResult) -> str:
    first = result.rss_mb[0][1] if result.rss_mb else 0.0
    last = result.rss_mb[-1][1] if result.rss_mb else 0.0
    return (f"soak: {result.seconds:.0f} s, {result.requests:,} requests, {result.errors} errors; resident memory "
            f"{first:.1f} MB after the first load, {last:.1f} MB at the end, peak {result.peak_rss_mb:.1f} MB; "
            f"growth after the first minute {result.growth_mb:+.1f} MB (allowed {SOAK_GROWTH_MB:g}); "
            f"{'PASS' if result.passed else 'FAIL'} (peak < 400 MB, no growth, no errors)")
