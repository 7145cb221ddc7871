"""Run a real fleetserve server in a subprocess, for tests and benchmarks.

The server runs in its own process, as in production; its ports are chosen by the
OS (``--grpc-port 0 --http-port 0 --metrics-port 0``) and read back from its log. Its log is kept in
``ServerProcess.log`` so a failing test can show it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from ops.processes import stop_process

_LISTENING = re.compile(r"(gRPC|HTTP|metrics) listening on \S+:(\d+)")


def wait_until(predicate: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.05) -> bool:
    """Whether ``predicate()`` became true within ``timeout_s``, asked every ``interval_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def scrape_metrics(url: str, timeout_s: float = 10.0) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus /metrics endpoint: (sample name, labels) -> value."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=timeout_s) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class ServerProcess:
    """A ``fleetserve serve`` subprocess on 127.0.0.1 serving ``repository``, a folder or an s3:// or
    http(s):// URL. Use as a context manager."""

    def __init__(self, repository: Path | str, *extra_args: str, ready_timeout_s: float = 60.0,
                 new_session: bool = False) -> None:
        self.repository = repository
        self.new_session = new_session  # own session: a terminal's Ctrl-C reaches only whoever started it
        self.args: Sequence[str] = extra_args
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        """host:port of the REST API (what tritonclient.http takes as its url)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def start(self) -> "ServerProcess":
        cmd = [
            sys.executable, "-m", "server", "serve",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
            *self.args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=Path(__file__).resolve().parents[1], start_new_session=self.new_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(self.ready_timeout_s) or "fleetserve ready" not in self.log:
            self.stop()
            raise RuntimeError(f"fleetserve did not become ready; its log:\n{self.log}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match:
                port = int(match.group(2))
                if match.group(1) == "gRPC":
                    self.grpc_port = port
                elif match.group(1) == "HTTP":
                    self.http_port = port
                else:
                    self.metrics_port = port
            if "fleetserve ready" in line:
                self._ready.set()
        self._ready.set()

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log:
                return True
            time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        if self.proc is None:
            return 0
        return stop_process(self.proc, self._reader, sig=sig, timeout_s=timeout_s)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
