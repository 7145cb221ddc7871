"""Helpers for fleet tests: replicas started together, the ``fleetserve fleet`` command, background load.

A public test helper beside server/testing.py. ``start_replicas`` starts several
``fleetserve serve --redis-url ...`` processes at once (each on its own OS-chosen ports);
``fleet_cli`` runs the real command in a subprocess; ``LoadThread`` keeps requests flowing to
one replica over gRPC and records every answer's version and every failure.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np

from server.protos import grpc_service_pb2 as pb
from server.protos import grpc_service_pb2_grpc as rpc
from server.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def fleet_args(redis_url: str, replica_id: str, *, heartbeat_s: float = 0.2, reconcile_s: float = 1.0,
               redis_timeout_s: float = 1.0) -> list[str]:
    """Flags for a test replica: short heartbeat and reconcile intervals so tests converge fast, and a
    Redis timeout long enough that a busy test machine's stalls do not read as Redis outages."""
    return ["--redis-url", redis_url, "--replica-id", replica_id, "--fleet-heartbeat-secs", str(heartbeat_s),
            "--fleet-reconcile-secs", str(reconcile_s), "--redis-timeout", str(redis_timeout_s)]


def start_replicas(specs: Sequence[tuple[Path, Sequence[str]]]) -> list[ServerProcess]:
    """Start one ServerProcess per (repository, extra args), concurrently; all or none."""
    servers = [ServerProcess(repo, *args) for repo, args in specs]
    with ThreadPoolExecutor(len(servers)) as pool:
        outcomes = list(pool.map(_try_start, servers))
    failed = [exc for exc in outcomes if exc is not None]
    if failed:
        for server in servers:
            server.stop()
        raise failed[0]
    return servers


def _try_start(server: ServerProcess) -> BaseException | None:
    try:
        server.start()
    except BaseException as exc:
        return exc
    return None


def fleet_cli(redis_url: str, *args: str, in_process: bool = True,
              timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``fleetserve fleet --redis-url URL ARGS...``; its output is in ``.stdout`` / ``.stderr``.

    In this process by default (a new interpreter costs a second or more of imports on a busy machine);
    ``in_process=False`` runs the real command line. Call it from a thread with no running event loop."""
    argv = ["--redis-url", redis_url, *args]
    if not in_process:
        return subprocess.run([sys.executable, "-m", "server", "fleet", *argv],
                              capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    from server.fleet_cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["fleetserve", "fleet", *argv], code, out.getvalue(), err.getvalue())


def infer_request(model: str, request_id: str = "", version: str = "", features: int = 16,
                  value: float = 1.0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, features])
    request.raw_input_contents.append(np.full((1, features), value, np.float32).tobytes())
    return request


@dataclass
class Answer:
    started: float  # time.monotonic()
    request_id: str
    version: str  # "" for a failure
    error: str = ""


class LoadThread(threading.Thread):
    """Sends ``model`` requests to ``address`` back to back until ``stop()``; ids are ``{prefix}-{n}``."""

    def __init__(self, address: str, model: str, prefix: str = "r", pause_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.model = model
        self.prefix = prefix
        self.pause_s = pause_s
        self.answers: list[Answer] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = rpc.GRPCInferenceServiceStub(channel)
            n = 0
            while not self._stopping.is_set():
                request_id = f"{self.prefix}-{n}"
                n += 1
                started = time.monotonic()
                try:
                    reply = stub.ModelInfer(infer_request(self.model, request_id), timeout=10)
                    self.answers.append(Answer(started, request_id, reply.model_version))
                except grpc.RpcError as exc:
                    self.answers.append(Answer(started, request_id, "", f"{exc.code().name}: {exc.details()}"))
                if self.pause_s:
                    time.sleep(self.pause_s)

    def stop(self) -> None:
        self._stopping.set()
        self.join(15)

    @property
    def errors(self) -> list[Answer]:
        return [a for a in self.answers if a.error]

    def versions_since(self, moment: float) -> set[str]:
        return {a.version for a in self.answers if a.started >= moment and not a.error}
