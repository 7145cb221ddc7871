"""Runs a load test: a sweep of load points, each measured until stable or a time bound.

For each point the runner splits the load over the load-generator processes (in this process
when ``processes`` is 1), collects window reports, stops the point when the last
``stable_windows`` windows agree within ``tolerance`` (or at ``max_duration_s``), snapshots the
server's batch statistics at the end of warm-up and at the end, and turns the requests completed
in the measured windows into a ``PointResult``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import aiohttp
import grpc
import numpy as np

from loadtest import http_wire, stats
from loadtest.driver import CONNECT_TIMEOUT_S, DriveRecord, DriveSpec, LoadDriver, WindowReport
from loadtest.procpool import LoadProcesses
from loadtest.results import LoadtestResult, PointResult
from loadtest.connections import ClientTls, aiohttp_ssl, grpc_channel, http_base, tls_hint
from loadtest.wire import (
    CHANNEL_OPTIONS, MODEL_INFER, MODEL_STREAM_INFER, Batch, add_batches, batch_delta, batch_inputs, batch_statistics,
    describe_inputs, encode_request, file_inputs, file_rows, model_metadata, random_inputs, sequence_parameters,
)
from ops.cores import available_cores

TRANSPORTS = ("unary", "stream", *http_wire.TRANSPORTS)
_LEAD_S = {True: 0.5, False: 0.05}  # from spec to first request: spawned processes must connect first


# A probe answered so means every request of the run would be: the run is not made (``LoadRunner.probe``).
_FATAL_GRPC = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
                         grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED,
                         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION})
_FATAL_HTTP = frozenset({400, 401, 403, 404, 405, 501, 503})


@dataclass(frozen=True)
class RunSettings:
    """How to drive the targets; validated at construction with messages naming the flag."""

    targets: tuple[str, ...]
    model: str
    model_version: str = ""
    transport: str = "unary"
    rows: int = 1
    input_file: Path | None = None
    seed: int = 0
    slo_ms: float | None = None
    processes: int = 1
    streams: int = 1
    warmup_s: float = 2.0
    window_s: float = 2.0
    stable_windows: int = 3
    tolerance: float = 0.10
    max_duration_s: float = 30.0
    max_requests: int = 1_000_000
    max_inflight: int = 1_000
    timeout_s: float = 10.0
    burstiness: float = 1.0
    sequence_length: int = 0  # a sequence model's requests in sequences of this many (closed loop, gRPC); 0: none
    tls: ClientTls | None = None  # None: plain connections (loadtest/connections.py)
    headers: tuple[tuple[str, str], ...] = ()  # sent with every call: gRPC metadata or HTTP headers

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("--target: at least one host:port")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        for name in ("rows", "processes", "streams", "stable_windows", "max_requests", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("slo_ms", "warmup_s", "window_s", "tolerance", "max_duration_s", "timeout_s", "burstiness"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        for name in ("window_s", "max_duration_s", "timeout_s", "burstiness"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.sequence_length < 0:
            raise ValueError(f"--sequence-length must be >= 0, got {self.sequence_length}")
        if self.sequence_length and self.transport not in ("unary", "stream"):
            raise ValueError(f"--sequence-length needs a gRPC transport (unary or stream), not {self.transport}")
        if self.tls is not None and self.tls.server_name and self.transport in http_wire.TRANSPORTS:
            raise ValueError("--tls-server-name applies to the gRPC transports; over HTTPS, target the name the "
                             "server's certificate is for")
        if self.warmup_s < 0:
            raise ValueError(f"--warmup-s must be >= 0, got {self.warmup_s}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"--tolerance is a fraction in (0, 1), got {self.tolerance}")
        if self.slo_ms is not None and self.slo_ms <= 0:
            raise ValueError(f"--slo-ms must be positive, got {self.slo_ms}")
        needed = self.warmup_s + self.stable_windows * self.window_s
        if self.max_duration_s < needed:
            raise ValueError(
                f"--max-duration-s {self.max_duration_s:g} cannot fit the warm-up and {self.stable_windows} windows "
                f"({self.warmup_s:g} + {self.stable_windows} x {self.window_s:g} = {needed:g} s); raise it or "
                "shorten --warmup-s/--window-s"
            )


class LoadRunner:
    """Drives one model on the targets through a sweep of load points. Not thread-safe; one loop.

    ``start`` reads the model's metadata (or the input file) and builds the request once; ``stop``
    ends the load-generator processes. ``progress`` receives one line per measured window.
    """

    def __init__(self, settings: RunSettings, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress or (lambda line: None)
        self.body = b""
        self.http_request: http_wire.HttpRequest | None = None
        self.rows_per_request = settings.rows
        self.inputs: list[str] = []  # what each request carries, one line per input (describe_inputs)
        self._channels: list[grpc.aio.Channel] = []
        self._session: aiohttp.ClientSession | None = None  # HTTP transports: metadata and statistics
        self._pool: LoadProcesses | None = None
        self._points = 0

    async def start(self) -> None:
        s = self.settings
        http = s.transport in http_wire.TRANSPORTS
        if http:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=aiohttp_ssl(s.tls)),
                                                  headers=dict(s.headers))
        else:
            self._channels = [grpc_channel(t, s.tls, CHANNEL_OPTIONS, s.headers) for t in s.targets]
        metadata = await self._metadata()
        if s.input_file is not None:
            inputs = file_inputs(s.input_file)
            self.rows_per_request = file_rows(metadata, inputs)
            self.inputs = describe_inputs(metadata, inputs, f"from {s.input_file.name}")
        else:
            inputs = random_inputs(metadata, s.rows, s.seed)
            self.rows_per_request = s.rows if batch_inputs(metadata) else 1
            self.inputs = describe_inputs(metadata, inputs)
        if http:
            self.http_request = http_wire.encode_request(s.model, s.model_version, inputs, s.transport == "http-binary")
            self.body = self.http_request.body
        else:
            self.body = encode_request(s.model, s.model_version, inputs)
        if s.processes > 1:
            self._pool = LoadProcesses(s.processes)
            self._pool.start()

    async def _metadata(self) -> Any:
        """The model's metadata from the first target, its failure named; not bound by --timeout-s, which is
        the requests' deadline (a short one is a measurement, not a reason to fail before sending any)."""
        s = self.settings
        timeout_s = max(s.timeout_s, CONNECT_TIMEOUT_S)
        if self._session is not None:
            try:
                return await http_wire.model_metadata(self._session, http_base(s.targets[0], s.tls), s.model,
                                                      s.model_version, timeout_s)
            except RuntimeError as exc:
                if ": UNAVAILABLE: " in str(exc):
                    raise RuntimeError(f"{exc}{tls_hint(s.tls)}") from exc
                raise
        try:
            return await model_metadata(self._channels[0], s.model, s.model_version, timeout_s)
        except grpc.aio.AioRpcError as exc:
            hint = {grpc.StatusCode.UNIMPLEMENTED: " (not an Open Inference Protocol server?)",
                    grpc.StatusCode.UNAVAILABLE: tls_hint(s.tls)}.get(exc.code(), "")
            raise RuntimeError(f"ModelMetadata on {s.targets[0]}: {exc.code().name}: {exc.details()}{hint}") from exc

    async def probe(self) -> None:
        """Send one request to every target; raise, naming the target and the server's answer, when one
        refuses it in a way every request of the run would be refused.

        A request the targets cannot take (an input file or ``rows`` the model refuses, an unknown
        model, an unreachable target) would otherwise be measured as a sweep of errors; the command
        calls this first. Answers that depend on load (RESOURCE_EXHAUSTED from shedding or a rate
        limit, a deadline, an internal error) are what a load test measures, so they do not stop it.
        """
        s = self.settings
        for i, target in enumerate(s.targets):
            if self._session is not None:
                assert self.http_request is not None
                await http_wire.infer_once(self._session, http_base(target, s.tls), self.http_request, s.timeout_s, _FATAL_HTTP)
                continue
            infer = self._channels[i].unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
            body = self.body
            if s.sequence_length:  # a sequence of one request, its id clear of the load's (wire.sequence_first_id)
                body += sequence_parameters((1 << 62) + i, True, True)
            try:
                await infer(body, timeout=s.timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _FATAL_GRPC:
                    raise RuntimeError(f"ModelInfer on {target}: {exc.code().name}: {exc.details()}") from exc
            if s.transport == "stream":  # a server may answer ModelInfer and not serve the stream
                await self._probe_stream(self._channels[i], target)

    async def _probe_stream(self, channel: grpc.aio.Channel, target: str) -> None:
        """Open a ModelStreamInfer stream and end it without a request: a server that serves the stream
        ends it OK, one without the method refuses it (sending a request instead races that refusal,
        and the client may see gRPC's INTERNAL in its place)."""
        call = channel.stream_stream(MODEL_STREAM_INFER, request_serializer=None, response_deserializer=None)(
            iter(()), timeout=self.settings.timeout_s)
        code = await call.code()
        if code in _FATAL_GRPC:
            raise RuntimeError(f"ModelStreamInfer on {target}: {code.name}: {await call.details()}")

    async def stop(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for channel in self._channels:
            await channel.close()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> "LoadRunner":
        try:
            await self.start()
        except BaseException:
            await self.stop()  # a failed start (unknown model, no server) leaves nothing open
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self, concurrency: list[int], rates: list[float], label: str = "",
                  command: list[str] | None = None) -> LoadtestResult:
        """Every concurrency level, then every rate, as one result."""
        s = self.settings
        result = LoadtestResult(
            label=label or f"{s.model} {s.transport} x{self.rows_per_request}",
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=list(command if command is not None else sys.argv), targets=list(s.targets), model=s.model,
            model_version=s.model_version, transport=s.transport, rows_per_request=self.rows_per_request, seed=s.seed,
            slo_ms=s.slo_ms, processes=s.processes, streams=s.streams, warmup_s=s.warmup_s, window_s=s.window_s,
            stable_windows=s.stable_windows, tolerance=s.tolerance, max_duration_s=s.max_duration_s,
            max_requests=s.max_requests, host_cpu_count=available_cores(), inputs=list(self.inputs),
        )
        for c in concurrency:
            result.points.append(await self.run_point("concurrency", c))
        for r in rates:
            result.points.append(await self.run_point("rate", r))
        return result

    async def run_point(self, mode: str, level: float) -> PointResult:
        """Measure one load level: ``mode`` "concurrency" (closed loop) or "rate" (open loop, requests/s)."""
        s = self.settings
        if mode == "concurrency" and (level < 1 or level != int(level)):
            raise ValueError(f"concurrency must be a positive integer, got {level}")
        if mode == "rate" and not level > 0:
            raise ValueError(f"rate must be positive, got {level}")
        point, self._points = self._points, self._points + 1
        start_at_ns = time.monotonic_ns() + int(_LEAD_S[self._pool is not None] * 1e9)
        first_ns = start_at_ns + int(s.warmup_s * 1e9)
        specs = [self._spec(mode, level, point, p, start_at_ns) for p in range(s.processes)]
        before_task = asyncio.get_running_loop().create_task(self._batch_stats_at(first_ns))
        label = f"c={level:g}" if mode == "concurrency" else f"{level:g}/s"
        try:
            records, window_rps, measured, stable = await self._drive(specs, label)
        except BaseException:
            before_task.cancel()
            raise
        before, after = await before_task, await self._batch_stats()
        lo_ns = first_ns + int(measured[0] * s.window_s * 1e9)
        hi_ns = first_ns + int((measured[1] + 1) * s.window_s * 1e9)
        return self._point(mode, level, records, window_rps, measured, stable, (lo_ns, hi_ns), before, after)

    def _spec(self, mode: str, level: float, point: int, process: int, start_at_ns: int) -> DriveSpec:
        s = self.settings
        slots = tuple(range(process, int(level), s.processes)) if mode == "concurrency" else ()
        return DriveSpec(
            targets=s.targets, transport=s.transport, body=self.body, mode=mode, slots=slots,
            rate_per_s=level / s.processes if mode == "rate" else 0.0, seed=s.seed, point=point, process=process,
            burstiness=s.burstiness, start_at_ns=start_at_ns, warmup_s=s.warmup_s, window_s=s.window_s,
            max_duration_s=s.max_duration_s, max_requests=math.ceil(s.max_requests / s.processes),
            max_inflight=math.ceil(s.max_inflight / s.processes), streams=s.streams, timeout_s=s.timeout_s,
            http_path=self.http_request.path if self.http_request else "",
            http_headers=self.http_request.headers if self.http_request else (),
            sequence_length=s.sequence_length, tls=s.tls, headers=s.headers,
        )

    async def _drive(self, specs: list[DriveSpec], label: str) -> tuple[list[DriveRecord], list[float], tuple[int, int], bool]:
        """Run the drivers; return their records, window throughputs, the measured window range, stability."""
        s = self.settings
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        control = _LocalControl(events)
        if self._pool is None:
            task = asyncio.get_running_loop().create_task(self._drive_here(specs[0], control))
        else:
            self._pool.drive(specs, events)
        windows: dict[int, list[WindowReport]] = {}
        window_rps: list[float] = []
        records: list[DriveRecord] = []
        stable_at: int | None = None
        while len(records) < len(specs):
            kind, *payload = await events.get()
            if kind == "failed":
                if self._pool is not None:
                    self._pool.request_stop()
                raise RuntimeError(f"load generator process {payload[0]} failed: {payload[1]}")
            if kind == "done":
                records.append(payload[1])
                continue
            report: WindowReport = payload[0]
            windows.setdefault(report.index, []).append(report)
            while len(windows.get(len(window_rps), ())) == len(specs):
                reports = windows[len(window_rps)]
                window_rps.append(sum(r.ok for r in reports) / s.window_s)
                errors = sum(r.errors for r in reports)
                self.progress(f"{label}: window {len(window_rps)}: {window_rps[-1]:,.0f} req/s, {errors} errors")
                if stable_at is None and stats.is_stable(window_rps, s.stable_windows, s.tolerance):
                    stable_at = len(window_rps) - 1
                    control.stopped = True
                    if self._pool is not None:
                        self._pool.request_stop()
        if self._pool is None:
            await task
        if stable_at is not None:
            return records, window_rps[: stable_at + 1], (stable_at + 1 - s.stable_windows, stable_at), True
        if not window_rps:
            raise RuntimeError(f"{label}: no complete measurement window (the request budget ran out during warm-up?)")
        return records, window_rps, (0, len(window_rps) - 1), False

    async def _drive_here(self, spec: DriveSpec, control: "_LocalControl") -> None:
        try:
            record = await LoadDriver(spec, control).run()
        except Exception as exc:
            control.events.put_nowait(("failed", spec.process, repr(exc)))
        else:
            control.events.put_nowait(("done", spec.process, record))

    async def _batch_stats_at(self, at_ns: int) -> Batch | None:
        await asyncio.sleep(max(0, at_ns - time.monotonic_ns()) / 1e9)
        return await self._batch_stats()

    async def _batch_stats(self) -> Batch | None:
        s, total = self.settings, Batch()
        for i, target in enumerate(s.targets):
            if self._session is not None:
                snapshot = await http_wire.batch_statistics(self._session, http_base(target, s.tls), s.model, s.model_version)
            else:
                snapshot = await batch_statistics(self._channels[i], s.model, s.model_version)
            if snapshot is None:
                return None
            total = add_batches(total, snapshot)
        return total

    def _point(self, mode: str, level: float, records: list[DriveRecord], window_rps: list[float],
               measured: tuple[int, int], stable: bool, interval: tuple[int, int], before: Batch | None,
               after: Batch | None) -> PointResult:
        s = self.settings
        done = np.concatenate([r.done_ns for r in records])
        all_latency = np.concatenate([r.latency_ns for r in records])
        all_codes = np.concatenate([r.codes for r in records])
        keep = (done >= interval[0]) & (done < interval[1])
        latency, codes = all_latency[keep], all_codes[keep]
        duration_s = (interval[1] - interval[0]) / 1e9
        ok = int(np.count_nonzero(codes == stats.OK))
        errors = stats.count_errors(codes)
        lags = np.concatenate([r.send_lag_ns for r in records])
        ok_of_arrivals = None
        if mode == "rate":  # latency runs from the scheduled send time: done - latency is the arrival
            arrived = done - all_latency
            in_window = (arrived >= interval[0]) & (arrived < interval[1])
            ok_of_arrivals = int(np.count_nonzero(in_window & (all_codes == stats.OK)))
        batch_sizes, mean_batch = batch_delta(before, after) if before and after else ({}, None)
        return PointResult(
            mode=mode, level=float(level), duration_s=duration_s, requests=len(codes), ok=ok,
            throughput_rps=ok / duration_s, rows_per_s=ok * self.rows_per_request / duration_s,
            latency_ms=stats.latency_ms(latency[codes == stats.OK]), errors=errors,
            error_rate=(len(codes) - ok) / len(codes) if len(codes) else 0.0,
            goodput_rps=stats.goodput_rps(latency, codes, s.slo_ms, duration_s) if s.slo_ms is not None else None,
            stable=stable, window_rps=window_rps, measured_windows=measured[1] - measured[0] + 1,
            batch_sizes=batch_sizes, mean_batch_size=mean_batch,
            loadgen_cpu_cores=sum(r.cpu_s for r in records) / max(r.wall_s for r in records),
            loadgen_busiest_process=max(r.cpu_s / r.wall_s for r in records),
            send_lag_p99_ms=stats.percentile(lags, 99) / 1e6 if len(lags) else None,
            dropped=errors.get(stats.CODE_NAMES[stats.DROPPED], 0),
            unmatched_responses=sum(r.unmatched for r in records), ok_of_arrivals=ok_of_arrivals,
        )


class _LocalControl:
    """The in-process driver's control: reports go straight into the runner's event queue."""

    def __init__(self, events: "asyncio.Queue[tuple[Any, ...]]") -> None:
        self.events = events
        self.stopped = False

    def report(self, window: WindowReport) -> None:
        self.events.put_nowait(("window", window))

    def stop_requested(self) -> bool:
        return self.stopped
