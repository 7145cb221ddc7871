"""The ``fleetserve`` command: ``serve`` and ``models``; ``loadtest``, ``bench`` and ``plan`` delegate to loadtest/cli.py,
``fleet`` to server/fleet_cli.py.

Reads the command line once into Settings; nothing else reads arguments or
environment variables.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from loadtest.cli import COMMANDS as LOADTEST_COMMANDS, main as loadtest_main
from model_store.remote import MirrorConfig
from ops.logs import LOG_FORMATS, configure_logging
from ops.histograms import DEFAULT_BATCH_SIZE_BUCKETS, DEFAULT_LATENCY_BUCKETS_S, MetricsConfig, bucket_problem
from server.dataplane import ControlMode
from server.settings import EXAMPLE_REPOSITORY, TRACE_EXPORTERS, FleetSettings, Settings
from server.restrictions import CATEGORIES, parse_restriction
from server.tls_cli import add_tls_arguments, switch, tls_configs
from server.grpc_options import COMPRESSION_LEVELS, GrpcKeepalive


def _buckets(text: str) -> tuple[float, ...]:
    """Histogram bounds: comma-separated numbers, positive, finite and strictly increasing (argparse names the flag)."""
    try:
        bounds = tuple(float(b) for b in text.split(",")) if text.strip() else ()
    except ValueError:  # a word, or an empty entry ("1,,2", "1,2,")
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    problem = bucket_problem(bounds)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return bounds


def _csv(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _repository(args: argparse.Namespace) -> tuple[Path, MirrorConfig | None]:
    """The local folder to serve from and, for an s3:// or http(s):// repository, its mirror's config."""
    location: str = args.model_repository
    if "://" not in location:
        if args.s3_endpoint_url:
            raise ValueError("--s3-endpoint-url applies to s3:// model repositories only")
        return Path(location), None
    cache = args.model_cache_dir
    if cache is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetserve" / "models"
    remote = MirrorConfig(location, cache, args.s3_endpoint_url or None)
    return remote.root, remote


