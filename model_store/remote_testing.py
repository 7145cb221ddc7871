"""Real remote-repository servers for tests: an S3-compatible server and a static HTTP server.

A public helper module (the remote-repository tests of model_store/ and server/ use it). Each
server is a subprocess bound to 127.0.0.1 on an OS-chosen port, read back from its log, as
``server.testing.ServerProcess`` does for fleetserve:

- ``S3Server``: moto's standalone server (``moto_server``, from the dev extra's ``moto[server]``),
  which speaks the S3 REST API; ``CREDENTIALS`` are the (dummy) keys it accepts.
- ``HttpServer``: ``python -m http.server`` serving a folder.

Imports fsspec only inside ``S3Server.filesystem``. Must not import server, batching or kernels.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from ops.processes import stop_process

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class _Process:
    """A server subprocess whose log names its port; a reader thread keeps draining the log."""

    def __init__(self, command: Sequence[str], port_pattern: str, timeout_s: float = 30.0) -> None:
        self._command = list(command)
        self._pattern = re.compile(port_pattern)
        self._timeout_s = timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._found = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self._command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._found.wait(self._timeout_s) or not self.port:
            self.stop()
            raise RuntimeError(f"{self._command[0]} did not start; its log:\n{''.join(self.lines)}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = self._pattern.search(line)
            if match and not self.port:
                self.port = int(match.group(1))
                self._found.set()
        self._found.set()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, self._reader, timeout_s=10)


class S3Server(_Process):
    """moto_server on 127.0.0.1 with one bucket. Use as a context manager."""

    def __init__(self, bucket: str = "models") -> None:
        executable = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        super().__init__([executable, "-H", "127.0.0.1", "-p", "0"], r"Running on http://127\.0\.0\.1:(\d+)")
        self.bucket = bucket
        self._fs: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        """The s3:// URL of ``prefix`` in the bucket."""
        return f"s3://{self.bucket}/{prefix}"

    def filesystem(self) -> Any:
        """An s3fs file system on this server, without caches (each call sees the bucket as it is)."""
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem(
                "s3", endpoint_url=self.endpoint_url, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True, use_listings_cache=False,
            )
        return self._fs

    def upload(self, folder: Path, prefix: str) -> None:
        """Copy every file under ``folder`` to ``<bucket>/<prefix>/``; index.json, if any, last."""
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "index.json")
        for path in files:
            self.put(path.read_bytes(), f"{prefix}/{path.relative_to(folder).as_posix()}")

    def put(self, data: bytes, key: str) -> None:
        self.filesystem().pipe_file(f"{self.bucket}/{key}", data)

    def delete(self, key: str) -> None:
        self.filesystem().rm(f"{self.bucket}/{key}", recursive=True)

    def __enter__(self) -> "S3Server":
        self.start()
        self.filesystem().mkdir(self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HttpServer(_Process):
    """``python -m http.server`` serving ``folder`` on 127.0.0.1. Use as a context manager."""

    def __init__(self, folder: Path) -> None:
        super().__init__([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                          str(folder)], r"Serving HTTP on \S+ port (\d+)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HttpServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
