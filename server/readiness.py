"""Whether the server is ready: ServerReady, ``/v2/health/ready``, ``grpc.health.v1`` and ``fleetserve_server_ready``
all read ``Readiness``.

Ready once the start-up models have loaded, until shutdown begins. With ``strict`` (Triton's
``--strict-readiness``) also only while every model the server tracks serves: none that failed to load or
has no version ready (``ModelRegistry.unready``). The Open Inference Protocol's "server ready" means all
models ready, which ``strict`` is; it is off by default because of what it does to a fleet: the replicas
of a fleet poll the same repository, so one model pushed there that does not load would take every
replica out of service at once (the alert ``FleetserveModelLoadFailures`` reports it instead). Turned on,
a replica that started without one of its models never takes traffic, and a rollout that brings a broken
model stops at its first new pod. Changes reach ``grpc.health.v1`` as they happen and are logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("fleetserve")


class ModelStates(Protocol):
    def unready(self) -> list[str]: ...


class Readiness:
    """See the module docstring. Loop-bound. ``services``: the grpc.health.v1 names to publish."""

    def __init__(self, registry: ModelStates, *, strict: bool, services: tuple[str, ...]) -> None:
        self.registry = registry
        self.strict = strict
        self.services = services
        self.health = health.aio.HealthServicer()
        self.started = False  # the start-up models have loaded and shutdown has not begun
        self._published: bool | None = None
        self._waiting: tuple[str, ...] = ()  # the models strict readiness last said it waits for
        self._tasks: set[asyncio.Task[Any]] = set()

    def __call__(self) -> bool:
        return self.started and not (self.strict and self.registry.unready())

    async def publish(self) -> None:
        """Set grpc.health.v1 to what ``self()`` says now; log what strict readiness waits for, as it changes."""
        ready = self()
        if self.strict and self.started:
            unready = tuple(self.registry.unready())
            if unready and unready != self._waiting:
                log.warning("not ready (--strict-readiness): model(s) %s not ready", ", ".join(unready))
            elif not unready and self._waiting:
                log.info("ready again: every model is ready")
            self._waiting = unready
        if ready == self._published:
            return
        self._published = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self.services:
            await self.health.set(service, status)

    def models_changed(self) -> None:
        """The registry's ``on_change``: with strict readiness, publish what the change did to readiness."""
        if self.strict and self.started:
            task = asyncio.get_running_loop().create_task(self.publish())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
