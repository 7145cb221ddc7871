"""``fleetserve bench``: fleetserve against the transport's ceiling and in-process onnxruntime, in one run.

One command, bounded (about 3 minutes; ``--quick`` about 1), load generator on the same
machine. In order:

1. in-process onnxruntime rows/s on the bundled ``mlp`` at each batch size (again at the end; the
   best batch size up to the model's max_batch_size is the reference);
2. the bare grpc.aio baseline (loadtest/baseline.py, pretending to be ``add_one``): unary and
   stream at concurrency 64;
3. fleetserve on a repository of the bundled ``add_one`` (the tiny model) and ``mlp``: tiny
   unary batch-1 at concurrency 1, 8, 32, 64; tiny stream at 64; mlp unary and stream at 64;
   mlp with 64-row requests; then the server's resident memory.

When Triton's perf_analyzer is installed (loadtest/perf_analyzer.py), it drives the concurrency-64
loads of both servers and the 64-row load a second time, right after the harness in each round; its
ratios are targets too. A C++ load generator leaves more of the shared cores to the servers.

It prints every rate and issue 5's targets as ratios with PASS/FAIL, and writes bench.json.
Absolute rates drift on shared machines; the ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np

from loadtest import perf_analyzer, servers
from loadtest.bench_targets import by_name, evaluate_targets, median_load
from loadtest.perf_analyzer import PaResult, PerfAnalyzer
from loadtest.procpool import run_event_loop
from loadtest.results import PointResult
from loadtest.runner import LoadRunner, RunSettings
from loadtest.servers import ServedProcess
from loadtest.soak import format_soak, run_soak
from loadtest.targets import Target
from loadtest.wire import max_batch_size
from ops.cores import available_cores

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
    server_cpu_us: float | None = None  # the server process's CPU time per request (/proc), warm-up included

    @property
    def throughput_rps(self) -> float:
        return self.point.throughput_rps

    @property
    def rows_per_s(self) -> float:
        return self.point.rows_per_s

    @property
    def p50_ms(self) -> float:
        return self.point.latency_ms.p50

    @property
    def p99_ms(self) -> float:
        return self.point.latency_ms.p99


@dataclass(frozen=True)
class PaLoad:
    """One load driven by perf_analyzer (asynchronous; the stream with ``--streaming``)."""

    name: str
    server: str
    model: str
    transport: str
    rows: int
    concurrency: int
    result: PaResult
    round: int = 0
    server_cpu_us: float | None = None

    @property
    def throughput_rps(self) -> float:
        return self.result.throughput / self.rows  # perf_analyzer counts inferences: rows

    @property
    def rows_per_s(self) -> float:
        return self.result.throughput

    @property
    def p50_ms(self) -> float:
        return self.result.p50_ms

    @property
    def p99_ms(self) -> float:
        return self.result.p99_ms


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
    perf_analyzer: str | None = None  # its version, when it drove the loads a second time
    pa_loads: list[PaLoad] = dataclasses.field(default_factory=list)


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
    """Runs one load against a server with the bench's window settings and records it, with the server's CPU."""

    def __init__(self, quick: bool, processes: int, say: Callable[[str], None]) -> None:
        self.quick = quick
        self.processes = processes
        self.say = say
        self.loads: list[BenchLoad] = []

    def __call__(self, target: ServedProcess, server: str, name: str, model: str, transport: str, concurrency: int,
                 rows: int = 1, round_: int = 0) -> BenchLoad:
        window = 0.5 if self.quick else 1.0
        settings = RunSettings(
            targets=(target.address,), model=model, transport=transport, rows=rows, processes=self.processes,
            warmup_s=window, window_s=window, stable_windows=2 if self.quick else 3,
            max_duration_s=2.5 if self.quick else 10.0, timeout_s=30.0,
        )

        async def run() -> PointResult:
            async with LoadRunner(settings) as runner:
                return await runner.run_point("concurrency", concurrency)

        with _ServerCpu(target) as cpu:
            point = run_event_loop(run())
        load = BenchLoad(name, server, model, transport, rows, concurrency, point, round_,
                         cpu.per_request_us(point.throughput_rps))
        self.loads.append(load)
        label = f"{name} (round {round_})" if round_ else name
        self.say(f"  {label:<45} {point.throughput_rps:>9,.0f} req/s  p50 {point.latency_ms.p50:7.2f} ms  "
                 f"p99 {point.latency_ms.p99:7.2f} ms  errors {sum(point.errors.values())}{_cpu_text(load.server_cpu_us)}")
        return load


class _ServerCpu:
    """The server process's CPU time (all its threads) over one load, as time per request at the load's rate.

    The whole load counts, warm-up included, at the rate its measured windows saw: CPU time that
    other processes' work does not inflate, so it compares servers more steadily than their rates."""

    def __init__(self, server: ServedProcess) -> None:
        self.server = server
        self.cores: float | None = None

    def __enter__(self) -> "_ServerCpu":
        self._cpu, self._wall = self.server.cpu_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu, wall = self.server.cpu_seconds(), time.monotonic()
        if cpu is not None and self._cpu is not None and wall > self._wall:
            self.cores = (cpu - self._cpu) / (wall - self._wall)

    def per_request_us(self, requests_per_s: float) -> float | None:
        return self.cores / requests_per_s * 1e6 if self.cores is not None and requests_per_s > 0 else None


