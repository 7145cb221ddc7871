"""ResponseCache through its public seams: ``fetch`` with a fake compute, a real Redis (or none), a fake clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client.registry import CollectorRegistry

from model_store.config import ModelConfig, TensorSpec
from model_store.datatypes import BY_NAME
from model_store.rollout import Keys
from ops.fleet_metrics import FleetMetrics
from ops.redis_link import RedisLink
from ops.redis_testing import RedisServer
from ops.statistics import ModelStats
from server.response_cache import LocalTier, ResponseCache
from server.types import InputTensor

SPEC = (TensorSpec("INPUT0", BY_NAME["FP32"], (4,)),)
OUT = (TensorSpec("OUTPUT0", BY_NAME["FP32"], (4,)),)


class FakeServable:
    def __init__(self) -> None:
        self.config = ModelConfig("m", 8, SPEC, OUT, response_cache=True, response_cache_ttl_s=30)
        self.version_str = "1"
        self.stats = ModelStats()


def inputs(value: float) -> list[InputTensor]:
    return [InputTensor("INPUT0", "FP32", (1, 4), np.full((1, 4), value, np.float32))]


class Compute:
    def __init__(self, fail: bool = False, delay_s: float = 0.05) -> None:
        self.calls = 0
        self.fail = fail
        self.delay_s = delay_s

    async def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("the batch failed")
        return {"OUTPUT0": np.full((1, 4), 7.0, np.float32)}


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


async def make_cache(url: str) -> tuple[ResponseCache, RedisLink, FakeServable]:
    link = RedisLink(url, timeout_s=0.1)
    await link.start()
    cache = ResponseCache(link, Keys(), FleetMetrics(CollectorRegistry()), local_bytes=1 << 20)
    servable = FakeServable()
    cache.register(servable, b"weights")
    return cache, link, servable


async def test_identical_concurrent_misses_compute_once_and_a_failed_leader_fails_alone(redis_server):
    cache, link, servable = await make_cache(redis_server.url)
    try:
        await link.call(lambda c: c.flushdb())
        compute = Compute()
        results = await asyncio.gather(*(cache.fetch(servable, inputs(1.0), None, compute) for _ in range(10)))
        assert compute.calls == 1 and all(r["OUTPUT0"].tolist() == [[7.0] * 4] for r in results)
        assert servable.stats.cache_miss.count == 1 and servable.stats.cache_hit.count == 9
        failing = Compute(fail=True)
        outcomes = await asyncio.gather(*(cache.fetch(servable, inputs(2.0), None, failing) for _ in range(3)),
                                        return_exceptions=True)
        assert [isinstance(o, RuntimeError) for o in outcomes].count(True) == 3  # each tried, none got a stale answer
        assert failing.calls == 3
    finally:
        await cache.stop()
        await link.stop()


async def test_without_redis_the_local_tier_still_answers():
    cache, link, servable = await make_cache("redis://127.0.0.1:1/0")
    try:
        compute = Compute(delay_s=0)
        for _ in range(3):
            await cache.fetch(servable, inputs(3.0), ["OUTPUT0"], compute)
        assert compute.calls == 1 and servable.stats.cache_hit.count == 2
        handle = cache._metrics.cache("m", "1")
        assert handle.errors == [1, 1] and handle.hits[0] == 2  # one get and one set went without Redis
    finally:
        await cache.stop()
        await link.stop()


def test_the_local_tier_evicts_the_least_recent_and_the_expired():
    tier = LocalTier(max_bytes=48)
    a = {"x": np.zeros(4, np.float32)}  # 16 bytes each
    tier.put(b"a", a, expires_at=10)
    tier.put(b"b", a, expires_at=10)
    tier.put(b"c", a, expires_at=1)
    assert tier.get(b"a", now=0) is a  # a is now the most recent
    tier.put(b"d", a, expires_at=10)  # over 48 bytes: b, the least recent, goes
    assert tier.get(b"b", now=0) is None and tier.get(b"a", now=0) is a
    assert tier.get(b"c", now=2) is None  # expired
    assert len(tier) == 2 and tier.bytes == 32
    tier.put(b"huge", {"x": np.zeros(100, np.float32)}, expires_at=10)  # larger than the tier: not kept
    assert tier.get(b"huge", now=0) is None


async def test_a_version_whose_files_change_while_it_loads_is_not_cached(tmp_path):
    """The key hashes the files after the load: files replaced meanwhile are not what the session holds, and
    the old weights' answers would be stored under the new files' key (the reload that follows would meet them)."""
    from model_store.registry import ModelRegistry
    from model_store.repository import ModelRepository
    from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
    from ops.histograms import MetricsConfig
    from server.fleet import Fleet
    from server.settings import FleetSettings

    repo = write_model_repository(tmp_path, {"m": ModelSpec(write_add_constant_model)})
    registry = ModelRegistry(ModelRepository(repo), lambda source, version: None)
    fleet = Fleet(FleetSettings("redis://127.0.0.1:1/0", "a"), registry, CollectorRegistry(),
                  MetricsConfig(process_metrics=False))
    steady, changed = FakeServable(), FakeServable()
    await fleet.on_loaded(registry.repository.read("m"), 1, steady)
    source = registry.repository.read("m")  # what the registry read before loading
    write_add_constant_model(repo / "m" / "1", constant=2.0)  # replaced while the session was being built
    await fleet.on_loaded(source, 1, changed)
    for servable, runs in ((steady, 1), (changed, 2)):
        compute = Compute(delay_s=0)
        for _ in range(2):
            await fleet.cache.fetch(servable, inputs(4.0), None, compute)
        assert compute.calls == runs
    await fleet.cache.stop()
