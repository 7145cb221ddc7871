"""One load-generator process at one load point: sends requests, records each outcome.

``LoadDriver`` runs on one event loop. Closed loop: one sender per concurrency slot, each sending
its next request when the previous one completes. Open loop: one sender follows a precomputed
arrival schedule and never waits for completions (each request is its own task; past
``max_inflight`` outstanding requests an arrival is recorded as CLIENT_DROPPED instead of sent).
Open-loop latency runs from the scheduled send time, so a late client cannot hide server delay.

Over ModelStreamInfer, each target gets ``streams`` bidirectional streams; in-flight requests
are matched to responses by id (ids are prefixed to the pre-serialised request bytes). Over HTTP
(loadtest/http_wire.py), one aiohttp session keeps a connection per request in flight alive; a
request past its timeout counts as DEADLINE_EXCEEDED, one that cannot connect as UNAVAILABLE, like
their gRPC counterparts, and any status other than 200 by its HTTP status.

Every window boundary (aligned to ``start_at_ns`` on the machine's monotonic clock, shared by
processes) the driver reports the window's counts to its ``Control``, and stops when the control
says so, at the time bound, or when its request budget is spent.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import gc
import time
from array import array
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import aiohttp
import grpc
import numpy as np

from loadtest.http_wire import TRANSPORTS as HTTP_TRANSPORTS
from loadtest.schedule import arrival_rng, poisson_arrivals
from loadtest.connections import ClientTls, aiohttp_ssl, grpc_channel, http_base
from loadtest.stats import DROPPED, HTTP_BASE, OK
from loadtest.streams import Stream
from loadtest.wire import CHANNEL_OPTIONS, MODEL_INFER, SequenceBodies, sequence_first_id, with_id

_DEADLINE_EXCEEDED, _UNAVAILABLE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0], grpc.StatusCode.UNAVAILABLE.value[0]
_TICK_NS = 50_000_000  # how often the driver checks its stop conditions
_DRAIN_S = 0.2  # after stopping, in-flight requests get this long before being cancelled

CONNECT_TIMEOUT_S = 10.0  # at least this long to connect to a target, whatever the requests' deadline


@dataclass(frozen=True)
class DriveSpec:
    """What one process does at one load point (picklable: sent to load-generator processes)."""

    targets: tuple[str, ...]
    transport: str  # "unary" | "stream" | "http" | "http-binary"
    body: bytes  # serialised ModelInferRequest without id; over HTTP, the request body
    mode: str  # "concurrency" | "rate"
    slots: tuple[int, ...]  # closed loop: this process's slot numbers; slot s uses target s % len(targets)
    rate_per_s: float  # open loop: this process's share of the offered rate
    seed: int
    point: int
    process: int
    burstiness: float
    start_at_ns: int  # time.monotonic_ns() at which load starts (warm-up first)
    warmup_s: float
    window_s: float
    max_duration_s: float  # from start_at, warm-up included
    max_requests: int  # this process's budget
    max_inflight: int
    streams: int  # per target, stream transport only
    timeout_s: float  # per unary request
    http_path: str = ""  # HTTP transports: the infer path, sent to every target
    http_headers: tuple[tuple[str, str], ...] = ()
    sequence_length: int = 0  # closed loop over gRPC: each slot sends sequences of this many requests (0: none)
    tls: ClientTls | None = None  # None: plain connections
    headers: tuple[tuple[str, str], ...] = ()  # --header: with every call


@dataclass(frozen=True)
class WindowReport:
    process: int
    index: int  # 0 = the first window after warm-up
    ok: int
    errors: int


@dataclass
class DriveRecord:
    """Everything one process recorded, one entry per completed (or dropped) request."""

    process: int
    done_ns: np.ndarray  # int64 monotonic completion times, non-decreasing
    latency_ns: np.ndarray  # int64
    codes: np.ndarray  # int16: 0 OK, gRPC codes, loadtest.stats.STREAM_ERROR / DROPPED
    send_lag_ns: np.ndarray  # int64, open loop: actual minus scheduled send time
    cpu_s: float
    wall_s: float
    unmatched: int  # stream responses whose id matched no request in flight


class Control(Protocol):
    """The driver's link to whoever decides when a load point is measured enough."""

    def report(self, window: WindowReport) -> None: ...

    def stop_requested(self) -> bool: ...


