"""Command line of the harness: ``fleetserve loadtest|bench|bench-scheduling|plan`` (also ``python -m loadtest ...``).

``server/cli.py`` only delegates here; this module imports nothing heavy at import time, so the
``fleetserve`` command stays quick to start.

Exit status of ``loadtest``: 0 when the run completed (and every ``--assert`` clause held),
1 when an ``--assert`` clause failed, 2 for bad usage or a run that could not be made.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from loadtest.connections import ClientTls

COMMANDS: dict[str, str] = {
    "loadtest": "drive an Open Inference Protocol server over gRPC or HTTP and report latency, throughput, goodput",
    "bench": "benchmark fleetserve against a bare gRPC server and in-process onnxruntime (issue 5's ratios)",
    "bench-scheduling": "benchmark no batching, fixed delays and SLO mode at three loads (issue 3's targets)",
    "plan": "capacity planning: replicas and cores for a target rate, from a loadtest result",
}


def _numbers(kind: Callable[[str], float]) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values or not all(0 < v < math.inf for v in values):  # nan is neither
            raise argparse.ArgumentTypeError(f"expected positive, finite numbers, got {text!r}")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:  # the level would be measured twice, two rows of one label in every report
            raise argparse.ArgumentTypeError(f"{', '.join(f'{v:g}' for v in repeated)} given more than once in {text!r}")
        return values

    return parse


def loadtest_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleetserve loadtest",
        description="Drive an Open Inference Protocol server (fleetserve, Triton, MLServer) over gRPC or HTTP/REST. "
                    "Open loop (Poisson arrivals at --rate) unless --concurrency is given.",
    )
    p.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                   help="server address; repeat (or comma-separate) to spread requests round-robin (default "
                        "127.0.0.1:8001, or 127.0.0.1:8000 over HTTP)")
    p.add_argument("--model", help="model name (required unless --compare)")
    p.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    p.add_argument("--transport", choices=["unary", "stream", "http", "http-binary"], default="unary",
                   help="unary ModelInfer, requests over ModelStreamInfer streams, or POST .../infer over HTTP with "
                        "JSON tensors (http) or Triton's binary tensor extension (http-binary) (default unary)")
    p.add_argument("--concurrency", type=_numbers(int), metavar="N,N,...",
                   help="closed loop: requests kept in flight, a sweep such as 1,8,32,64")
    p.add_argument("--rate", type=_numbers(float), metavar="R,R,...",
                   help="open loop: offered requests/s, a sweep such as 500,1000,2000 (default 100 when no --concurrency)")
    p.add_argument("--rows", type=int, help="rows (batch size) per request, for models whose inputs have a -1 batch "
                   "dimension first (default 1)")
    p.add_argument("--input-file", type=Path, help=".npz with one array per input name, sent as is, the first "
                   "dimension being the rows (default: random inputs shaped from ModelMetadata)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and arrival schedules, recorded in the result")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="open loop: gamma shape of inter-arrival gaps; 1 = Poisson, < 1 burstier")
    p.add_argument("--slo-ms", type=float, help="latency objective: goodput counts requests answered within it")
    p.add_argument("--warmup-s", type=float, default=2.0, help="excluded from measurement (default 2)")
    p.add_argument("--window-s", type=float, default=2.0, help="measurement window length (default 2)")
    p.add_argument("--stable-windows", type=int, default=3,
                   help="measure until this many consecutive windows agree (default 3)")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="windows agree when each is within this fraction of their mean (default 0.10)")
    p.add_argument("--max-duration-s", type=float, default=30.0,
                   help="time bound per load level, warm-up included (default 30)")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="request bound per load level (default 1e6)")
    p.add_argument("--max-inflight", type=int, default=1000,
                   help="open loop: arrivals beyond this many outstanding requests are dropped and counted as CLIENT_DROPPED (default 1000)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="deadline of each unary request (default 10)")
    p.add_argument("--processes", type=int, default=1,
                   help="load-generator processes sharing the load, when one process is the bottleneck (default 1)")
    p.add_argument("--sequence-length", type=int, default=0, metavar="N",
                   help="for a model that runs sequences (sequence_batching): each concurrency slot sends "
                        "sequences of N requests (sequence_id, start, end), closed loop over gRPC (default 0: none)")
    p.add_argument("--streams", type=int, default=1, help="stream transport: streams per target per process (default 1)")
    p.add_argument("--tls", action="store_true", help="connect over TLS, checking the servers' certificates "
                   "against the system's CAs (--tls-ca, --tls-cert or --tls-server-name imply it)")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="the CA bundle the servers' certificates must chain to")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="mutual TLS: this client's certificate chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="mutual TLS: this client's private key")
    p.add_argument("--tls-server-name", default="", metavar="NAME",
                   help="gRPC: the name the servers' certificates are checked for, when not the target's host")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="send this header with every call (gRPC metadata, HTTP header; repeatable), e.g. the key "
                        "of a restricted API: triton-grpc-protocol-infer-key:VALUE")
    p.add_argument("--out", type=Path, help="folder for NAME.json, NAME.csv and NAME.png")
    p.add_argument("--name", help="file name stem in --out (default from model and transport)")
    p.add_argument("--label", help="label of this run in tables and plots")
    p.add_argument("--assert", dest="checks", metavar="EXPR",
                   help="e.g. 'p99<50ms,errors<0.1%%,throughput>1000': exit 1 unless every clause holds at every level")
    p.add_argument("--compare", nargs="+", type=Path, metavar="RESULT.json",
                   help="plot and tabulate saved results together (no load is sent); writes compare.png/.csv to --out")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    return p


def _progress(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda line: None
    if sys.stderr.isatty():
        return lambda line: print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)
    return lambda line: print(line, file=sys.stderr, flush=True)


def _plot(results: list, path: Path, title: str) -> list[Path]:
    """The PNG, or none (with a note) where matplotlib, an optional dependency, is not installed."""
    from loadtest.report import plot_latency_throughput

    try:
        return [plot_latency_throughput(results, path, title)]
    except ImportError:
        print(f"note: no {path.name}: matplotlib is not installed (pip install 'fleetserve[loadtest]')", file=sys.stderr)
        return []


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from loadtest.checks import CheckSyntaxError, evaluate_checks, parse_checks
    from loadtest.report import format_checks, format_table, write_csv
    from loadtest.results import LoadtestResult

    try:
        checks = parse_checks(args.checks, slo_ms=math.inf) if args.checks is not None else []  # goodput: below
        results = [LoadtestResult.load(path) for path in args.compare]
        if any(c.metric == "goodput" for c in checks):
            unmeasured = [str(path) for path, r in zip(args.compare, results) if r.slo_ms is None]
            if unmeasured:
                raise CheckSyntaxError(f"goodput: {', '.join(unmeasured)} measured no goodput (run without --slo-ms)")
        for result in results:
            print(format_table(result), end="\n\n")
        out = args.out or Path(".")
        out.mkdir(parents=True, exist_ok=True)
        files = [*_plot(results, out / "compare.png", "comparison"), write_csv(results, out / "compare.csv")]
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    print("wrote " + " and ".join(str(f) for f in files))
    passed = True
    for result in results if checks else []:  # every clause at every level of every result, as after a run
        outcomes = evaluate_checks(checks, result.points)
        print(f"{result.label}:\n{format_checks(outcomes)}")
        passed = passed and all(o.passed for o in outcomes)
    return 0 if passed else 1


def _describe(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a gRPC error: its status, not its multi-line repr
        return f"{code().name}: {details()}"
    if isinstance(exc, TimeoutError):
        return "timed out connecting to the target"
    return " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever a server answered


def run_loadtest(argv: list[str]) -> int:
    parser = loadtest_parser()
    args = parser.parse_args(argv)
    if args.compare:
        return _compare(args, parser)
    if not args.model:
        parser.error("--model is required")
    if args.rows is not None and args.input_file is not None:
        parser.error("--rows and --input-file: the file's arrays are sent as stored (their first dimension is the "
                     "rows); drop --rows")
    from loadtest.checks import CheckSyntaxError, evaluate_checks, parse_checks
    from loadtest.procpool import run_event_loop
    from loadtest.report import format_checks, format_table, write_csv, write_json
    from loadtest.results import LoadtestResult
    from loadtest.connections import parse_header
    from loadtest.runner import LoadRunner, RunSettings
    from loadtest.wire import file_inputs

    default_target = "127.0.0.1:8000" if args.transport.startswith("http") else "127.0.0.1:8001"
    targets = tuple(t.strip() for arg in (args.target or [default_target]) for t in arg.split(",") if t.strip())
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:  # one server counted as several replicas: plan would divide its capacity among them
        parser.error(f"--target {', '.join(repeated)} given more than once")
    try:
        if args.input_file is not None:
            file_inputs(args.input_file)  # a file that cannot be sent is a usage error, before any connection
        settings = RunSettings(
            targets=targets, model=args.model, model_version=args.model_version, transport=args.transport,
            rows=1 if args.rows is None else args.rows, input_file=args.input_file, seed=args.seed, slo_ms=args.slo_ms,
            processes=args.processes, streams=args.streams, warmup_s=args.warmup_s, window_s=args.window_s,
            stable_windows=args.stable_windows,
            tolerance=args.tolerance, max_duration_s=args.max_duration_s, max_requests=args.max_requests,
            max_inflight=args.max_inflight, timeout_s=args.timeout_s, burstiness=args.burstiness,
            sequence_length=args.sequence_length, tls=_tls(args),
            headers=tuple(parse_header(h) for h in args.header),
        )
        checks = parse_checks(args.checks, slo_ms=args.slo_ms) if args.checks is not None else []
    except (OSError, ValueError) as exc:  # CheckSyntaxError is a ValueError
        parser.error(str(exc))
    concurrency = [int(c) for c in args.concurrency or []]
    rates = list(args.rate or ([] if concurrency else [100.0]))
    if args.sequence_length and rates:
        parser.error("--sequence-length needs --concurrency (closed loop): a sequence's requests go one after "
                     "another, which open-loop arrivals do not")

    async def run() -> LoadtestResult:
        async with LoadRunner(settings, _progress(args.quiet)) as runner:
            await runner.probe()  # a request the targets refuse is a run that cannot be made, not a sweep of errors
            return await runner.run(concurrency, rates, label=args.label or "", command=["fleetserve", "loadtest", *argv])

    try:
        result = run_event_loop(run())
    except Exception as exc:  # connection refused, unknown model...: one line, not a traceback
        print(f"\nloadtest failed: {_describe(exc)}", file=sys.stderr)
        return 2
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    print(format_table(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.name or re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{args.model}-{args.transport}-x{result.rows_per_request}")
        files = [write_json(result, args.out / f"{stem}.json"), write_csv([result], args.out / f"{stem}.csv"),
                 *_plot([result], args.out / f"{stem}.png", result.label)]
        print("wrote " + ", ".join(str(f) for f in files))
    if checks:
        outcomes = evaluate_checks(checks, result.points)
        print(format_checks(outcomes))
        return 0 if all(o.passed for o in outcomes) else 1
    return 0


def _tls(args: argparse.Namespace) -> "ClientTls | None":
    from loadtest.connections import ClientTls

    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return ClientTls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)


def main(argv: list[str] | None = None) -> int:
    """``[loadtest|bench|bench-scheduling|plan] ARGS...``; without a command word, ``loadtest``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "loadtest"
    if command == "bench":
        from loadtest.bench import main as bench_main

        return bench_main(argv)
    if command == "bench-scheduling":
        from loadtest.bench_scheduling import main as bench_scheduling_main

        return bench_scheduling_main(argv)
    if command == "plan":
        from loadtest.plan import main as plan_main

        return plan_main(argv)
    return run_loadtest(argv)
