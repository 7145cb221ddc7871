"""Model loads and shutdown: a load under way when shutdown starts never serves and what it built is released;
no load starts after. Fake servables over a real repository on disk; each step driven by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from model_store.registry import ModelRegistry, ModelState
from model_store.repository import ModelRepository, ModelSource
from ops.errors import Code, ShuttingDown


class FakeServable:
    def __init__(self, version: int) -> None:
        self.version = version
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class SlowLoads:
    """Version 2 loads only once ``release`` is set (a slow session build); every servable built is kept."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.built: list[FakeServable] = []

    async def __call__(self, source: ModelSource, version: int) -> FakeServable:
        if version == 2:
            self.started.set()
            await self.release.wait()
        servable = FakeServable(version)
        self.built.append(servable)
        return servable


def model_file(root: Path, version: int) -> None:
    path = root / "m" / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"model")
    config = root / "m" / "config.pbtxt"
    if not config.exists():
        config.write_text("version_policy { all {} }\n")


async def serving_v1_then_v2_loading(tmp_path: Path) -> tuple[ModelRegistry[FakeServable], SlowLoads]:
    loads = SlowLoads()
    registry: ModelRegistry[FakeServable] = ModelRegistry(ModelRepository(tmp_path), loads)
    model_file(tmp_path, 1)
    await registry.load("m")
    model_file(tmp_path, 2)
    return registry, loads


async def test_a_polled_version_still_loading_when_shutdown_starts_never_serves_and_is_released(tmp_path: Path):
    registry, loads = await serving_v1_then_v2_loading(tmp_path)
    await registry.poll()  # records the new files; the next poll loads them
    poll = asyncio.ensure_future(registry.poll())
    await asyncio.wait_for(loads.started.wait(), 5)
    registry.loads.close()  # SIGTERM
    await asyncio.wait_for(poll, 1)  # not held by the load: the model's lock is free for the shutdown's unload
    assert sorted(registry.ready_servables("m")) == [1]
    entry = {e.version: e for e in registry.index()}["2"]
    assert (entry.state, entry.reason) == (ModelState.UNAVAILABLE, "the server is shutting down")
    assert registry.loads.loading == 1
    loads.release.set()  # the session build ends after all
    assert await registry.loads.wait_released(5)
    assert [(s.version, s.closed) for s in loads.built] == [(1, False), (2, True)]
    await registry.close()
    assert loads.built[0].closed and registry.names() == []


async def test_a_poller_cancelled_mid_load_leaks_nothing(tmp_path: Path):
    registry, loads = await serving_v1_then_v2_loading(tmp_path)
    await registry.poll()
    poll = asyncio.ensure_future(registry.poll())
    await asyncio.wait_for(loads.started.wait(), 5)
    registry.loads.close()  # App.stop shuts the gate, then cancels its poller
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    loads.release.set()
    assert await registry.loads.wait_released(5)
    assert [(s.version, s.closed) for s in loads.built] == [(1, False), (2, True)]
    assert sorted(registry.ready_servables("m")) == [1]


async def test_a_load_whose_caller_gives_up_still_serves(tmp_path: Path):
    """An explicit load's client gone (its deadline passed) cancels the RPC's task: the load used to be thrown
    away when it finished, leaving the version LOADING in the index until the next load. It completes, as in
    Triton."""
    registry, loads = await serving_v1_then_v2_loading(tmp_path)
    caller = asyncio.ensure_future(registry.load("m"))
    await asyncio.wait_for(loads.started.wait(), 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    loads.release.set()
    assert await asyncio.wait_for(_until(lambda: sorted(registry.ready_servables("m")) == [1, 2]), 5)
    assert [(s.version, s.closed) for s in loads.built] == [(1, False), (2, False)]
    assert {e.version: e.state for e in registry.index()} == {"1": ModelState.READY, "2": ModelState.READY}


async def _until(predicate) -> bool:
    while not predicate():
        await asyncio.sleep(0.01)
    return True


async def test_no_load_starts_once_shutdown_started(tmp_path: Path):
    registry, loads = await serving_v1_then_v2_loading(tmp_path)
    registry.loads.close()
    with pytest.raises(ShuttingDown) as refused:
        await registry.load("m")
    assert refused.value.code is Code.UNAVAILABLE
    assert refused.value.message.startswith("the server is shutting down: model 'm' is not loaded")
    await registry.poll()
    await registry.poll()  # settled: would load version 2, but loads are refused
    assert not loads.started.is_set() and sorted(registry.ready_servables("m")) == [1]
