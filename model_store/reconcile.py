"""Drives this replica's registry and traffic router toward the fleet's desired state.

For one model whose desired state (revision r, split D) is newer than what this replica applied:

1. load: pin the registry to D plus the versions serving now, and load; nothing serving is
   touched, so traffic keeps flowing to the old versions while the new ones load;
2. if any version of D is not READY (it failed to load, or this replica's repository lacks it):
   stop here. The replica keeps serving the revision it had, and reports r as not applied with
   the reason (``status``); it tries again at each full reconcile, and the registry reloads a
   failed version only once its files change. A replica that serves nothing of the model (it
   started during the rollout, pinned to D) serves D's previous split instead, else its version
   policy;
3. shift: the router takes D's split (only READY versions are ever routed to);
4. retire: pin the registry to D exactly and load, which drains and unloads the other versions.

An empty split returns the model to its version policy. Desired states only move forward: a
revision at or below the one applied is ignored. When Redis is unreachable nothing changes: the
registry keeps its pins and the router its splits (the last known desired state). When Redis
answers without a desired state this replica knows (it restarted empty, was flushed), or with an
older one, the full reconcile writes the known one back; a record written after the known one (on
Redis's clock) but numbered below it, an operator's command that landed after the loss, wins
instead: it is renumbered above what this replica knows, and applied (``RolloutStore.restore_desired``).

Loop-bound. Imports model_store and ops only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from model_store.registry import ModelRegistry
from model_store.rollout import DesiredModel, RolloutStore, WriteBack
from model_store.routing import TrafficRouter, describe_split
from ops.errors import ServingError
from ops.redis_link import RedisUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutStatus:
    """How far this replica got with one model's desired state."""

    desired_revision: int = 0
    applied_revision: int = 0
    error: str = ""  # why desired_revision is not applied (empty once it is)