def _add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the models of a repository over gRPC and HTTP/REST")
    p.add_argument("--model-repository", default=str(EXAMPLE_REPOSITORY),
                   help="repository folder <repo>/<model>/<version>/model.onnx, or a remote one: s3://bucket/prefix, "
                        "http(s)://host/path (default: the bundled examples)")
    p.add_argument("--model-cache-dir", type=Path, default=None,
                   help="remote repositories: where their verified local copy is kept "
                        "(default $XDG_CACHE_HOME/fleetserve/models, else ~/.cache/fleetserve/models)")
    p.add_argument("--s3-endpoint-url", default=None,
                   help="s3:// repositories: an S3-compatible server instead of AWS, e.g. http://127.0.0.1:9000 "
                        "(empty: AWS); credentials come from the AWS_* variables or profile")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    for name, what in (("grpc", "gRPC"), ("http", "HTTP/REST"), ("metrics", "the metrics endpoint")):
        p.add_argument(f"--{name}-address", default="", metavar="ADDRESS",
                       help=f"address {what} listens on (default: --host)")
        p.add_argument(f"--allow-{name}", type=switch, nargs="?", const=True, default=True, metavar="BOOL",
                       help=f"serve {what} (default true; false: that port is not opened)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default 8000)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--model-control-mode", choices=[m.value for m in ControlMode], default="none",
                   help="none: load all at start-up; poll: also re-scan the repository; "
                        "explicit: only RepositoryModelLoad/Unload change what is served")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="with explicit control: a model to load at start-up (repeatable)")
    p.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll mode: seconds between scans")
    p.add_argument("--max-queue-size", type=int, default=1024,
                   help="requests a model version may queue when its config sets no max_queue_size")
    p.add_argument("--grpc-max-connection-age", type=float, default=0.0, metavar="SECONDS",
                   help="close each gRPC connection after this long so clients rebalance onto new replicas "
                        "(0: never; calls in flight get --drain-timeout to finish)")
    p.add_argument("--grpc-max-concurrent-streams", type=int, default=1024, metavar="N",
                   help="calls one gRPC connection may have open at once; its client queues the rest (default 1024)")
    keepalive = GrpcKeepalive()
    for flag, default, text in (
        ("--grpc-keepalive-time", keepalive.time_ms, "ping a connection idle this long, in ms"),
        ("--grpc-keepalive-timeout", keepalive.timeout_ms, "close a connection whose ping is not answered "
                                                           "within this, in ms"),
        ("--grpc-http2-max-pings-without-data", keepalive.max_pings_without_data,
         "pings the server sends with no data between them (0: no limit)"),
        ("--grpc-http2-min-recv-ping-interval-without-data", keepalive.min_recv_ping_interval_without_data_ms,
         "shortest interval, in ms, between a client's pings while it sends nothing; sooner ones are strikes"),
        ("--grpc-http2-max-ping-strikes", keepalive.max_ping_strikes,
         "strikes tolerated before GOAWAY too_many_pings ends the connection's calls (0: no limit)"),
    ):
        p.add_argument(flag, type=int, default=default, metavar="N", help=f"{text} (default {default})")
    p.add_argument("--grpc-keepalive-permit-without-calls", type=switch, nargs="?", const=True, default=False,
                   metavar="BOOL", help="clients may ping a connection with no call open (default false)")
    p.add_argument("--grpc-infer-response-compression-level", choices=list(COMPRESSION_LEVELS), default="none",
                   help="compress gRPC responses at this level, in an algorithm the client accepts (default none; "
                        "compressed requests are read whatever this says)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish on shutdown; also how long a sequence "
                        "model's version leaving service (a reload) serves its live sequences (default 30)")
    p.add_argument("--http-max-body-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest REST request body accepted; larger ones are answered 413 (default 64 MiB)")
    p.add_argument("--http-body-idle-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a REST request body of 1 MiB or more, or chunked, that stops arriving for this long is "
                        "answered 408 and its connection closed (default 30)")
    p.add_argument("--strict-readiness", type=switch, nargs="?", const=True, default=False, metavar="BOOL",
                   help="ready only while every model loaded serves, none failed (the protocol's 'server ready'; "
                        "default false: one bad model pushed to a polled repository would take every replica "
                        "out of service)")
    p.add_argument("--shutdown-delay", type=float, default=0.0,
                   help="on shutdown, seconds to keep serving while reporting not ready, so load balancers "
                        "stop routing here before the listeners close (default 0)")
    p.add_argument("--metrics-latency-buckets", type=_buckets, default=DEFAULT_LATENCY_BUCKETS_S,
                   help="histogram bounds in seconds for request, queue and compute durations "
                        f"(default {_csv(DEFAULT_LATENCY_BUCKETS_S)})")
    p.add_argument("--metrics-batch-buckets", type=_buckets, default=DEFAULT_BATCH_SIZE_BUCKETS,
                   help=f"histogram bounds in rows for executed batch sizes (default {_csv(DEFAULT_BATCH_SIZE_BUCKETS)})")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="the level logged from at start-up (default INFO); it can be changed while the server "
                        "runs over the API: REST /v2/logging, gRPC LogSettings")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text (default) or json: one JSON object per line, plus one line per inference request "
                        "with request id, model, version, outcome and latency")
    p.add_argument("--trace", action="store_true",
                   help="OpenTelemetry spans per inference request, parented to the caller's W3C traceparent "
                        "(needs the [tracing] extra)")
    p.add_argument("--trace-exporter", default="otlp", choices=TRACE_EXPORTERS,
                   help="otlp: OTLP/HTTP, configured by the OTEL_EXPORTER_OTLP_* variables (default); "
                        "console: one JSON span per line on stdout")
    add_tls_arguments(p)
    for flag, transport in (("--grpc-restricted-protocol", "gRPC"), ("--http-restricted-api", "REST")):
        header = "triton-grpc-protocol-KEY" if transport == "gRPC" else "KEY"
        p.add_argument(flag, action="append", default=[], metavar="CATEGORIES:KEY=VALUE",
                       help=f"{transport} requests to these APIs must carry the header {header} with VALUE "
                            f"(repeatable, one group per category; categories: {', '.join(CATEGORIES)})")
    fleet = p.add_argument_group("fleet mode (README \"Fleets\"): rollouts, shared response cache, rate limits")
    fleet.add_argument("--redis-url", default="",
                       help="the fleet's Redis, e.g. redis://redis:6379/0 (default: none, standalone)")
    fleet.add_argument("--replica-id", default="", help="this replica's name in the fleet (default: hostname-pid)")
    fleet.add_argument("--advertise-address", default="",
                       help="host[:port] where others reach this replica's gRPC (default: --host, or the hostname "
                            "when it is 0.0.0.0, and the gRPC port)")
    fleet.add_argument("--peer-tls-server-name", default="", metavar="NAME",
                       help="the name peers' certificates are checked for when forwarding a sequence over TLS, "
                            "when it is not their advertised host, e.g. the Service's DNS name (unused without "
                            "--grpc-use-ssl)")
    fleet.add_argument("--redis-timeout", type=float, default=0.25,
                       help="seconds a Redis command may take before Redis counts as down (default 0.25)")
    fleet.add_argument("--fleet-heartbeat-secs", type=float, default=1.0,
                       help="seconds between publications of this replica's state (TTL: 3x; default 1)")
    fleet.add_argument("--fleet-reconcile-secs", type=float, default=10.0,
                       help="seconds between full reads of the desired state, beside change events (default 10)")
    fleet.add_argument("--response-cache-local-bytes", type=int, default=64 * 1024 * 1024,
                       help="the response cache's in-process tier, in tensor bytes (default 64 MiB)")
    return p


