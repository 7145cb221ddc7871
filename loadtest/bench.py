"""``fleetserve bench``: fleetserve against the transport's ceiling and in-process onnxruntime, in one run.

One command, bounded (about 2-3 minutes; ``--quick`` about 30 s), load generator on the same
machine. In order:

1. in-process onnxruntime rows/s on the bundled ``mlp`` at each batch size (again at the end; the
   best batch size up to the model's max_batch_size is the reference);
2. the bare grpc.aio baseline (loadtest/baseline.py, pretending to be ``add_one``): unary and
   stream at concurrency 64;
3. fleetserve on a repository of the bundled ``add_one`` (the tiny model) and ``mlp``: tiny
   unary batch-1 at concurrency 1, 8, 32, 64; tiny stream at 64; mlp unary and stream at 64;
   mlp with 64-row requests; then the server's resident memory.

It prints every rate and issue 5's targets as ratios with PASS/FAIL, and writes bench.json.
Absolute rates drift on shared machines; the ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np

from loadtest import servers
from loadtest.procpool import run_event_loop
from loadtest.wire import max_batch_size
from loadtest.results import PointResult
from loadtest.runner import LoadRunner, RunSettings
from loadtest.soak import format_soak, run_soak
from loadtest.targets import Target

BUNDLED = servers.BUNDLED
BATCH_SIZES = (1, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BenchLoad:
    name: str  # e.g. "tiny unary c=64"
    server: str  # "fleetserve" | "bare"
    model: str
    transport: str
    rows: int
    concurrency: int
    point: PointResult
    round: int = 0  # 1.. for the loads measured in interleaved rounds; 0 for those measured once


@dataclass
class BenchResult:
    created_utc: str
    cpu_count: int
    machine: str
    quick: bool
    inprocess_rows_per_s: dict[int, float]  # mlp, by batch size
    inprocess_best_batch: int  # the best batch size the served model may run (<= its max_batch_size)
    loads: list[BenchLoad]  # every measurement; the round loads once per round
    server_rss_mb: float | None
    server_peak_rss_mb: float | None
    targets: list[Target]


def inprocess_rows_per_s(model: Path, seconds: float, rounds: int = 3) -> dict[int, float]:
    """Rows/s of one onnxruntime CPU session (default options) at each batch size.

    Each size runs ``rounds`` times for ``seconds``; the best round counts (the one least disturbed
    by other work on a shared machine).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    rng = np.random.default_rng(0)
    rates = {batch: 0.0 for batch in BATCH_SIZES}
    for _ in range(rounds):
        for batch in BATCH_SIZES:
            feed = {spec.name: rng.standard_normal((batch, spec.shape[1])).astype(np.float32)}
            session.run(None, feed)
            runs, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                session.run(None, feed)
                runs += 1
            rates[batch] = max(rates[batch], runs * batch / elapsed)
    return rates


def _max_batch_size(address: str, model: str) -> int:
    async def ask() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            return await max_batch_size(channel, model)

    return int(run_event_loop(ask()))


class _Measure:
    """Runs one load against an address with the bench's window settings and records it."""

    def __init__(self, quick: bool, processes: int, say: Callable[[str], None]) -> None:
        self.quick = quick
        self.processes = processes
        self.say = say
        self.loads: list[BenchLoad] = []

    def __call__(self, address: str, server: str, name: str, model: str, transport: str, concurrency: int,
                 rows: int = 1, round_: int = 0) -> BenchLoad:
        window = 0.5 if self.quick else 1.0
        settings = RunSettings(
            targets=(address,), model=model, transport=transport, rows=rows, processes=self.processes,
            warmup_s=window, window_s=window, stable_windows=2 if self.quick else 3,
            max_duration_s=2.5 if self.quick else 10.0, timeout_s=30.0,
        )

        async def run() -> PointResult:
            async with LoadRunner(settings) as runner:
                return await runner.run_point("concurrency", concurrency)

        point = run_event_loop(run())
        load = BenchLoad(name, server, model, transport, rows, concurrency, point, round_)
        self.loads.append(load)
        label = f"{name} (round {round_})" if round_ else name
        self.say(f"  {label:<36} {point.throughput_rps:>9,.0f} req/s  p50 {point.latency_ms.p50:7.2f} ms  "
                 f"p99 {point.latency_ms.p99:7.2f} ms  errors {sum(point.errors.values())}")
        return load


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


