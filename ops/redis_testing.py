"""Real ``redis-server`` processes for tests: start on a free loopback port, kill, restart on the same port.

A public test helper (fleet tests across packages use it). redis-server cannot bind port 0, so
a free port is found by binding a socket first. Without ``data_dir`` the server keeps nothing on
disk (``--save '' --appendonly no``); with it, every write is appended and fsynced, so a killed
server restarts with its data. Needs Debian's ``redis-server`` (``apt-get install -y redis-server``).

Imports nothing from fleetserve.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ops.processes import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server on 127.0.0.1. Use as a context manager, or ``start``/``kill``/``stop``."""

    def __init__(self, data_dir: Path | None = None, port: int = 0, new_session: bool = False) -> None:
        self.port = port or free_port()
        self.new_session = new_session  # own session: a terminal's Ctrl-C reaches only whoever started it
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, ready_timeout_s: float = 10.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"]
        if self.data_dir is None:
            cmd += ["--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=self.new_session)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode} on port {self.port}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {ready_timeout_s} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as in a crash."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, sig=sig, timeout_s=10)
        self.proc = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