def _cpu_cell(us: float | None) -> str:
    return f"{us:>8,.0f}" if us is not None else f"{'-':>8}"


def _cpu_text(us: float | None) -> str:
    return f"  server cpu {us:,.0f} us/req" if us is not None else ""


ROUND_LOADS = (
    # (name, server, model, transport): measured in this order, once per round, both servers up
    ("bare unary c=64", "bare", "add_one", "unary"),
    ("tiny unary c=64", "fleetserve", "add_one", "unary"),
    ("mlp unary c=64", "fleetserve", "mlp", "unary"),
    ("bare stream c=64", "bare", "add_one", "stream"),
    ("tiny stream c=64", "fleetserve", "add_one", "stream"),
    ("mlp stream c=64", "fleetserve", "mlp", "stream"),
)


def format_bench(result: BenchResult) -> str:
    best = result.inprocess_best_batch
    lines = [f"fleetserve bench, {result.created_utc}, {result.cpu_count} cores, {result.machine}"
             f"{' (quick)' if result.quick else ''}", "",
             f"{'load':<30}{'req/s':>10}{'rows/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}{'errors':>8}{'stable':>8}"
             f"{'cpu us':>8}",
             f"{'in-process onnxruntime mlp b=' + str(best):<30}{'-':>10}"
             f"{result.inprocess_rows_per_s[best]:>11,.0f}{'-':>9}{'-':>9}{best:>7}{'-':>8}"]
    top = max(result.inprocess_rows_per_s, key=lambda b: result.inprocess_rows_per_s[b])
    if top != best:
        lines.append(f"{'  (b=' + str(top) + ', above max_batch_size)':<30}{'-':>10}"
                     f"{result.inprocess_rows_per_s[top]:>11,.0f}{'-':>9}{'-':>9}{top:>7}{'-':>8}")
    for name, measured in by_name(result.loads).items():
        load = median_load(measured)
        p = load.point
        batch = f"{p.mean_batch_size:.1f}" if p.mean_batch_size is not None else "-"
        label = f"{name} (median of {len(measured)})" if len(measured) > 1 else name
        lines.append(f"{label:<30}{p.throughput_rps:>10,.0f}{p.rows_per_s:>11,.0f}{p.latency_ms.p50:>9.2f}"
                     f"{p.latency_ms.p99:>9.2f}{batch:>7}{sum(p.errors.values()):>8}{'yes' if p.stable else 'NO':>8}"
                     f"{_cpu_cell(load.server_cpu_us)}")
    if result.server_rss_mb is not None:
        lines.append(f"fleetserve resident memory: {result.server_rss_mb:.0f} MB (peak {result.server_peak_rss_mb:.0f} MB)")
    if result.pa_loads:
        lines += ["", f"driven by {result.perf_analyzer} (--async, --streaming for the stream)"]
        for name, pa_measured in by_name(result.pa_loads).items():
            m = median_load(pa_measured)
            label = f"{name} (median of {len(pa_measured)})" if len(pa_measured) > 1 else name
            queue = m.result.server_queue_us
            lines.append(f"{label:<30}{m.throughput_rps:>10,.0f}{m.rows_per_s:>11,.0f}{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}"
                         f"{'':>23}{_cpu_cell(m.server_cpu_us)}" + (f"  queue {queue:,.0f} us" if queue is not None else ""))
    lines += ["", f"{'target':<59}{'measured':>9}{'needed':>9}  result"]
    for t in result.targets:
        below = "memory" in t.name
        op = "<" if below else ">="
        lines.append(f"{t.name:<59}{t.shown(2, below=below):>9}{op + ' ' + format(t.needed, 'g'):>9}  "
                     f"{'PASS' if t.passed else 'FAIL'}{'  ' + t.detail if t.detail else ''}")
    return "\n".join(lines)


