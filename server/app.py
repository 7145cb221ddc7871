"""Composition root and lifecycle: builds every part from Settings and runs the server.

Start-up: the metrics endpoint, then gRPC, then HTTP/REST listen first (health
NOT_SERVING, so probes get an answer while models load), then models load,
then readiness turns on. gRPC (grpc.aio) and HTTP (aiohttp) share one event loop.

Shutdown checklist (``App.stop``), on the first SIGINT/SIGTERM:
  1. mark not ready: ServerReady false, grpc.health.v1 NOT_SERVING, HTTP /v2/health/ready 503; refuse model
     loads (UNAVAILABLE), and stop waiting for those under way: they never serve, what they build is released;
  2. keep serving for shutdown_delay_s (default 0), so load balancers see 1. and stop routing here;
  3. stop the repository poller; in fleet mode, stop watching Redis and remove this replica's state;
  4. every model's batcher drains (``DynamicBatcher.drain``): what is queued, and what the transports still
     submit, is dispatched at once, no longer waiting out max_queue_delay or a preferred batch size (priorities,
     ordering, deadlines and queue timeouts still hold), so drain_timeout_s has to cover run times only, not a
     queue delay; then stop accepting RPCs and HTTP requests; in-flight ones finish, up to drain_timeout_s (open
     streams stop reading and end UNAVAILABLE once they have answered what they read); what is still queued or
     running then, on a serving version or on one being retired (an unload or a reload under way, its queue
     still draining), is answered UNAVAILABLE (``Servable.cut``: its runs are ended) and the transports get
     _CUT_GRACE_S to send those answers before they cut what is left;
  5. unregister every shared-memory region; close each model's kernel; close the Redis link; a load still
     running is not waited for (``serve`` exits without joining its thread);
  6. flush traces (for at most 2 s), close the metrics endpoint, exit 0. A second signal exits at once with
     status 1.

A server that cannot start (a port in use, certificate files that cannot serve TLS, an unreachable
remote repository with no copy, --trace without OpenTelemetry) raises ``StartupError``: ``serve``
closes what did open, logs one line ``cannot start: ...`` and returns 1.

Fleet mode (``settings.fleet``, ``--redis-url``) adds server/fleet.py, imported only then: it
connects before the models load (so they load the fleet's desired versions) and applies the
desired state before readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from prometheus_client.registry import CollectorRegistry

from ops.access_metrics import RefusedRequests
from ops.cores import describe_cores
from model_store.registry import ModelRegistry, ModelState
from model_store.sent_files import remove_stale
from model_store.remote import MirroredRepository, RepositoryMirror
from model_store.remote_store import RemoteStoreError
from model_store.repository import ModelRepository, ModelSource
from ops.gpu import gpu_collector
from ops.logs import RequestLog
from ops.metrics import ServerMetrics
from ops.trace_settings import TraceSettings
from server.dataplane import ControlMode, DataPlane
from server.grpc_options import bind, build_server
from server.readiness import Readiness
from server.restrictions import grpc_peer_metadata
from server.grpc_service import SERVICE_NAME, InferenceServicer, method_handlers
from server.http_server import HttpListener, metrics_app, rest_app
from server.http_service import HttpService
from server.ensemble import load_ensemble
from server.servable import ServingDefaults, load_servable
from server.served import ServedVersion
from server.shared_memory import SharedMemoryRegistry
from server.settings import Settings
from server.tls import HttpTlsReloader, TlsError, describe, open_tls

if TYPE_CHECKING:
    from ops.tracing import RequestTracer
    from server.fleet import Fleet

log = logging.getLogger("fleetserve")
# Past --drain-timeout: the time the transports get to send the UNAVAILABLE answers to the requests the
# drain timeout cut, before they cut the calls themselves. A bound of the whole shutdown (README).
_CUT_GRACE_S = 1.0


class StartupError(Exception):
    """The server cannot start, for a reason its operator can fix; the message says which."""


def _version() -> str:
    try:
        return metadata.version("fleetserve")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class App:
    """One fleetserve server process. ``__init__`` does no I/O; ``start``/``stop`` are async.

    ``registry`` receives the metrics (a fresh one by default); ``tracer_provider``, an
    OpenTelemetry provider, replaces the one ``--trace`` would build.
    """

    def __init__(
        self, settings: Settings, *, registry: CollectorRegistry | None = None, tracer_provider: Any = None
    ) -> None:
        self.settings = settings
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._servicer: InferenceServicer | None = None
        self._http: HttpListener | None = None
        self._metrics_http: HttpListener | None = None
        self._http_tls: HttpTlsReloader | None = None
        self._tracer_provider = tracer_provider
        self._owns_tracer_provider = False
        self.regions = SharedMemoryRegistry()  # system shared-memory regions, one registry for both transports
        # Which requests are traced: both transports' trace-setting endpoints and the tracer share these.
        self.trace_settings = TraceSettings(exporting=settings.trace, model_known=lambda m: m in self.registry.names())
        self._poller: asyncio.Task[None] | None = None
        self.metrics_registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServerMetrics(self.metrics_registry, settings.metrics, version=_version())
        self.mirror = RepositoryMirror(settings.remote_repository) if settings.remote_repository else None
        self.repository = MirroredRepository(self.mirror) if self.mirror else ModelRepository(settings.model_repository)
        self.registry: ModelRegistry[ServedVersion] = ModelRegistry(
            self.repository, self._load_version, on_change=lambda: self.readiness.models_changed(),
            on_load_failed=self.metrics.record_load_failure,
        )
        self.readiness = Readiness(self.registry, strict=settings.strict_readiness, services=("", SERVICE_NAME))
        self.fleet: "Fleet | None" = None
        if settings.fleet is not None:
            from server.fleet import Fleet  # redis is imported only in fleet mode

            self.fleet = Fleet(settings.fleet, self.registry, self.metrics_registry, settings.metrics,
                               peer_tls=settings.grpc_tls, peer_metadata=grpc_peer_metadata(settings.grpc_restricted))
        fleet = self.fleet
        self._defaults = ServingDefaults(max_queue_size=settings.max_queue_size,
                                         sequence_finish_s=settings.drain_timeout_s,
                                         sequence_owners=fleet.sequences if fleet else None)
        self.dataplane = DataPlane(
            self.registry, version=_version(), control_mode=settings.model_control_mode, is_ready=self.readiness,
            metrics=self.metrics, request_log=RequestLog() if settings.log_format == "json" else None,
            router=fleet.router if fleet else None, cache=fleet.cache if fleet else None,
            limiter=fleet.limiter if fleet else None, sequence_owners=fleet.sequences if fleet else None,
        )
        self.metrics.observe_server(
            ready=self.readiness,
            model_states=lambda: [e.state.value for e in self.registry.index()],
            state_names=[state.value for state in ModelState],
        )

    async def _load_version(self, source: ModelSource, version: int) -> ServedVersion:
        start = time.perf_counter_ns()
        servable: ServedVersion
        try:
            if source.is_ensemble:
                servable = await load_ensemble(source, version, self.registry, self.dataplane.run_step, self.metrics)
            else:
                servable = await load_servable(source, version, self._defaults, self.metrics)
        finally:
            self.metrics.record_load(time.perf_counter_ns() - start)
        if self.fleet is not None:
            await self.fleet.on_loaded(source, version, servable)
        return servable

    def _tracer(self) -> "RequestTracer | None":
        if not self.settings.trace:
            return None
        try:
            from ops.tracing import RequestTracer, build_tracer_provider  # OpenTelemetry only when asked for
        except ImportError as exc:
            raise StartupError(f"--trace needs OpenTelemetry ({exc}): pip install 'fleetserve[tracing]'") from exc
        if self._tracer_provider is None:
            try:
                self._tracer_provider = build_tracer_provider(self.settings.trace_exporter, _version())
            except RuntimeError as exc:  # its message names the missing package
                raise StartupError(str(exc)) from exc
            self._owns_tracer_provider = True
        return RequestTracer(self._tracer_provider, self.trace_settings)

    async def start(self) -> None:
        s = self.settings
        gpu = gpu_collector()  # NVML start-up is I/O: here, not in __init__
        if gpu is not None:
            self.metrics_registry.register(gpu)
        if s.allow_metrics:
            self._metrics_http = HttpListener(metrics_app(self.metrics_registry), s.address("metrics"),
                                              s.metrics_port, shutdown_timeout_s=1.0)
            self.metrics_port = await self._listen(self._metrics_http, "metrics", s.address("metrics"), s.metrics_port)
            log.info("metrics listening on %s:%d", s.address("metrics"), self.metrics_port)
        await asyncio.to_thread(remove_stale)  # what servers killed before their shutdown left of sent model files
        # onnxruntime's intra-op threads default to these cores (shared by a model's instances).
        log.info("onnxruntime thread pools sized for %s", describe_cores())
        tracer = self._tracer()
        await self.readiness.publish()  # NOT_SERVING until the start-up models have loaded
        try:  # certificate files that cannot serve stop the start, naming the file (server/tls.py)
            tls = open_tls(s.grpc_tls if s.allow_grpc else None, s.http_tls if s.allow_http else None,
                           s.tls_reload_interval_s, self.metrics_registry)  # files of a listener left off: unread
        except TlsError as exc:
            raise StartupError(f"cannot serve over TLS: {exc}") from None
        self._http_tls = tls.http
        refused = RefusedRequests(self.metrics_registry) if s.grpc_restrictions or s.http_restrictions else None
        if s.allow_grpc:
            self._servicer = InferenceServicer(self.dataplane, tracer=tracer, regions=self.regions,
                                              trace_settings=self.trace_settings)
            server = build_server(s, [method_handlers(self._servicer)], refused)
            health_pb2_grpc.add_HealthServicer_to_server(self.readiness.health, server)
            address = f"{s.address('grpc')}:{s.grpc_port}"
            self.grpc_port = bind(server, address, tls.grpc)
            if not self.grpc_port:
                raise StartupError(f"cannot listen for gRPC on {address}: the address is in use or not available here")
            await server.start()
            self._grpc = server
            log.info("gRPC listening on %s:%d%s", s.address("grpc"), self.grpc_port, describe(s.grpc_tls))
        if s.allow_http:
            service = HttpService(self.dataplane, max_body_bytes=s.http_max_body_bytes,
                                  body_idle_timeout_s=s.http_body_idle_timeout_s, tracer=tracer, regions=self.regions,
                                  trace_settings=self.trace_settings)
            rest = rest_app(service, s.http_restricted, refused)
            self._http = HttpListener(rest, s.address("http"), s.http_port,
                                      shutdown_timeout_s=s.drain_timeout_s + _CUT_GRACE_S,
                                      auto_decompress=False,  # HttpService decodes request bodies itself
                                      tls=self._http_tls)
            self.http_port = await self._listen(self._http, "HTTP", s.address("http"), s.http_port)
            log.info("HTTP listening on %s:%d%s", s.address("http"), self.http_port, describe(s.http_tls))
        if self.fleet is not None:
            await self.fleet.connect()
        await self._sync_repository(starting=True)
        if s.model_control_mode is ControlMode.EXPLICIT:
            for name in s.load_models:
                with contextlib.suppress(Exception):
                    await self.registry.load(name)
        else:
            await self.registry.load_all()
        for entry in self.registry.index():
            log.info("model %s version %s: %s%s", entry.name, entry.version or "-", entry.state.value,
                     f" {entry.reason}" if entry.reason else "")
        if s.model_control_mode is ControlMode.POLL or (self.mirror and s.model_control_mode is ControlMode.EXPLICIT):
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        if self.fleet is not None:
            await self.fleet.start(s.address("grpc"), self.grpc_port or 0, self.http_port or 0)
        # Everything built so far (modules, descriptors, sessions, the loaded models) lives as long as
        # the server: out of the collector's sight, a full collection no longer walks it. Without this
        # every full collection stalled the event loop for about 55 ms, every few seconds under load,
        # which alone put a request in a hundred past a 95 ms objective (README, "Scheduling").
        gc.freeze()
        self.readiness.started = True
        await self.readiness.publish()
        log.info("fleetserve ready")

    async def _listen(self, listener: HttpListener, what: str, address: str, port: int) -> int:
        try:
            return await listener.start()
        except OSError as exc:
            raise StartupError(f"cannot listen for {what} on {address}:{port}: {exc.strerror or exc}") from exc

    async def _poll(self) -> None:
        """Poll mode: sync a remote repository's mirror, then apply changes. Explicit mode: only sync."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self._sync_repository()
                if self.settings.model_control_mode is ControlMode.POLL:
                    await self.registry.poll()
            except Exception:
                log.exception("repository poll failed; will retry")

    async def _sync_repository(self, starting: bool = False) -> None:
        """A remote repository: bring its local mirror in step, in a worker thread (downloads block)."""
        if self.mirror is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.mirror.sync)
        except RemoteStoreError as exc:
            if starting and not self.mirror.has_copy():
                raise StartupError(f"model repository {self.mirror.config.url}: {exc.message}") from exc
            log.error("model repository %s: %s; serving the copy from the last sync",
                      self.mirror.config.url, exc.message)

    def _drain_queues(self) -> None:
        """Step 4's start: every model version's batcher dispatches what is queued (and what the transports
        still submit) at once, instead of waiting out its queue delay or a preferred batch size."""
        for name in self.registry.names():
            for servable in self.registry.ready_servables(name).values():
                servable.drain()
        for servable in self.registry.retiring.servables():  # e.g. finishing its live sequences after a reload
            servable.drain()

    async def stop(self) -> None:
        """The shutdown checklist in the module docstring."""
        serving = self.readiness.started
        self.readiness.started = False
        self.registry.loads.close()  # 1. no load starts from now on; one under way never serves
        await self.readiness.publish()
        if serving and self.settings.shutdown_delay_s > 0:
            log.info("not ready; serving on for %.1f s before closing the listeners", self.settings.shutdown_delay_s)
            await asyncio.sleep(self.settings.shutdown_delay_s)
        if self.mirror is not None:
            self.mirror.close()  # a sync under way stops before its next file
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.fleet is not None:
            await self.fleet.leave()
        self._drain_queues()  # before the transports stop: their grace then covers run times, not queue delays
        await self._stop_transports()
        self.regions.close()  # 5. no request is left to read or write a region
        await self.registry.close()
        if not await self.registry.loads.wait_released(_CUT_GRACE_S):
            log.warning("%d model load(s) still running; exiting without waiting for them (a session being "
                        "built cannot be interrupted)", self.registry.loads.loading)
        if self.fleet is not None:
            await self.fleet.close()
        if self._owns_tracer_provider:
            from ops.tracing import TRACE_FLUSH_TIMEOUT_S, shutdown_tracer_provider

            if not await asyncio.get_running_loop().run_in_executor(None, shutdown_tracer_provider,
                                                                     self._tracer_provider):
                log.warning("spans not exported %.0f s into shutdown are dropped: the trace collector is down "
                            "or slow", TRACE_FLUSH_TIMEOUT_S)
        if self._metrics_http is not None:
            await self._metrics_http.stop()
        log.info("fleetserve stopped")

    async def _stop_transports(self) -> None:
        """Step 4: stop accepting; in-flight requests get drain_timeout_s; then what is still queued or running
        is answered UNAVAILABLE (``Servable.cut``), and the transports get _CUT_GRACE_S to send those answers
        before they cut what is left (gRPC cancels its calls, HTTP closes its connections)."""
        drain_s = self.settings.drain_timeout_s
        stopping: list[asyncio.Future[None]] = []
        if self._servicer is not None:
            self._servicer.close_streams()  # open streams end once they have answered what they read
        if self._grpc is not None:
            stopping.append(asyncio.ensure_future(self._grpc.stop(grace=drain_s + _CUT_GRACE_S)))
        if self._http is not None:
            stopping.append(asyncio.ensure_future(self._http.stop()))  # bounded by drain_s + _CUT_GRACE_S
        if stopping:
            _, pending = await asyncio.wait(stopping, timeout=drain_s)
            if pending:
                reason = (f"the server is shutting down: its drain timeout (--drain-timeout {drain_s:g} s) "
                          "ended")
                held = [s for n in self.registry.names() for s in self.registry.ready_servables(n).values()]
                held += self.registry.retiring.servables()  # unloaded or swapped out, their queues still draining
                cut = [s.cut(reason) for s in held]
                log.warning("drain timeout (%g s) ended with requests in flight: answering them UNAVAILABLE",
                            drain_s)
                await asyncio.gather(*cut)
        await asyncio.gather(*stopping)

async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM, then shut down cleanly (a second signal forces exit); the exit status."""
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("shutting down: finishing in-flight requests (a second signal forces exit)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    failure: StartupError | None = None
    try:
        await app.start()
        await stop.wait()
    except StartupError as exc:
        failure = exc
    finally:
        await app.stop()
    status = 0
    if failure is not None:
        log.error("cannot start: %s", failure)  # one line, the last one: no traceback for an operator's error
        status = 1
    if app.registry.loads.loading:  # its worker thread would hold the interpreter's exit until the load ends
        logging.shutdown()
        os._exit(status)
    return status


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(serve(settings))
    else:
        return uvloop.run(serve(settings))
