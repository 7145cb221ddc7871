"""``fleetserve bench-scheduling``: issue 3's evidence: no batching, fixed delays and SLO mode at three loads.

One command, bounded (about 3 minutes; ``--quick`` about 1 minute), load generator on the same
machine. In order:

1. writes the slow model (``model_store.testing.write_slow_model``: a chain of MatMuls whose run
   time grows with the batch) and times it in process at batch 1 and at ``max_batch_size`` with the
   server's session options; the latency objective is 5x the full batch's run time, rounded up to
   5 ms (``scheduling_report.choose_objective_ms`` says why), unless ``--slo-ms`` sets one;
2. writes a temporary repository with a copy of that model per schedule, all with the same
   ``max_batch_size`` and onnxruntime threads: no batching, one fixed ``max_queue_delay_microseconds``
   per ``--delays-ms``, and SLO mode (``latency_slo_ms``, no delay); starts one fleetserve on it;
3. measures capacity: closed loop at twice ``max_batch_size`` on each fixed-delay schedule. There
   every fixed delay runs the same full batches back to back, so the runs measure one capacity and
   their mean is it (their maximum would pick the luckiest of noisy samples, and put "near
   capacity" at capacity). Then each fixed delay is offered that rate open loop; when they serve
   less (``scheduling_report.sustained_capacity``), what they serve is the capacity;
4. drives every schedule with open-loop Poisson arrivals at 30%, 90% and 200% of the capacity, one
   load at a time, every schedule in turn (so they see the machine in the same state); at each load
   every schedule gets the same arrival times (the same seed and point index);
5. prints, per (load, schedule), throughput, p50/p99, the share of requests within the objective of
   all sent and of those admitted, the shed rate (RESOURCE_EXHAUSTED) and other errors; then issue
   3's targets with PASS/FAIL; writes bench_scheduling.json. Exit 1 when a target fails.

Latency is the client's, from the scheduled send time: the targets are judged on it. Beside it, the
server's own view (its request-duration histogram, with a bucket at the objective, read over
/metrics at the end of warm-up and of each point) tells the scheduler's misses from the transport's
and the load generator's; and the SLO model's last estimate (its DEBUG log line) is kept per load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loadtest import servers
from loadtest.procpool import run_event_loop
from loadtest.results import PointResult
from loadtest.runner import LoadRunner, RunSettings
from loadtest.scheduling_report import (
    LOADS, NEAR_CAPACITY, OBJECTIVE_FACTOR, Cell, Schedule, cell_from_point, choose_objective_ms, evaluate_targets,
    format_cells, format_targets, model_config, schedules, sustained_capacity,
)
from loadtest.server_view import ServerView, server_buckets
from loadtest.targets import Target
from model_store.testing import ModelSpec, write_model_repository, write_slow_model
from ops.cores import available_cores


@dataclass(frozen=True)
class Timing:
    """How long each measurement runs; every load point takes ``warmup_s + windows * window_s``."""

    warmup_s: float
    window_s: float
    windows: int
    pause_s: float  # between points: queues of cancelled requests drain, the loop calms down
    capacity_warmup_s: float
    capacity_window_s: float


FULL = Timing(warmup_s=3.0, window_s=3.0, windows=3, pause_s=1.0, capacity_warmup_s=1.0, capacity_window_s=1.5)
QUICK = Timing(warmup_s=1.0, window_s=1.5, windows=2, pause_s=0.5, capacity_warmup_s=0.5, capacity_window_s=1.0)


@dataclass(frozen=True)
class BenchSettings:
    features: int = 2048
    repeats: int = 8
    max_batch_size: int = 8
    delays_us: tuple[int, ...] = (1000, 5000)
    slo_ms: float | None = None  # None: chosen from the in-process run time
    threads: int = max(1, available_cores() // 2)  # the other cores decode requests and generate load
    seed: int = 0
    timing: Timing = FULL
    max_inflight: int = 4096  # above the server's queue bound, so the server is the one that refuses


@dataclass
class SchedulingBenchResult:
    created_utc: str
    cpu_count: int
    machine: str
    quick: bool
    settings: BenchSettings
    run_time_ms: dict[int, float]  # in process, median, by batch size
    objective_ms: float
    objective_source: str
    capacity_rps: float  # what the loads are fractions of: see scheduling_report.sustained_capacity
    capacity_points: dict[str, PointResult]  # closed loop, by fixed-delay schedule
    closed_capacity_rps: float  # the mean of the closed-loop runs
    open_capacity_points: dict[str, PointResult]  # open loop at closed_capacity_rps, by fixed-delay schedule
    cells: list[Cell]
    targets: list[Target]
    slo_estimates: dict[str, str]  # by load: the SLO model's last logged estimate (DEBUG, at most once a second)
    duration_s: float = 0.0


_LEAD_S = 0.05  # LoadRunner's start lead with one load process


def measure_run_time_ms(model: Path, batches: tuple[int, ...], threads: int, runs: int = 15) -> dict[int, float]:
    """Median in-process run time (ms) at each batch size, with the session options of kernels/ort.py."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    rng = np.random.default_rng(0)
    times = {}
    for batch in batches:
        feed = {spec.name: rng.standard_normal((batch, spec.shape[1])).astype(np.float32)}
        session.run(None, feed)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - start) * 1e3)
        times[batch] = statistics.median(samples)
    return times


