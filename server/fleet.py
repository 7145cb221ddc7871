"""This replica's part in a fleet (``--redis-url``): built by ``App`` only in fleet mode.

Holds the Redis link and what uses it: the reconciler and traffic router (rollouts), the response
cache, the tenant rate limiter, the heartbeat, the fleet metrics. Lifecycle, driven by ``App``:

1. ``connect`` before the start-up loads: open the link (a short wait) and pin each model with a
   desired state, so the loads bring up the fleet's versions, not the version policy's;
2. ``start`` after the loads, before readiness: apply the desired state (routes), read the rate
   limits, then watch in the background: change events (pub/sub), a full reconcile every
   ``reconcile_interval_s`` and on every reconnect (events sent while down are lost), and the
   heartbeat (actual state with a TTL, at once after each change);
3. ``leave`` at shutdown, before draining: stop watching and remove this replica's state;
4. ``close`` after the drain: close the link.

Redis down never fails a request: the router and registry keep the last known desired state, the
cache skips Redis, the limiter falls back to local shares (see each module).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any, Sequence

from prometheus_client.registry import CollectorRegistry

from model_store.reconcile import Reconciler, RolloutStatus
from model_store.registry import ModelRegistry
from model_store.repository import ModelSource
from model_store.rollout import Keys, ModelReport, ReplicaState, RolloutStore, VersionReport
from model_store.routing import TrafficRouter
from ops.errors import ServingError
from ops.fleet_metrics import FleetMetrics, RolloutGauge
from ops.histograms import MetricsConfig
from ops.redis_link import RedisLink, RedisUnavailable
from server.cache_codec import version_digest
from server.rate_limit import TenantLimiter
from server.response_cache import ResponseCache
from server.sequence_owners import SequenceOwners
from server.served import ServedVersion
from server.settings import FleetSettings
from server.tls import TlsConfig, peer_channel

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 2.0  # at start-up, how long to wait for Redis before starting on the version policy


def advertised(address: str, host: str, port: int) -> str:
    """host:port others reach this replica at: ``address`` (its port defaults to ``port``), else ``host``
    unless it is a wildcard, else the hostname."""
    if address:
        return address if address.rsplit(":", 1)[-1].isdigit() and ":" in address else f"{address}:{port}"
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    return f"{host}:{port}"


class Fleet:
    """See the module docstring."""

    def __init__(
        self, settings: FleetSettings, registry: ModelRegistry[ServedVersion], metrics_registry: CollectorRegistry,
        metrics_config: MetricsConfig, *, peer_tls: TlsConfig | None = None,
        peer_metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        """``peer_tls``: the gRPC listener's TLS, which calls to other replicas use too; ``peer_metadata``: sent with
        those calls (a restricted inference API's header, server/restrictions.py)."""
        self.settings = settings
        self._registry = registry
        self.link = RedisLink(settings.redis_url, timeout_s=settings.redis_timeout_s)
        self.keys = Keys()
        self.store = RolloutStore(self.link, self.keys)
        self.metrics = FleetMetrics(metrics_registry, metrics_config)
        self.router = TrafficRouter()
        self.reconciler = Reconciler(self.store, registry, self.router, on_change=self._changed)
        self.cache = ResponseCache(self.link, self.keys, self.metrics, local_bytes=settings.cache_local_bytes)
        self.limiter = TenantLimiter(self.link, self.keys, self.metrics)
        self.sequences = SequenceOwners(self.link, self.keys, self.metrics,
                                        peer_channel(peer_tls, settings.peer_tls_name), tuple(peer_metadata))
        self.replicas = 0  # live replicas last seen
        self._started_at = time.time()
        self._addresses = ("", "")
        self._beat = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics.observe(
            redis_up=lambda: self.link.up, transitions=lambda: dict(self.link.transitions),
            replicas=lambda: self.replicas, rollouts=self._rollout_gauges,
            local_cache=lambda: (len(self.cache.local), self.cache.local.bytes),
        )

    # ---- lifecycle ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Step 1 of the module docstring."""
        if not await self.link.start(connect_timeout_s=CONNECT_WAIT_S):
            log.warning("starting without the fleet's desired state: models load by their version policy")
            return
        try:
            await self.reconciler.prime()
        except RedisUnavailable as exc:
            log.warning("cannot read the fleet's desired state (%s): models load by their version policy", exc)

    async def start(self, grpc_host: str, grpc_port: int, http_port: int) -> None:
        """Step 2 of the module docstring."""
        s = self.settings
        self._addresses = (advertised(s.advertise_address, grpc_host, grpc_port),
                           advertised("", grpc_host, http_port) if http_port else "")  # 0: REST is off
        self.sequences.address = self._addresses[0]
        with contextlib.suppress(RedisUnavailable):
            await self.reconciler.reconcile_all()
            await self.limiter.refresh()
        self.link.add_listener(lambda up: self._beat.set() if up else None)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(), name="fleet-watch"),
                       loop.create_task(self._heartbeat(), name="fleet-heartbeat")]
        log.info("fleet: replica %s at %s, redis %s (%s)", s.replica_id, self._addresses[0], self.link.name,
                 "up" if self.link.up else "down")

    async def leave(self) -> None:
        """Step 3 of the module docstring."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.reconciler.stop()
        await self.limiter.stop()
        with contextlib.suppress(RedisUnavailable):
            await self.store.remove_replica(self.settings.replica_id)

    async def close(self) -> None:
        """Step 4 of the module docstring."""
        await self.cache.stop()
        await self.sequences.close()
        await self.link.stop()

    async def on_loaded(self, source: ModelSource, version: int, servable: ServedVersion) -> None:
        """A version loaded: if its config enables the response cache, register it (hashing the version's
        files in a worker thread). Files that changed since the registry read them (before the load) may not
        be what the session holds: such a copy is not cached (a poll reloads it, and the reload is)."""
        if not servable.config.response_cache:
            return
        path = source.versions[version]
        digest = await asyncio.get_running_loop().run_in_executor(None, version_digest, str(path))
        try:
            config, versions = self._registry.repository.fingerprint_of(source.name)
            unchanged = (config, dict(versions).get(version, ())) == source.version_fingerprint(version)
        except ServingError:
            unchanged = False
        if not unchanged:
            log.warning("model '%s' version %d: its files changed while it loaded; its answers are not cached "
                        "until it is loaded again", source.name, version)
            return
        self.cache.register(servable, digest)

    # ---- background ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.reconcile_interval_s
        while True:
            await self.link.wait_up()
            try:
                async with self.store.subscription() as events:
                    await self._full()  # after subscribing: nothing written from now on can be missed
                    next_full = loop.time() + interval
                    while True:
                        event = await events.next(max(0.0, min(1.0, next_full - loop.time())))
                        if event is not None and event.kind == "desired":
                            self.reconciler.poke(event.model)
                        elif event is not None and event.kind == "limits":
                            await self.limiter.refresh()
                        if loop.time() >= next_full:
                            await self._full()
                            next_full = loop.time() + interval
            except RedisUnavailable as exc:
                if self.link.up:  # Redis answered with an error: not a connection problem; do not spin
                    log.warning("fleet watch: %s", exc)
                    await asyncio.sleep(1.0)
            except Exception:
                log.exception("fleet watch failed; restarting it")
                await asyncio.sleep(1.0)

    async def _full(self) -> None:
        await self.reconciler.reconcile_all(wait=False)
        await self.limiter.refresh()

    async def _heartbeat(self) -> None:
        s = self.settings
        while True:
            self._beat.clear()
            try:
                self.replicas = await self.store.publish_replica(self.snapshot(), s.heartbeat_ttl_s)
                self.limiter.replicas = max(1, self.replicas)
            except RedisUnavailable:
                pass
            except Exception:
                log.exception("fleet heartbeat failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._beat.wait(), s.heartbeat_interval_s)

    def _changed(self) -> None:
        self._beat.set()

    # ---- reporting ----------------------------------------------------------------------------
    def snapshot(self) -> ReplicaState:
        """This replica's actual state, as the heartbeat publishes it."""
        status = self.reconciler.status()
        entries: dict[str, list[Any]] = {}
        try:
            index = self._registry.index()
        except ServingError:  # the repository folder is unreadable right now: report what is loaded
            index = []
        for entry in index:
            entries.setdefault(entry.name, []).append(entry)
        models: dict[str, ModelReport] = {}
        total = 0
        # A model known here only from its desired state (not in this replica's repository) is not reported: this
        # replica serves none of it, so `fleet rollout --wait` must not wait for it, nor count it as lacking a version.
        for name in sorted(set(entries) | (set(status) & set(self._registry.names()))):
            versions = tuple(VersionReport(int(e.version), e.state.value, e.reason)
                             for e in entries.get(name, ()) if e.version)
            model_error = "; ".join(e.reason for e in entries.get(name, ()) if not e.version and e.reason)
            depth = sum(s.queue_depth for s in self._registry.ready_servables(name).values())
            total += depth
            st = status.get(name, RolloutStatus())
            models[name] = ModelReport(versions, self.reconciler.available.get(name, ()), self.router.split(name),
                                       st.desired_revision, st.applied_revision, st.error or model_error, depth)
        return ReplicaState(self.settings.replica_id, self._addresses[0], self._addresses[1], self._started_at,
                            time.time(), total, models)

    def _rollout_gauges(self) -> list[RolloutGauge]:
        served = set(self._registry.names())  # as in ``snapshot``: not the models known only from a desired state
        return [RolloutGauge(name, st.desired_revision, st.applied_revision, bool(st.error))
                for name, st in sorted(self.reconciler.status().items()) if name in served]
