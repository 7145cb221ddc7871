"""Composition root and lifecycle: builds every part from Settings and runs the server.

Start-up: the gRPC server listens first (health NOT_SERVING, so probes get an
answer while models load), then models load, then readiness turns on.

Shutdown checklist (``App.stop``), on the first SIGINT/SIGTERM:
  1. mark not ready: ServerReady false, grpc.health.v1 NOT_SERVING;
  2. stop the repository poller;
  3. stop accepting RPCs and let in-flight ones finish, up to drain_timeout_s;
  4. drain each model's queue and close its kernel;
  5. exit 0. A second signal exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from functools import partial
from importlib import metadata

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from model_store.registry import ModelRegistry
from model_store.repository import ModelRepository
from server.dataplane import ControlMode, DataPlane
from server.grpc_service import SERVICE_NAME, InferenceServicer, method_handlers
from server.servable import Servable, ServingDefaults, load_servable
from server.settings import Settings

log = logging.getLogger("fleetserve")


def _version() -> str:
    try:
        return metadata.version("fleetserve")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class App:
    """One fleetserve server process. ``__init__`` does no I/O; ``start``/``stop`` are async."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = False
        self.grpc_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._poller: asyncio.Task[None] | None = None
        defaults = ServingDefaults(max_queue_size=settings.max_queue_size)
        self.repository = ModelRepository(settings.model_repository)
        self.registry: ModelRegistry[Servable] = ModelRegistry(self.repository, partial(load_servable, defaults=defaults))
        self.dataplane = DataPlane(
            self.registry, version=_version(), control_mode=settings.model_control_mode, is_ready=lambda: self._ready
        )

    async def start(self) -> None:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((method_handlers(InferenceServicer(self.dataplane)),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._set_health(False)
        address = f"{s.host}:{s.grpc_port}"
        self.grpc_port = server.add_insecure_port(address)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._grpc = server
        log.info("gRPC listening on %s:%d", s.host, self.grpc_port)
        if s.model_control_mode is ControlMode.EXPLICIT:
            for name in s.load_models:
                with contextlib.suppress(Exception):
                    await self.registry.load(name)
        else:
            await self.registry.load_all()
        for entry in self.registry.index():
            log.info("model %s version %s: %s %s", entry.name, entry.version or "-", entry.state.value, entry.reason)
        if s.model_control_mode is ControlMode.POLL:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        self._ready = True
        await self._set_health(True)
        log.info("fleetserve ready")

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.registry.poll()
            except Exception:
                log.exception("repository poll failed; will retry")

    async def stop(self) -> None:
        """The shutdown checklist in the module docstring."""
        self._ready = False
        await self._set_health(False)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._grpc is not None:
            await self._grpc.stop(grace=self.settings.drain_timeout_s)
        await self.registry.close()
        log.info("fleetserve stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly (a second signal forces exit)."""
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
    try:
        await app.start()
        await stop.wait()
    finally:
        await app.stop()


def run(settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