def _run_settings(address: str, model: str, objective_ms: float, settings: BenchSettings,
                  capacity: bool) -> RunSettings:
    t = settings.timing
    warmup, window, windows = ((t.capacity_warmup_s, t.capacity_window_s, 2) if capacity
                               else (t.warmup_s, t.window_s, t.windows))
    return RunSettings(
        targets=(address,), model=model, seed=settings.seed, slo_ms=objective_ms, warmup_s=warmup, window_s=window,
        stable_windows=windows, max_duration_s=warmup + windows * window, max_inflight=settings.max_inflight,
        timeout_s=60.0,  # longer than any queue: a request is answered or refused by the server, not timed out
    )


@dataclass
class _Capacity:
    rps: float
    closed_rps: float
    closed_points: dict[str, PointResult]
    open_points: dict[str, PointResult]


async def _capacity(address: str, plan: list[Schedule], objective_ms: float, settings: BenchSettings,
                    say: Callable[[str], None]) -> _Capacity:
    """Closed loop on the fixed delays, then open loop at that rate (``sustained_capacity``)."""
    closed_points: dict[str, PointResult] = {}
    open_points: dict[str, PointResult] = {}
    concurrency = 2 * settings.max_batch_size
    fixed = [s for s in plan if s.kind == "fixed"]
    for schedule in fixed:
        async with LoadRunner(_run_settings(address, schedule.name, objective_ms, settings, capacity=True)) as runner:
            point = closed_points[schedule.name] = await runner.run_point("concurrency", concurrency)
        say(f"  capacity of {schedule.name}: {point.throughput_rps:,.0f} req/s at concurrency {concurrency} "
            f"(p99 {point.latency_ms.p99:.1f} ms, batch {point.mean_batch_size or 0:.1f})")
    closed = statistics.fmean(p.throughput_rps for p in closed_points.values())
    if closed <= 0:
        raise RuntimeError("no fixed-delay schedule answered any request: cannot measure capacity")
    for schedule in fixed:
        async with LoadRunner(_run_settings(address, schedule.name, objective_ms, settings, capacity=True)) as runner:
            point = open_points[schedule.name] = await runner.run_point("rate", closed)
        say(f"  open loop at {closed:,.0f}/s on {schedule.name}: served {point.throughput_rps:,.0f} req/s "
            f"(p99 {point.latency_ms.p99:.1f} ms, batch {point.mean_batch_size or 0:.1f})")
        await asyncio.sleep(settings.timing.pause_s)
    rps = sustained_capacity(closed, [p.throughput_rps for p in open_points.values()])
    return _Capacity(rps, closed, closed_points, open_points)


