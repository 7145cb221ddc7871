"""``fleetserve fleet up``: a local fleet on loopback, for development and load tests.

Starts N ``fleetserve serve`` processes on 127.0.0.1 (ports chosen by the OS) and, unless
``--redis-url`` names one, a local ``redis-server`` (Debian's) that every replica is given as
``--redis-url``. Prints each replica's gRPC, HTTP and metrics addresses and a gRPC client target
for round-robin balancing (``ipv4:127.0.0.1:P1,127.0.0.1:P2`` with
``grpc.lb_policy_name=round_robin``), then forwards the replicas' logs to stderr until SIGINT
(Ctrl-C) or SIGTERM. Then every replica gets SIGTERM and drains (README "Command line"), and
after they exited, the redis-server this command started stops. The children run in their own
sessions, so a terminal's Ctrl-C reaches this command only and each replica sees one signal.
Arguments after ``--`` go to every ``fleetserve serve``. Exit status: 0 after a clean stop, 1 when
the fleet could not start or a replica died on its own.

Reuses server/testing.py's ServerProcess and ops/redis_testing.py's RedisServer.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from ops.redis_testing import RedisServer
from server.settings import EXAMPLE_REPOSITORY
from server.testing import ServerProcess


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetserve fleet up",
                                description="start N replicas (and a redis-server) on loopback until Ctrl-C/SIGTERM",
                                epilog="arguments after -- go to every `fleetserve serve`")
    p.add_argument("--replicas", type=int, required=True, help="how many `fleetserve serve` processes")
    p.add_argument("--model-repository", default=str(EXAMPLE_REPOSITORY),
                   help="a folder or an s3:// or http(s):// URL (default: the bundled examples)")
    p.add_argument("--redis-url", default="",
                   help="the fleet's Redis (default: start a local redis-server, stopped with the fleet)")
    p.add_argument("--replica-prefix", default="local", help="replica ids are PREFIX-0, PREFIX-1, ... (default local)")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds each replica may take to load (default 60)")
    p.add_argument("--quiet", action="store_true", help="do not forward the replicas' logs to stderr")
    return p


def client_target(addresses: list[str]) -> str:
    """A gRPC target naming every address, for ``grpc.lb_policy_name=round_robin``."""
    return "ipv4:" + ",".join(addresses)


def describe(servers: list[tuple[str, ServerProcess]], redis_url: str, redis: RedisServer | None) -> str:
    rows = [["REPLICA", "GRPC", "HTTP", "METRICS", "PID"]]
    rows += [[rid, s.grpc_address, s.http_address, s.metrics_url, str(s.proc.pid if s.proc else "-")]
             for rid, s in servers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    started = f" (started here, pid {redis.proc.pid}; stops with the fleet)" if redis and redis.proc else ""
    return (f"redis: {redis_url}{started}\n{table}\n"
            f"grpc target (round_robin): {client_target([s.grpc_address for _, s in servers])}\n"
            f"status: fleetserve fleet --redis-url {redis_url} status\n"
            f"fleet up: {len(servers)} replica(s) ready; Ctrl-C or SIGTERM stops them")


def _start_all(servers: list[ServerProcess]) -> BaseException | None:
    def start(server: ServerProcess) -> BaseException | None:
        try:
            server.start()
        except BaseException as exc:  # reported after every start finished
            return exc
        return None

    with ThreadPoolExecutor(len(servers)) as pool:
        failed = [exc for exc in pool.map(start, servers) if exc is not None]
    return failed[0] if failed else None


def _stop_all(servers: list[ServerProcess], drain_s: float) -> list[int]:
    with ThreadPoolExecutor(max(1, len(servers))) as pool:  # in parallel: each drains on its own
        return list(pool.map(lambda s: s.stop(signal.SIGTERM, drain_s), servers))


def run(args: argparse.Namespace, serve_args: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        stop: threading.Event | None = None) -> int:
    """Start the fleet and serve until SIGINT/SIGTERM (or ``stop`` is set, for callers in the same process)."""
    if args.replicas < 1:
        print("fleetserve fleet up: --replicas must be at least 1", file=err)
        return 2
    stopping = stop if stop is not None else threading.Event()
    received: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        received.append(sig)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    redis: RedisServer | None = None
    servers: list[tuple[str, ServerProcess]] = []
    code = 0
    try:
        redis_url = args.redis_url
        if not redis_url:
            try:
                redis = RedisServer(new_session=True).start()
            except RuntimeError as exc:
                print(f"fleetserve fleet up: {exc} (or pass --redis-url)", file=err)
                return 1
            redis_url = redis.url
        ids = [f"{args.replica_prefix}-{i}" for i in range(args.replicas)]
        servers = [(rid, ServerProcess(args.model_repository, "--redis-url", redis_url, "--replica-id", rid,
                                       *serve_args, ready_timeout_s=args.ready_timeout, new_session=True))
                   for rid in ids]
        failure = _start_all([s for _, s in servers])
        if failure is not None:
            print(f"fleetserve fleet up: a replica did not start: {failure}", file=err)
            return 1
        print(describe(servers, redis_url, redis), file=out, flush=True)
        while not stopping.wait(0.2):
            for rid, s in servers:  # forwarded (or, --quiet, dropped): a fleet up running for days keeps none
                lines = s.lines[:]
                del s.lines[:len(lines)]  # the reader thread only appends
                if not args.quiet:
                    err.writelines(f"[{rid}] {line}" for line in lines)
            err.flush()
            dead = [(rid, s.proc.returncode) for rid, s in servers if s.proc is not None and s.proc.poll() is not None]
            if dead:
                print("fleetserve fleet up: " + ", ".join(f"{rid} exited with status {rc}" for rid, rc in dead)
                      + "; stopping the fleet", file=err)
                code = 1
                break
        if received:
            print(f"fleet up: {signal.Signals(received[0]).name}: stopping {len(servers)} replica(s)", file=err,
                  flush=True)
    finally:
        statuses = _stop_all([s for _, s in servers], drain_s=60.0)
        if servers:
            print("fleet up: replicas exited: " + ", ".join(f"{rid} {rc}" for (rid, _), rc in zip(servers, statuses)),
                  file=err)
        if redis is not None:
            redis.stop()
            print("fleet up: redis-server stopped", file=err)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def main(argv: list[str]) -> int:
    if "--" in argv:
        at = argv.index("--")
        argv, serve_args = argv[:at], argv[at + 1:]
    else:
        serve_args = []
    return run(parser().parse_args(argv), serve_args)
