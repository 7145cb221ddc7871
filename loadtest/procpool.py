"""Load-generator processes: when one process cannot generate the load, several share it.

Processes are spawned (not forked: the parent already holds gRPC channels) once per run and
reused for every load point. Each runs ``LoadDriver`` on its own event loop (uvloop when
installed) and talks to the parent over two multiprocessing queues and an event:
window reports and results go up, specs come down, the stop event says "measured enough".
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
import traceback
from typing import Any

from loadtest.driver import DriveSpec, LoadDriver, WindowReport


class _QueueControl:
    def __init__(self, events: Any, stop: Any) -> None:
        self._events = events
        self._stop = stop

    def report(self, window: WindowReport) -> None:
        self._events.put(("window", window))

    def stop_requested(self) -> bool:
        return bool(self._stop.is_set())


def run_event_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop when it is installed (as fleetserve does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def _worker_main(index: int, commands: Any, events: Any, stop: Any) -> None:
    events.put(("ready", index))
    while True:
        spec = commands.get()
        if spec is None:
            return
        try:
            record = run_event_loop(LoadDriver(spec, _QueueControl(events, stop)).run())
        except BaseException:
            events.put(("failed", spec.process, traceback.format_exc()))
        else:
            events.put(("done", spec.process, record))


class LoadProcesses:
    """``count`` load-generator processes. ``start``/``close`` around any number of ``drive`` calls."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")
        self._commands: list[Any] = []
        self._events: Any = None
        self._stop: Any = None
        self._procs: list[Any] = []

    def start(self, ready_timeout_s: float = 60.0) -> None:
        self._events = self._ctx.Queue()
        self._stop = self._ctx.Event()
        for i in range(self.count):
            commands = self._ctx.Queue()
            proc = self._ctx.Process(target=_worker_main, args=(i, commands, self._events, self._stop),
                                     name=f"loadgen-{i}", daemon=True)
            proc.start()
            self._commands.append(commands)
            self._procs.append(proc)
        ready = 0
        while ready < self.count:  # imports take a while; load points start once every process can send
            try:
                event = self._events.get(timeout=ready_timeout_s)
            except queue.Empty:
                self.close()
                raise RuntimeError(f"load generator processes did not start within {ready_timeout_s:g} s") from None
            ready += event[0] == "ready"

    def request_stop(self) -> None:
        self._stop.set()

    def drive(self, specs: list[DriveSpec], sink: "asyncio.Queue[tuple[Any, ...]]") -> threading.Thread:
        """Send one spec to each process; a thread forwards their events into ``sink`` until all finish.

        A process that dies without a result is reported as ("failed", index, reason).
        """
        if len(specs) != self.count:
            raise ValueError(f"{len(specs)} specs for {self.count} processes")
        self._stop.clear()
        for commands, spec in zip(self._commands, specs):
            commands.put(spec)
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._pump, args=(loop, sink), name="loadgen-events", daemon=True)
        thread.start()
        return thread

    def _pump(self, loop: asyncio.AbstractEventLoop, sink: "asyncio.Queue[tuple[Any, ...]]") -> None:
        finished: set[int] = set()
        while len(finished) < self.count:
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                for i, proc in enumerate(self._procs):
                    if i not in finished and not proc.is_alive():
                        finished.add(i)
                        loop.call_soon_threadsafe(sink.put_nowait, ("failed", i, f"exited with code {proc.exitcode}"))
                continue
            if event[0] in ("done", "failed"):
                finished.add(event[1])
            loop.call_soon_threadsafe(sink.put_nowait, event)

    def close(self) -> None:
        for commands, proc in zip(self._commands, self._procs):
            if proc.is_alive():
                commands.put(None)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for q in [*self._commands, self._events]:
            if q is not None:
                q.close()
                q.join_thread()
        self._commands, self._procs = [], []