async def _measure(address: str, view: ServerView, plan: list[Schedule], objective_ms: float,
                   settings: BenchSettings, say: Callable[[str], None],
                   ) -> tuple[_Capacity, list[Cell], dict[str, str]]:
    """Capacity, then every load on every schedule."""
    found = await _capacity(address, plan, objective_ms, settings, say)
    capacity = found.rps
    cells = []
    estimates = {}
    async with contextlib.AsyncExitStack() as stack:
        # One runner per schedule, all measuring the same sequence of points: equal seeds and point
        # indices give every schedule the same arrival times at a load.
        runners = {s.name: await stack.enter_async_context(
            LoadRunner(_run_settings(address, s.name, objective_ms, settings, capacity=False))) for s in plan}
        for load in LOADS:
            rate = load.fraction * capacity
            for schedule in plan:
                warmed = asyncio.get_running_loop().create_task(view.counts(_LEAD_S + settings.timing.warmup_s))
                point = await runners[schedule.name].run_point("rate", rate)
                server = ServerView.share(schedule.name, await warmed, await view.counts())
                cell = cell_from_point(schedule.name, load.name, rate, point, server)
                cells.append(cell)
                say(f"  {load.name:<14} {schedule.name:<12} offered {rate:7,.0f}/s  "
                    f"served {cell.throughput_rps:7,.0f}/s  p99 {cell.p99_ms:8.1f} ms  shed {cell.shed_rate * 100:5.1f}%")
                if schedule.kind == "slo":
                    estimates[load.name] = view.last_estimate(schedule.name)
                    say(f"    estimate: {estimates[load.name]}")
                await asyncio.sleep(settings.timing.pause_s)
    return found, cells, estimates


def run_bench_scheduling(settings: BenchSettings, quick: bool = False,
                         say: Callable[[str], None] = print) -> SchedulingBenchResult:
    started = time.monotonic()
    plan = schedules(settings.delays_us)
    mbs = settings.max_batch_size
    with tempfile.TemporaryDirectory(prefix="fleetserve-bench-scheduling-") as tmp:
        model = write_slow_model(Path(tmp) / "slow.onnx", features=settings.features, repeats=settings.repeats)
        say(f"timing the slow model in process ({settings.features} features, {settings.repeats} MatMuls, "
            f"{settings.threads} thread(s)) ...")
        run_time = measure_run_time_ms(model, tuple(sorted({1, mbs})), settings.threads)
        say("  " + ", ".join(f"t({b}) = {ms:.2f} ms" for b, ms in run_time.items()))
        if settings.slo_ms is not None:
            objective, source = settings.slo_ms, "--slo-ms"
        else:
            objective = choose_objective_ms(run_time, mbs)
            source = f"{OBJECTIVE_FACTOR:g} x t({mbs}) in process, rounded up to 5 ms"
        say(f"latency objective: {objective:g} ms at p99 ({source}; {objective / run_time[1]:.1f} x t(1))")
        repository = write_model_repository(Path(tmp) / "repository", {
            s.name: ModelSpec(lambda d: shutil.copyfile(model, d / "model.onnx"),
                              config=model_config(s, mbs, objective, settings.threads))
            for s in plan
        })
        say(f"fleetserve serving {', '.join(s.name for s in plan)} ...")
        # DEBUG: the batcher logs its estimate (once a second at most), the only DEBUG lines the server has.
        with servers.fleetserve(repository, "--log-level", "DEBUG", "--metrics-latency-buckets",
                                server_buckets(objective)) as server:
            view = ServerView(server, objective)
            found, cells, estimates = run_event_loop(_measure(server.address, view, plan, objective, settings, say))
    fixed = [s.name for s in plan if s.kind == "fixed"]
    return SchedulingBenchResult(
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu_count=available_cores(),
        machine=f"{platform.system()} {platform.machine()}, Python {platform.python_version()}", quick=quick,
        settings=settings, run_time_ms=run_time, objective_ms=objective, objective_source=source,
        capacity_rps=found.rps, capacity_points=found.closed_points, closed_capacity_rps=found.closed_rps,
        open_capacity_points=found.open_points,
        cells=cells, targets=evaluate_targets(cells, "slo", fixed, NEAR_CAPACITY.name, objective),
        slo_estimates=estimates, duration_s=time.monotonic() - started,
    )