class LoadDriver:
    """Drives one load point from one process; ``run`` returns its ``DriveRecord``."""

    def __init__(self, spec: DriveSpec, control: Control) -> None:
        self.spec = spec
        self.control = control
        self._done = array("q")
        self._latency = array("q")
        self._codes = array("h")
        self._lag = array("q")
        self._stopping = False
        self._budget = spec.max_requests
        self._inflight = 0
        self._unmatched = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._channels: list[grpc.aio.Channel] = []
        self._session: aiohttp.ClientSession | None = None

    def _record(self, done_ns: int, latency_ns: int, code: int) -> None:
        self._done.append(done_ns)
        self._latency.append(latency_ns)
        self._codes.append(code)

    async def run(self) -> DriveRecord:
        spec = self.spec
        if spec.transport in HTTP_TRANSPORTS:
            # No connection limit: the load's own concurrency (or max_inflight) bounds the connections.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=aiohttp_ssl(spec.tls)),
                timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
                headers={**dict(spec.http_headers), **dict(spec.headers)}, skip_auto_headers=("User-Agent",),
            )
        else:
            self._channels = [grpc_channel(t, spec.tls, CHANNEL_OPTIONS, spec.headers) for t in spec.targets]
        try:
            for channel in self._channels:
                # Connecting is not a request: a short --timeout-s (measuring deadlines) must not fail it.
                await asyncio.wait_for(channel.channel_ready(), timeout=max(spec.timeout_s, CONNECT_TIMEOUT_S))
            senders = self._senders()
            # The collector's full passes stall this loop for as long as they take to walk every object
            # the process holds (99 ms in one at twice an SLO model's capacity), and each stall adds to
            # the latency of every request then in flight. Collected and frozen before the load, those
            # passes walk only what the load itself creates (gc.freeze: survivors are not rescanned).
            gc.collect()
            gc.freeze()
            delay_s = (spec.start_at_ns - time.monotonic_ns()) / 1e9
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            cpu0, wall0 = time.process_time(), time.monotonic()
            loop = asyncio.get_running_loop()
            workers = [loop.create_task(s) for s in senders]
            await self._tick()
            running = [*workers, *self._tasks]
            if running:
                await asyncio.wait(running, timeout=_DRAIN_S)
            running = [*workers, *self._tasks]
            for task in running:
                task.cancel()
            outcomes = await asyncio.gather(*running, return_exceptions=True)
            cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
            for outcome in outcomes[:len(workers)]:  # a sender that failed: the level did not run, say why
                if isinstance(outcome, Exception):
                    raise outcome
        finally:
            gc.unfreeze()
            for channel in self._channels:
                await channel.close()
            if self._session is not None:
                await self._session.close()
        return DriveRecord(
            spec.process, np.frombuffer(self._done, np.int64).copy(), np.frombuffer(self._latency, np.int64).copy(),
            np.frombuffer(self._codes, np.int16).copy(), np.frombuffer(self._lag, np.int64).copy(), cpu_s, wall_s,
            self._unmatched,
        )

    def _senders(self) -> list[Any]:
        spec = self.spec
        calls: list[Callable[[], Awaitable[int]]] = []  # one per target
        if self._session is not None:
            session = self._session
            calls = [functools.partial(self._http_call, session, f"{http_base(t, spec.tls)}{spec.http_path}") for t in spec.targets]
        elif spec.transport == "unary":
            methods = [ch.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
                       for ch in self._channels]
            if spec.sequence_length:  # each slot its own sequences: a body per request
                return [self._slot(functools.partial(self._unary_sequence_call, methods[s % len(methods)],
                                                     self._sequence_bodies(s))) for s in spec.slots]
            calls = [functools.partial(self._unary_call, method) for method in methods]
        if calls:
            if spec.mode == "concurrency":
                return [self._slot(calls[s % len(calls)]) for s in spec.slots]
            return [self._open(calls)]
        streams = [Stream(self, ch) for ch in self._channels for _ in range(spec.streams)]
        runs = [s.run() for s in streams]
        if spec.mode == "concurrency":
            # Slots are spread over targets first, then over each target's streams.
            per_target = len(streams) // len(self._channels)
            for s in spec.slots:
                target = s % len(self._channels)
                stream = streams[target * per_target + (s // len(self._channels)) % per_target]
                stream.add_slot(f"s{s}", spec.body, self._sequence_bodies(s) if spec.sequence_length else None)
            return runs
        return [*runs, self._open_stream(streams)]

    def _schedule_ns(self) -> np.ndarray:
        spec = self.spec
        rng = arrival_rng(spec.seed, spec.point, spec.process)
        arrivals = poisson_arrivals(spec.rate_per_s, spec.max_duration_s, rng, burstiness=spec.burstiness,
                                    max_count=spec.max_requests)
        return spec.start_at_ns + (arrivals * 1e9).astype(np.int64)

    async def _tick(self) -> None:
        """Report each window as it ends; return when the load point should stop."""
        spec = self.spec
        now = time.monotonic_ns
        first = spec.start_at_ns + int(spec.warmup_s * 1e9)
        window = int(spec.window_s * 1e9)
        end = spec.start_at_ns + int(spec.max_duration_s * 1e9)
        index = 0
        while True:
            boundary = first + (index + 1) * window
            await asyncio.sleep(max(0, min(boundary, now() + _TICK_NS, end) - now()) / 1e9)
            t = now()
            while t >= first + (index + 1) * window:
                self._report(index, first + index * window, first + (index + 1) * window)
                index += 1
            if self.control.stop_requested() or t >= end or (self._budget <= 0 and self._inflight == 0):
                break
        self._stopping = True

    def _report(self, index: int, start_ns: int, end_ns: int) -> None:
        lo, hi = bisect.bisect_left(self._done, start_ns), bisect.bisect_left(self._done, end_ns)
        errors = int(np.count_nonzero(np.frombuffer(self._codes, np.int16)[lo:hi]))
        self.control.report(WindowReport(self.spec.process, index, hi - lo - errors, errors))

    def _sequence_bodies(self, slot: int) -> SequenceBodies:
        spec = self.spec
        return SequenceBodies(spec.body, spec.sequence_length, sequence_first_id(spec.point, spec.process, slot))

    async def _unary_sequence_call(self, method: Any, bodies: SequenceBodies) -> int:
        """One ModelInfer of the slot's current sequence; the outcome's code."""
        try:
            await method(bodies.next(), timeout=self.spec.timeout_s)
            return OK
        except grpc.aio.AioRpcError as exc:
            return int(exc.code().value[0])

    async def _unary_call(self, method: Any) -> int:
        """One ModelInfer with the pre-serialised body; the outcome's code."""
        try:
            await method(self.spec.body, timeout=self.spec.timeout_s)
            return OK
        except grpc.aio.AioRpcError as exc:
            return int(exc.code().value[0])

    async def _http_call(self, session: aiohttp.ClientSession, url: str) -> int:
        """POST the body to ``url``; the outcome's code."""
        try:
            async with session.post(url, data=self.spec.body) as response:
                await response.read()
                return OK if response.status == 200 else HTTP_BASE + response.status
        except asyncio.TimeoutError:
            return _DEADLINE_EXCEEDED
        except aiohttp.ClientError:
            return _UNAVAILABLE

    async def _slot(self, call: Callable[[], Awaitable[int]]) -> None:
        """Closed loop: one request at a time, the next as soon as the last completes."""
        now, record = time.monotonic_ns, self._record
        while not self._stopping and self._budget > 0:
            self._budget -= 1
            self._inflight += 1
            t0 = now()
            code = await call()
            t1 = now()
            self._inflight -= 1
            record(t1, t1 - t0, code)

    async def _open(self, calls: list[Callable[[], Awaitable[int]]]) -> None:
        """Open loop: each arrival is its own task, calling the targets in turn."""
        loop = asyncio.get_running_loop()

        def send(i: int, due_ns: int) -> None:
            task = loop.create_task(self._once(calls[i % len(calls)], due_ns))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await self._follow_schedule(send)

    async def _once(self, call: Callable[[], Awaitable[int]], due_ns: int) -> None:
        try:
            code = await call()
        finally:
            self._inflight -= 1
        t1 = time.monotonic_ns()
        self._record(t1, t1 - due_ns, code)

    async def _open_stream(self, streams: list["Stream"]) -> None:
        body = self.spec.body

        def send(i: int, due_ns: int) -> None:
            request_id = str(i)
            streams[i % len(streams)].submit(request_id, with_id(body, request_id.encode()), due_ns, -1)

        await self._follow_schedule(send)

    async def _follow_schedule(self, send: Callable[[int, int], None]) -> None:
        """Call ``send(index, scheduled ns)`` on time; arrivals over the in-flight cap are recorded as dropped."""
        now = time.monotonic_ns
        unyielded = 0
        for i, due in enumerate(self._schedule_ns().tolist()):
            wait_ns = due - now()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
                unyielded = 0
            elif unyielded >= 64:  # far behind: still let responses in while catching up
                await asyncio.sleep(0)
                unyielded = 0
            unyielded += 1
            if self._stopping or self._budget <= 0:
                return
            t = now()
            if self._inflight >= self.spec.max_inflight:
                self._record(t, 0, DROPPED)
                continue
            self._budget -= 1
            self._inflight += 1
            self._lag.append(t - due)
            send(i, due)
