"""Servers in subprocesses for the benchmark: fleetserve and the bare baseline, on 127.0.0.1.

Like ``server/testing.py``'s ServerProcess, but generic over the command and imported by no
server code: the benchmark starts ``python -m server serve`` as a user would. Ports are chosen by
the OS and read back from the server's log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from ops.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "model_store" / "examples" / "repository"


class ServedProcess:
    """A server subprocess; ready when a log line matches ``ready``; port from ``port`` (group 1)."""

    def __init__(self, command: list[str], ready: str, port: str, ready_timeout_s: float = 60.0) -> None:
        self.command = command
        self._ready_re = re.compile(ready)
        self._port_re = re.compile(port)
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServedProcess":
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(self.ready_timeout_s) or not self.port or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{' '.join(self.command)} did not become ready; its log:\n{''.join(self.lines)}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = self._port_re.search(line)
            if match:
                self.port = int(match.group(1))
            if self._ready_re.search(line):
                self._ready.set()
        self._ready.set()

    def memory_mb(self) -> tuple[float, float] | None:
        """(resident, peak resident) in MiB from /proc (Linux), or None."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        if len(values) < 2:
            return None
        return int(values["VmRSS"]) / 1024, int(values["VmHWM"]) / 1024

    def cpu_seconds(self) -> float | None:
        """CPU time the server has used so far, user and system, all threads (/proc, Linux), or None."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, self._reader, timeout_s=timeout_s)

    def __enter__(self) -> "ServedProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fleetserve(repository: Path, *extra: str) -> ServedProcess:
    return ServedProcess(
        [sys.executable, "-m", "server", "serve", "--model-repository", str(repository), "--host", "127.0.0.1",
         "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *extra],
        ready=r"fleetserve ready", port=r"gRPC listening on [^:\s]+:(\d+)",
    )


def baseline(*extra: str) -> ServedProcess:
    return ServedProcess([sys.executable, "-m", "loadtest.baseline", "--port", "0", *extra],
                         ready=r"baseline listening", port=r"baseline listening on [^:\s]+:(\d+)")


def bench_repository(root: Path, source: Path) -> Path:
    """Copies of ``source``'s add_one and mlp in ``root`` (the bench's and the soak's repository)."""
    for name in ("add_one", "mlp"):
        if not (source / name).is_dir():
            raise SystemExit(f"{source} has no {name!r} model; bench needs the bundled add_one and mlp")
        shutil.copytree(source / name, root / name)  # copies: fleetserve refuses links out of its repository
    return root