def _fleet(args: argparse.Namespace) -> FleetSettings | None:
    if not args.redis_url:
        return None
    return FleetSettings(
        redis_url=args.redis_url,
        replica_id=args.replica_id or f"{socket.gethostname()}-{os.getpid()}",
        advertise_address=args.advertise_address,
        redis_timeout_s=args.redis_timeout,
        heartbeat_interval_s=args.fleet_heartbeat_secs,
        reconcile_interval_s=args.fleet_reconcile_secs,
        cache_local_bytes=args.response_cache_local_bytes,
        peer_tls_name=args.peer_tls_server_name,
    )


def _add_models(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list a repository's models, versions and whether they load")
    p.add_argument("--model-repository", type=Path, default=EXAMPLE_REPOSITORY)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetserve", description="Open Inference Protocol server for ONNX models")
    sub = parser.add_subparsers(dest="command", required=True)
    # A flag's value refused after parsing is reported by its subcommand's parser: its usage, not the top level's.
    serve_parser = _add_serve(sub)
    models_parser = _add_models(sub)
    for name, help_text in LOADTEST_COMMANDS.items():  # listed in --help; they parse their own arguments
        sub.add_parser(name, help=help_text, add_help=False)
    sub.add_parser("fleet", help="a fleet's state in Redis: status, rollout, promote, rollback, limit; up: a local fleet", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LOADTEST_COMMANDS:
        return loadtest_main(argv)
    if argv and argv[0] == "fleet":
        from server.fleet_cli import main as fleet_main  # imports redis

        return fleet_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "serve":
        configure_logging(args.log_level, args.log_format)
        try:
            model_repository, remote_repository = _repository(args)
            grpc_tls, http_tls = tls_configs(args)
            grpc_restrictions = tuple(parse_restriction(r, "--grpc-restricted-protocol")
                                      for r in args.grpc_restricted_protocol)
            http_restrictions = tuple(parse_restriction(r, "--http-restricted-api") for r in args.http_restricted_api)
            settings = Settings(
                model_repository=model_repository,
                remote_repository=remote_repository,
                host=args.host,
                grpc_address=args.grpc_address, http_address=args.http_address,
                metrics_address=args.metrics_address, allow_grpc=args.allow_grpc, allow_http=args.allow_http,
                allow_metrics=args.allow_metrics,
                grpc_port=args.grpc_port,
                http_port=args.http_port,
                metrics_port=args.metrics_port,
                model_control_mode=ControlMode(args.model_control_mode),
                load_models=tuple(args.load_model),
                poll_interval_s=args.repository_poll_secs,
                max_queue_size=args.max_queue_size,
                drain_timeout_s=args.drain_timeout,
                grpc_max_connection_age_s=args.grpc_max_connection_age,
                grpc_max_concurrent_streams=args.grpc_max_concurrent_streams,
                grpc_response_compression=args.grpc_infer_response_compression_level,
                grpc_keepalive=GrpcKeepalive(
                    time_ms=args.grpc_keepalive_time, timeout_ms=args.grpc_keepalive_timeout,
                    permit_without_calls=args.grpc_keepalive_permit_without_calls,
                    max_pings_without_data=args.grpc_http2_max_pings_without_data,
                    min_recv_ping_interval_without_data_ms=args.grpc_http2_min_recv_ping_interval_without_data,
                    max_ping_strikes=args.grpc_http2_max_ping_strikes),
                http_max_body_bytes=args.http_max_body_bytes,
                http_body_idle_timeout_s=args.http_body_idle_timeout,
                shutdown_delay_s=args.shutdown_delay,
                strict_readiness=args.strict_readiness,
                log_format=args.log_format,
                trace=args.trace,
                trace_exporter=args.trace_exporter,
                metrics=MetricsConfig(latency_buckets_s=args.metrics_latency_buckets,
                                      batch_size_buckets=args.metrics_batch_buckets),
                fleet=_fleet(args),
                grpc_restrictions=grpc_restrictions,
                http_restrictions=http_restrictions,
                grpc_tls=grpc_tls,
                http_tls=http_tls,
                tls_reload_interval_s=args.tls_reload_secs,
            )
        except ValueError as exc:
            serve_parser.error(str(exc))
        if remote_repository is None and not settings.model_repository.is_dir():
            serve_parser.error(f"model repository {settings.model_repository} is not a folder")
        from server.app import run

        return run(settings)
    if not args.model_repository.is_dir():
        models_parser.error(f"model repository {args.model_repository} is not a folder")
    from server.inspect import print_models

    return print_models(args.model_repository)


if __name__ == "__main__":
    sys.exit(main())