def format_report(result: SchedulingBenchResult) -> str:
    s, t = result.settings, result.run_time_ms
    runs = ", ".join(f"{name} {p.throughput_rps:,.0f}" for name, p in result.capacity_points.items())
    served = ", ".join(f"{name} {p.throughput_rps:,.0f}" for name, p in result.open_capacity_points.items())
    kept_up = result.capacity_rps == result.closed_capacity_rps
    return "\n".join([
        f"fleetserve bench-scheduling, {result.created_utc}, {result.cpu_count} cores, {result.machine}"
        f"{' (quick)' if result.quick else ''}",
        f"model: write_slow_model({s.features} features, {s.repeats} MatMuls), max_batch_size {s.max_batch_size}, "
        f"{s.threads} onnxruntime thread(s); in process " + ", ".join(f"t({b}) = {ms:.1f} ms" for b, ms in t.items()),
        f"objective: {result.objective_ms:g} ms at p99 ({result.objective_source}; "
        f"{result.objective_ms / t[1]:.1f} x t(1))",
        f"capacity: {result.capacity_rps:,.0f} req/s; closed loop at concurrency {2 * s.max_batch_size} (full "
        f"batches): {result.closed_capacity_rps:,.0f}, the mean of {runs}; open loop at that rate the fixed "
        f"delays served {served}: " + ("they kept up" if kept_up else "they did not keep up, so their mean is the capacity"),
        "loads: " + ", ".join(f"{load.name} {load.fraction:g} x capacity" for load in LOADS)
        + f"; open-loop Poisson, {s.timing.windows} x {s.timing.window_s:g} s measured after {s.timing.warmup_s:g} s",
        "", format_cells(result.cells), "",
        *(f"slo estimate at the end of {load}: {line}" for load, line in result.slo_estimates.items() if line),
        "", format_targets(result.targets),
    ])


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(result: SchedulingBenchResult, path: Path) -> Path:
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _milliseconds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(round(float(v) * 1000) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated milliseconds, got {text!r}") from None
    if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct positive delays, got {text!r}")
    return values


def main(argv: list[str]) -> int:
    defaults = BenchSettings()
    p = argparse.ArgumentParser(prog="fleetserve bench-scheduling", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter points: about 1 minute instead of 3")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for bench_scheduling.json (default .)")
    p.add_argument("--slo-ms", type=float,
                   help=f"latency objective (default: {OBJECTIVE_FACTOR:g} x the full batch's in-process run time)")
    p.add_argument("--delays-ms", type=_milliseconds, default=defaults.delays_us, metavar="MS,MS",
                   help="fixed max_queue_delay settings to compare (default 1,5)")
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size, help="of every schedule (default 8)")
    p.add_argument("--features", type=int, default=defaults.features, help="slow model width (default 2048)")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="slow model MatMuls (default 8)")
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help=f"onnxruntime threads per model (default half the cores: {defaults.threads})")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and arrival schedules")
    args = p.parse_args(argv)
    for name in ("max_batch_size", "features", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.slo_ms is not None and not args.slo_ms > 0:
        p.error("--slo-ms must be positive")
    settings = BenchSettings(
        features=args.features, repeats=args.repeats, max_batch_size=args.max_batch_size, delays_us=args.delays_ms,
        slo_ms=args.slo_ms, threads=args.threads, seed=args.seed, timing=QUICK if args.quick else FULL,
    )
    try:
        result = run_bench_scheduling(settings, quick=args.quick)
    except RuntimeError as exc:
        print(f"bench-scheduling failed: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_report(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_json(result, args.out / "bench_scheduling.json")
    print(f"\nwrote {path} ({result.duration_s:.0f} s)")
    return 0 if all(t.passed for t in result.targets) else 1