def _pa_measure(pa: PerfAnalyzer, quick: bool, say: Callable[[str], None], loads: list[PaLoad], target: ServedProcess,
                server: str, name: str, model: str, transport: str, concurrency: int, rows: int = 1,
                round_: int = 0) -> None:
    with _ServerCpu(target) as cpu:
        result = perf_analyzer.run(pa, target.address, model, concurrency=concurrency,
                                   streaming=transport == "stream", batch=rows, window_ms=500 if quick else 1000)
    load = PaLoad(name, server, model, transport, rows, concurrency, result, round_,
                  cpu.per_request_us(result.throughput / rows))
    loads.append(load)
    label = f"{name} (round {round_})" if round_ else name
    say(f"  {label + ', perf_analyzer':<45} {load.throughput_rps:>9,.0f} req/s  p50 {load.p50_ms:7.2f} ms  "
        f"p99 {load.p99_ms:7.2f} ms{_cpu_text(load.server_cpu_us)}")


def run_bench(quick: bool, processes: int, repository: Path, say: Callable[[str], None] = print,
              pa: PerfAnalyzer | None = None) -> BenchResult:
    """The bench; with ``pa``, perf_analyzer drives the same loads too, in the same rounds, for its own targets."""
    say(f"in-process onnxruntime on {repository / 'mlp'} ...")
    model, seconds = repository / "mlp" / "1" / "model.onnx", 0.1 if quick else 0.3
    by_batch = inprocess_rows_per_s(model, seconds)
    say("  " + ", ".join(f"b={b}: {r:,.0f}" for b, r in by_batch.items()) + " rows/s")
    measure = _Measure(quick, processes, say)
    rounds = 2 if quick else 3
    pa_loads: list[PaLoad] = []
    say(f"bare grpc.aio baseline (as add_one) and fleetserve (add_one, mlp), {rounds} interleaved rounds ...")
    with tempfile.TemporaryDirectory(prefix="fleetserve-bench-") as tmp, \
            servers.baseline("--model", "add_one") as bare, \
            servers.fleetserve(servers.bench_repository(Path(tmp), repository)) as server:
        # Both servers stay up (an idle one costs nothing) and the loads whose ratios are targets
        # take turns, round after round: a slow minute on a shared machine then lowers both sides
        # of a ratio, and the median round's ratio counts.
        for round_ in range(1, rounds + 1):
            for name, which, served, transport in ROUND_LOADS:
                measure(bare if which == "bare" else server, which, name, served, transport, 64, round_=round_)
            if pa is not None:  # perf_analyzer drives the same loads in the same round
                for name, which, served, transport in ROUND_LOADS:
                    _pa_measure(pa, quick, say, pa_loads, bare if which == "bare" else server, which, name, served,
                                transport, 64, round_=round_)
        for c in (1, 8, 32):
            measure(server, "fleetserve", f"tiny unary c={c}", "add_one", "unary", c)
        measure(server, "fleetserve", "mlp 64-row unary c=8", "mlp", "unary", 8, rows=64)
        if pa is not None:
            _pa_measure(pa, quick, say, pa_loads, server, "fleetserve", "mlp 64-row unary c=8", "mlp", "unary",
                        8, rows=64)
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
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu_count=available_cores(),
        machine=f"{platform.system()} {platform.machine()}, Python {platform.python_version()}", quick=quick,
        inprocess_rows_per_s=by_batch, inprocess_best_batch=best, loads=measure.loads, server_rss_mb=rss,
        server_peak_rss_mb=peak, perf_analyzer=pa.version() if pa is not None else None, pa_loads=pa_loads,
        targets=evaluate_targets(measure.loads, by_batch[best], rss)
        + (evaluate_targets(pa_loads, by_batch[best], None, "perf_analyzer") if pa is not None else []),
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fleetserve bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows: about 1 minute instead of about 3")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json (default .)")
    p.add_argument("--processes", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument("--model-repository", type=Path, default=BUNDLED,
                   help="where add_one and mlp are taken from (default: the bundled examples)")
    p.add_argument("--soak", type=float, metavar="SECONDS", default=None,
                   help="instead of the bench: cycle its loads on one server for SECONDS (e.g. 300), sampling the "
                        "server's resident memory; passes when it stays under 400 MB and does not grow")
    p.add_argument("--no-perf-analyzer", action="store_true",
                   help="drive the loads with the harness only (by default perf_analyzer drives them too, when found)")
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
    pa = None if args.no_perf_analyzer else perf_analyzer.locate()
    if pa is None and not args.no_perf_analyzer:
        print(f"perf_analyzer not found, so only the harness drives the loads; {perf_analyzer.INSTALL_HINT}")
    result = run_bench(args.quick, args.processes, args.model_repository, pa=pa)
    print()
    print(format_bench(result))
    path = args.out / "bench.json"
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=_json_default) + "\n", encoding="utf-8")
    print(f"\nwrote {path} ({time.monotonic() - started:.0f} s)")
    return 0 if all(t.passed for t in result.targets) else 1
