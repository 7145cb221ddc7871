"""The ``fleetserve`` command: ``serve`` and ``models``.

Reads the command line once into Settings; nothing else reads arguments or
environment variables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.dataplane import ControlMode
from server.settings import EXAMPLE_REPOSITORY, Settings


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the models of a repository over gRPC")
    p.add_argument("--model-repository", type=Path, default=EXAMPLE_REPOSITORY,
                   help="repository folder <repo>/<model>/<version>/model.onnx (default: the bundled examples)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
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
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish on shutdown")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list a repository's models, versions and whether they load")
    p.add_argument("--model-repository", type=Path, default=EXAMPLE_REPOSITORY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetserve", description="Open Inference Protocol server for ONNX models")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_models(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stdout)
        try:
            settings = Settings(
                model_repository=args.model_repository,
                host=args.host,
                grpc_port=args.grpc_port,
                http_port=args.http_port,
                metrics_port=args.metrics_port,
                model_control_mode=ControlMode(args.model_control_mode),
                load_models=tuple(args.load_model),
                poll_interval_s=args.repository_poll_secs,
                max_queue_size=args.max_queue_size,
                drain_timeout_s=args.drain_timeout,
            )
        except ValueError as exc:
            parser.error(str(exc))
        if not settings.model_repository.is_dir():
            parser.error(f"model repository {settings.model_repository} is not a folder")
        from server.app import run

        run(settings)
        return 0
    from server.inspect import print_models

    return print_models(args.model_repository)


if __name__ == "__main__":
    sys.exit(main())