ROUND_LOADS = (
    # (name, server, model, transport): measured in this order, once per round, both servers up
    ("bare unary c=64", "bare", "add_one", "unary"),
    ("tiny unary c=64", "fleetserve", "add_one", "unary"),
    ("mlp unary c=64", "fleetserve", "mlp", "unary"),
    ("bare stream c=64", "bare", "add_one", "stream"),
    ("tiny stream c=64", "fleetserve", "add_one", "stream"),
    ("mlp stream c=64", "fleetserve", "mlp", "stream"),
)


def by_name(loads: list[BenchLoad]) -> dict[str, list[BenchLoad]]:
    """Each load's measurements, in round order."""
    out: dict[str, list[BenchLoad]] = {}
    for load in loads:
        out.setdefault(load.name, []).append(load)
    return out


def median_load(measured: list[BenchLoad]) -> BenchLoad:
    """The measurement with the median throughput (the lower middle one of an even count)."""
    ordered = sorted(measured, key=lambda load: load.point.throughput_rps)
    return ordered[(len(ordered) - 1) // 2]


def _round_ratios(loads: dict[str, list[BenchLoad]], top: str, bottom: str) -> list[float]:
    """``top`` / ``bottom`` throughput within each round both were measured in."""
    under = {load.round: load.point.throughput_rps for load in loads[bottom]}
    return [_ratio(load.point.throughput_rps, under[load.round]) for load in loads[top] if load.round in under]


def evaluate_targets(loads: list[BenchLoad], inprocess_best: float, rss_mb: float | None) -> list[Target]:
    """Issue 5's targets as ratios measured side by side: the median over rounds of each round's ratio."""
    named = by_name(loads)

    def ratio_target(name: str, top: str, bottom: str, needed: float, extra: str = "", ok: bool = True) -> Target:
        ratios = _round_ratios(named, top, bottom)
        r = statistics.median(ratios) if ratios else 0.0
        detail = ", ".join(f"{x:.2f}" for x in ratios)
        detail = (f"rounds {detail}" if len(ratios) > 1 else "") + (f"; {extra}" if extra and len(ratios) > 1 else extra)
        return Target(name, r, needed, r >= needed and ok, detail)

    targets = [
        ratio_target("tiny unary / bare unary (c=64)", "tiny unary c=64", "bare unary c=64", 0.8),
        ratio_target("tiny stream / bare stream (c=64)", "tiny stream c=64", "bare stream c=64", 0.7),
    ]
    for transport in ("unary", "stream"):
        mlp = median_load(named[f"mlp {transport} c=64"]).point
        tail = _ratio(mlp.latency_ms.p99, mlp.latency_ms.p50)
        targets.append(ratio_target(f"mlp {transport} / tiny {transport} (c=64), p99 < 3x p50", f"mlp {transport} c=64",
                                    f"tiny {transport} c=64", 0.75, f"p99/p50 = {tail:.2f}", tail < 3))
    rows = median_load(named["mlp 64-row unary c=8"]).point.rows_per_s
    targets.append(Target("mlp 64-row rows/s / in-process best", r := _ratio(rows, inprocess_best), 0.8, r >= 0.8, ""))
    if rss_mb is not None:
        targets.append(Target("server resident memory (MB) <", rss_mb, 400, rss_mb < 400, "after the loads"))
    return targets


def format_bench(result: BenchResult) -> str:
    best = result.inprocess_best_batch
    lines = [f"fleetserve bench, {result.created_utc}, {result.cpu_count} cores, {result.machine}"
             f"{' (quick)' if result.quick else ''}", "",
             f"{'load':<30}{'req/s':>10}{'rows/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}{'errors':>8}{'stable':>8}",
             f"{'in-process onnxruntime mlp b=' + str(best):<30}{'-':>10}"
             f"{result.inprocess_rows_per_s[best]:>11,.0f}{'-':>9}{'-':>9}{best:>7}{'-':>8}"]
    top = max(result.inprocess_rows_per_s, key=lambda b: result.inprocess_rows_per_s[b])
    if top != best:
        lines.append(f"{'  (b=' + str(top) + ', above max_batch_size)':<30}{'-':>10}"
                     f"{result.inprocess_rows_per_s[top]:>11,.0f}{'-':>9}{'-':>9}{top:>7}{'-':>8}")
    for name, measured in by_name(result.loads).items():
        p = median_load(measured).point
        batch = f"{p.mean_batch_size:.1f}" if p.mean_batch_size is not None else "-"
        label = f"{name} (median of {len(measured)})" if len(measured) > 1 else name
        lines.append(f"{label:<30}{p.throughput_rps:>10,.0f}{p.rows_per_s:>11,.0f}{p.latency_ms.p50:>9.2f}"
                     f"{p.latency_ms.p99:>9.2f}{batch:>7}{sum(p.errors.values()):>8}{'yes' if p.stable else 'NO':>8}")
    if result.server_rss_mb is not None:
        lines.append(f"fleetserve resident memory: {result.server_rss_mb:.0f} MB (peak {result.server_peak_rss_mb:.0f} MB)")
    lines += ["", f"{'target':<48}{'measured':>9}{'needed':>9}  result"]
    for t in result.targets:
        below = "memory" in t.name
        op = "<" if below else ">="
        lines.append(f"{t.name:<48}{t.shown(2, below=below):>9}{op + ' ' + format(t.needed, 'g'):>9}  "
                     f"{'PASS' if t.passed else 'FAIL'}{'  ' + t.detail if t.detail else ''}")
    return "\n".join(lines)


def run_bench(quick: bool, processes: int, repository: Path, say: Callable[[str], None] = print) -> BenchResult:
    say(f"in-process onnxruntime on {repository / 'mlp'} ...")
    model, seconds = repository / "mlp" / "1" / "model.onnx", 0.1 if quick else 0.3
    by_batch = inprocess_rows_per_s(model, seconds)
    say("  " + ", ".join(f"b={b}: {r:,.0f}" for b, r in by_batch.items()) + " rows/s")
    measure = _Measure(quick, processes, say)
    rounds = 2 if quick else 3
    say(f"bare grpc.aio baseline (as add_one) and fleetserve (add_one, mlp), {rounds} interleaved rounds ...")
    with tempfile.TemporaryDirectory(prefix="fleetserve-bench-") as tmp, \
            servers.baseline("--model", "add_one") as bare, \
            servers.fleetserve(servers.bench_repository(Path(tmp), repository)) as server:
        # Both servers stay up (an idle one costs nothing) and the loads whose ratios are targets
        # take turns, round after round: a slow minute on a shared machine then lowers both sides
        # of a ratio, and the median round's ratio counts.
        for round_ in range(1, rounds + 1):
            for name, which, served, transport in ROUND_LOADS:
                address = bare.address if which == "bare" else server.address
                measure(address, which, name, served, transport, 64, round_=round_)
        for c in (1, 8, 32):
            measure(server.address, "fleetserve", f"tiny unary c={c}", "add_one", "unary", c)
        measure(server.address, "fleetserve", "mlp 64-row unary c=8", "mlp", "unary", 8, rows=64)
        memory = server.memory_mb()
        # The served model never runs batches above its max_batch_size: the fair in-process reference.
        limit = _max_batch_size(server.address, "mlp") or 1
    # Measured again once the servers are gone; the better of the two counts at each size, so a
    # neighbour's burst during one measurement does not make the reference (and the ratio) wrong.
    say("in-process onnxruntime again ...")
    by_batch = {b: max(r, again) for (b, r), again in zip(by_batch.items(), inprocess_rows_per_s(model, seconds).values())}
    say("  " + ", ".join(f"b={b}: {r:,.0f}" for b, r in by_batch.items()) + " rows/s (best of both)")
    best = max((b for b in by_batch if b <= limit), key=lambda b: by_batch[b])
    rss, peak = memory if memory is not None else (None, None)
    return BenchResult(
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu_count=os.cpu_count() or 1,
        machine=f"{platform.system()} {platform.machine()}, Python {platform.python_version()}", quick=quick,
        inprocess_rows_per_s=by_batch, inprocess_best_batch=best, loads=measure.loads, server_rss_mb=rss,
        server_peak_rss_mb=peak, targets=evaluate_targets(measure.loads, by_batch[best], rss),
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fleetserve bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows: about 30 s instead of 2-3 minutes")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json (default .)")
    p.add_argument("--processes", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument("--model-repository", type=Path, default=BUNDLED,
                   help="where add_one and mlp are taken from (default: the bundled examples)")
    p.add_argument("--soak", type=float, metavar="SECONDS", default=None,
                   help="instead of the bench: cycle its loads on one server for SECONDS (e.g. 300), sampling the "
                        "server's resident memory; passes when it stays under 400 MB and does not grow")
    args = p.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.soak is not None:
        soak = run_soak(args.soak, args.processes, args.model_repository)
        print()
        print(format_soak(soak))
        path = args.out / "soak.json"
        path.write_text(json.dumps(dataclasses.asdict(soak), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path} ({time.monotonic() - started:.0f} s)")
        return 0 if soak.passed else 1
    result = run_bench(args.quick, args.processes, args.model_repository)
    print()
    print(format_bench(result))
    path = args.out / "bench.json"
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=_json_default) + "\n", encoding="utf-8")
    print(f"\nwrote {path} ({time.monotonic() - started:.0f} s)")
    return 0 if all(t.passed for t in result.targets) else 1
