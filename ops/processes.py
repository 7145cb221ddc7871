"""Stopping a child process cleanly: the one helper every test and benchmark harness uses.

Imports nothing from fleetserve.
"""

from __future__ import annotations

import signal
import subprocess
import threading


def stop_process(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    reader: threading.Thread | None = None,
    *,
    sig: int = signal.SIGTERM,
    timeout_s: float = 30.0,
) -> int:
    """Send ``sig`` unless the process has exited, wait ``timeout_s``, then kill.

    Joins ``reader`` (the thread draining its output) and closes its stdout pipe, so no
    ResourceWarning follows. Returns the exit status.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if reader is not None:
        reader.join(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