class Reconciler:
    """See the module docstring. ``on_applied`` is called after each change of ``status`` (a heartbeat)."""

    def __init__(
        self, store: RolloutStore, registry: ModelRegistry[Any], router: TrafficRouter,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._router = router
        self._on_change = on_change
        self._desired: dict[str, DesiredModel] = {}  # the last known desired state
        self._status: dict[str, RolloutStatus] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self.available: dict[str, tuple[int, ...]] = {}  # versions in this replica's repository, by model

    # ---- reading ------------------------------------------------------------------------------
    def status(self) -> dict[str, RolloutStatus]:
        return dict(self._status)

    def desired(self, model: str) -> DesiredModel | None:
        return self._desired.get(model)

    # ---- driving ------------------------------------------------------------------------------
    async def prime(self) -> None:
        """Before the start-up loads: pin each model with a desired state, so start-up loads exactly its
        versions (a replica joining mid-rollout never serves a version the fleet has left). Raises
        ``RedisUnavailable``; the models then start on their version policy."""
        for desired in (await self._store.read_all_desired()).values():
            self._take(desired)
            self._registry.pin(desired.model, desired.versions or None)

    async def reconcile_all(self, wait: bool = True) -> None:
        """Read every desired state and apply what is new or not yet applied: now, or (``wait`` False) in
        the background, one task per model. Raises ``RedisUnavailable``."""
        stored = await self._store.read_all_desired()
        for desired in stored.values():
            self._take(desired)
        await self._restore(stored)
        self._refresh_available()
        for name in sorted(self._desired):
            if wait:
                await self._reconcile(name)
            elif self._status.get(name, RolloutStatus()).applied_revision < self._desired[name].revision:
                self.poke(name, fetch=False)

    async def _restore(self, stored: dict[str, DesiredModel]) -> None:
        """Write back the desired states this replica knows that Redis has lost (it restarted empty, was
        flushed, or came back from an older snapshot), so `fleet status`, promote and rollback see them again."""
        for name in sorted(self._desired):
            await self._settle(name, stored.get(name))

    async def _settle(self, name: str, found: DesiredModel | None) -> None:
        """``found`` (what Redis holds for ``name``) is not what this replica knows, nor newer by revision: Redis
        lost its data. Write the known state back, unless ``found`` was written after it (an operator's command
        that landed after the loss, numbered below what replicas know): that one wins, renumbered above, and
        this replica takes it (the others do on the event)."""
        known = self._desired[name]
        if found is not None and (found.revision > known.revision or found == known):
            return
        outcome, revision = await self._store.restore_desired(known)
        if outcome is WriteBack.RESTORED:
            log.warning("model '%s': redis had %s; wrote back revision %d (%s), which this replica knows",
                        name, f"revision {found.revision}" if found else "no desired state", known.revision,
                        describe_split(known.split))
        elif outcome is WriteBack.RENUMBERED:
            log.warning("model '%s': redis lost its data, then someone wrote %s as revision %d, below revision %d "
                        "known here; it is the newer write: renumbered revision %d", name,
                        describe_split(found.split) if found else "a desired state",
                        found.revision if found else 0, known.revision, revision)
            fresh = await self._store.read_desired(name)
            if fresh is not None:
                self._take(fresh)

    async def reconcile_model(self, model: str) -> None:
        """Read one model's desired state and apply it. Raises ``RedisUnavailable``."""
        desired = await self._store.read_desired(model)
        if desired is None:
            return
        if model in self._desired:
            await self._settle(model, desired)  # nothing unless Redis lost its data
        self._take(desired)
        await self._reconcile(model)

    def poke(self, model: str, fetch: bool = True) -> None:
        """Reconcile ``model`` soon, in the background (an event arrived: ``fetch`` its desired state first);
        pokes while one runs coalesce into one more run."""
        if model in self._running:
            self._dirty.add(model)
            return
        self._running[model] = asyncio.get_running_loop().create_task(self._poked(model, fetch))

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poked(self, model: str, fetch: bool) -> None:
        try:
            while True:
                self._dirty.discard(model)
                try:
                    if fetch or model not in self._desired:
                        await self.reconcile_model(model)
                    else:
                        await self._reconcile(model)
                    fetch = True
                except RedisUnavailable:
                    return  # the full reconcile after reconnecting catches up
                except Exception:
                    log.exception("model '%s': reconcile failed", model)
                if model not in self._dirty:
                    return
        finally:
            self._running.pop(model, None)

    def _take(self, desired: DesiredModel) -> None:
        known = self._desired.get(desired.model)
        if known is not None and desired.revision <= known.revision:
            return
        self._desired[desired.model] = desired
        status = self._status.get(desired.model, RolloutStatus())
        self._status[desired.model] = replace(status, desired_revision=desired.revision)

    def _refresh_available(self) -> None:
        repository = self._registry.repository
        for name in self._registry.names():
            try:
                self.available[name] = tuple(sorted(repository.read(name).versions))
            except ServingError:
                self.available.pop(name, None)

    async def _reconcile(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            desired = self._desired[name]
            status = self._status.get(name, RolloutStatus())
            if status.applied_revision >= desired.revision:
                return
            if name not in self._registry.names():
                # Not served here (explicit control, or not in this repository): a later load uses the pin.
                self._registry.pin(name, desired.versions or None)
                return
            await self._apply(name, desired, status)

    async def _apply(self, name: str, desired: DesiredModel, status: RolloutStatus) -> None:
        start = time.monotonic()
        registry = self._registry
        wanted = desired.versions
        if not wanted:
            self._router.clear(name)
            registry.pin(name, None)
            with contextlib.suppress(ServingError):
                await registry.load(name)
            self._applied(name, desired, start)
            return
        serving = set(registry.ready_servables(name))
        if not wanted <= serving:
            registry.pin(name, wanted | serving)  # 1. load; what serves now keeps serving
            with contextlib.suppress(ServingError):
                await registry.load(name)
        missing = wanted - set(registry.ready_servables(name))
        if missing:  # 2. keep serving the revision we had
            error = "; ".join(self._why(name, v) for v in sorted(missing))
            if not registry.ready_servables(name):
                await self._fall_back(name, desired)  # nothing to keep: it started here during the rollout
            if status.error != error or status.desired_revision != desired.revision:
                log.error("model '%s': cannot apply revision %d (%s): %s; still serving %s", name, desired.revision,
                          describe_split(desired.split), error, describe_split(self._router.split(name)) or "latest")
            self._status[name] = RolloutStatus(desired.revision, status.applied_revision, error)
            self._on_change()
            return
        self._router.set(name, desired.split)  # 3. shift
        registry.pin(name, wanted)  # 4. retire the rest (after the router has left them), forget failed ones
        with contextlib.suppress(ServingError):
            await registry.load(name)
        self._applied(name, desired, start)

    async def _fall_back(self, name: str, desired: DesiredModel) -> None:
        """Nothing of ``name`` serves here and ``desired`` cannot load (a replica that started during the rollout):
        serve the split before it, else the version policy, rather than nothing. The next reconcile tries again."""
        registry = self._registry
        previous = frozenset(v for v, _ in desired.previous)
        if previous:
            registry.pin(name, previous)
            with contextlib.suppress(ServingError):
                await registry.load(name)
            if previous <= set(registry.ready_servables(name)):
                self._router.set(name, desired.previous)
                return
        self._router.clear(name)
        registry.pin(name, None)
        with contextlib.suppress(ServingError):
            await registry.load(name)

    def _applied(self, name: str, desired: DesiredModel, start: float) -> None:
        self._status[name] = RolloutStatus(desired.revision, desired.revision, "")
        log.info("model '%s': revision %d applied: %s (%.2f s)", name, desired.revision,
                 describe_split(desired.split), time.monotonic() - start)
        self._on_change()

    def _why(self, name: str, version: int) -> str:
        for entry in self._registry.index():
            if entry.name == name and entry.version == str(version):
                return f"version {version} {entry.state.value}" + (f": {entry.reason}" if entry.reason else "")
        try:
            present = self._registry.repository.read(name).versions
        except ServingError as exc:
            return f"version {version}: {exc.message}"
        if version not in present:
            return f"version {version} is not in this replica's model repository"
        return f"version {version} did not load"
