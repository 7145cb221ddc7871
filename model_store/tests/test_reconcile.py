"""The rollout store and the reconciler against a real redis-server, with a real registry of fake servables."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from model_store.reconcile import Reconciler
from model_store.registry import ModelRegistry
from model_store.repository import ModelRepository, ModelSource
from model_store.rollout import DesiredModel, Event, ModelReport, ReplicaState, RolloutStore, VersionReport, WriteBack
from model_store.routing import BUCKETS, TrafficRouter, make_split
from ops.errors import ConfigError
from ops.redis_link import RedisLink
from ops.redis_testing import RedisServer


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
async def store(redis_server):
    link = RedisLink(redis_server.url)
    await link.start()
    await link.call(lambda c: c.flushdb())
    yield RolloutStore(link)
    await link.stop()


class FakeServable:
    def __init__(self, version: int, log: list) -> None:
        self.version = version
        self.log = log

    async def close(self) -> None:
        self.log.append(("close", self.version))


def repository(root: Path, versions=(1, 2, 3)) -> ModelRepository:
    for v in versions:
        (root / "m" / str(v)).mkdir(parents=True)
        (root / "m" / str(v) / "model.onnx").write_bytes(b"fake")
    return ModelRepository(root)


class Replica:
    """A registry whose loads record what the router said at that moment; ``broken`` versions fail."""

    def __init__(self, root: Path, store: RolloutStore, broken=()) -> None:
        self.log: list = []
        self.broken = set(broken)
        self.router = TrafficRouter()
        self.registry: ModelRegistry[FakeServable] = ModelRegistry(repository(root), self.load)
        self.reconciler = Reconciler(store, self.registry, self.router)

    async def load(self, source: ModelSource, version: int) -> FakeServable:
        self.log.append(("load", version, self.router.split("m")))
        await asyncio.sleep(0.01)
        if version in self.broken:
            raise ConfigError(f"version {version} is broken")
        return FakeServable(version, self.log)

    @property
    def serving(self) -> list[int]:
        return sorted(self.registry.ready_servables("m"))


async def write(store: RolloutStore, split, previous=(), canary=None) -> int:
    current = await store.read_desired("m")
    ok, revision = await store.write_desired(DesiredModel("m", 0, split, previous, canary),
                                             current.revision if current else 0, 0)
    assert ok
    return revision


async def test_canary_promote_failure_and_rollback(tmp_path, store):
    await write(store, ((1, BUCKETS),))
    replica = Replica(tmp_path, store, broken={3})
    await replica.reconciler.prime()
    await replica.registry.load_all()
    assert replica.serving == [1]  # start-up loads the desired version, not the policy's latest (3)
    await replica.reconciler.reconcile_all()
    assert replica.router.version_for("m", "x") == "1"

    canary = await write(store, make_split({1: 90, 2: 10}), ((1, BUCKETS),), 2)
    replica.log.clear()
    await replica.reconciler.reconcile_model("m")
    assert replica.log == [("load", 2, ((1, BUCKETS),))]  # loaded while the router still sent everything to 1
    assert replica.serving == [1, 2] and replica.router.split("m") == make_split({1: 90, 2: 10})
    assert replica.reconciler.status()["m"].applied_revision == canary

    await write(store, ((2, BUCKETS),), ((1, BUCKETS),))
    replica.log.clear()
    await replica.reconciler.reconcile_model("m")
    assert replica.log == [("close", 1)] and replica.serving == [2]  # retired after the router left it
    assert replica.router.version_for("m", "x") == "2"

    bad = await write(store, ((3, BUCKETS),), ((2, BUCKETS),))
    await replica.reconciler.reconcile_model("m")
    status = replica.reconciler.status()["m"]
    assert status.desired_revision == bad and status.applied_revision == bad - 1
    assert "version 3 UNAVAILABLE: version 3 is broken" in status.error
    assert replica.serving == [2] and replica.router.version_for("m", "x") == "2"  # still serving the old one

    back = await write(store, ((2, BUCKETS),))
    await replica.reconciler.reconcile_all()
    status = replica.reconciler.status()["m"]
    assert status.applied_revision == back and not status.error
    assert [e.version for e in replica.registry.index()] == ["2"]  # the failed version is forgotten


async def test_a_version_missing_here_is_reported_and_stale_revisions_are_ignored(tmp_path, store):
    replica = Replica(tmp_path, store)
    await replica.registry.load_all()
    revision = await write(store, ((7, BUCKETS),))
    await replica.reconciler.reconcile_all()
    assert "version 7 is not in this replica's model repository" in replica.reconciler.status()["m"].error
    assert replica.serving == [3]
    replica.reconciler._take(DesiredModel("m", revision - 1, ((1, BUCKETS),)))
    assert replica.reconciler.desired("m").revision == revision


async def test_a_desired_state_redis_lost_is_written_back_and_serving_goes_on(tmp_path, store):
    """Redis restarted empty or flushed: replicas kept serving, but `fleet status` showed the version policy,
    and promote and rollback refused (no canary, no earlier split recorded) until someone rolled out anew."""
    await write(store, ((1, BUCKETS),))
    canary = await write(store, make_split({1: 70, 2: 30}), ((1, BUCKETS),), 2)
    replica = Replica(tmp_path, store)
    await replica.reconciler.prime()
    await replica.registry.load_all()
    await replica.reconciler.reconcile_all()
    assert replica.serving == [1, 2]
    await store.link.call(lambda c: c.flushdb())
    replica.log.clear()
    await replica.reconciler.reconcile_all()
    assert replica.log == [] and replica.router.split("m") == make_split({1: 70, 2: 30})  # nothing moved
    restored = await store.read_desired("m")
    assert restored.written_us > 0  # kept from the first write: when it was written, on Redis's clock
    assert replace(restored, written_us=0) == DesiredModel("m", canary, make_split({1: 70, 2: 30}), ((1, BUCKETS),), 2)
    assert int(await store.link.call(lambda c: c.get(store.keys.revision))) == canary  # the next write goes above
    promoted = await write(store, ((2, BUCKETS),), ((1, BUCKETS),))  # e.g. the canary promoted
    assert promoted == canary + 1
    await replica.reconciler.reconcile_all()
    assert replica.serving == [2]
    # an older record (a snapshot taken before the promote) is replaced too; the same or a newer one is not
    await store.link.call(lambda c: c.hset(store.keys.desired("m"), "revision", 1))
    await replica.reconciler.reconcile_all()
    assert (await store.read_desired("m")).revision == promoted and replica.serving == [2]
    assert await store.restore_desired(DesiredModel("m", canary, ((1, BUCKETS),))) == (WriteBack.NOTHING, promoted)
    assert await store.restore_desired(await store.read_desired("m")) == (WriteBack.NOTHING, promoted)
    assert (await store.read_desired("m")).split == ((2, BUCKETS),)


async def test_a_write_that_lands_after_redis_lost_its_data_wins_over_the_write_back(tmp_path, store):
    """Redis restarted empty or flushed, then an operator rolled out before any replica published its state again:
    no live replica, so the command's floor was 0 and it took revision 1, below what replicas know. The write-back
    replaced it with the older state it knows (and before that, replicas ignored it as stale). It was written
    later, on Redis's clock: it wins, renumbered above every revision a replica knows, and is applied."""
    await write(store, ((1, BUCKETS),))
    canary = await write(store, make_split({1: 70, 2: 30}), ((1, BUCKETS),), 2)
    a = Replica(tmp_path / "a", store)
    await a.registry.load_all()
    await a.reconciler.reconcile_all()  # a knows the canary
    promoted = await write(store, ((2, BUCKETS),), ((1, BUCKETS),))
    b = Replica(tmp_path / "b", store)
    await b.registry.load_all()
    await b.reconciler.reconcile_all()  # b knows the promote, a missed it (its event was lost, say)
    assert a.reconciler.status()["m"].desired_revision == canary
    assert b.reconciler.status()["m"].desired_revision == promoted
    await store.link.call(lambda c: c.flushall())
    ok, revision = await store.write_desired(DesiredModel("m", 0, ((3, BUCKETS),), action="rollout v3"), 0, 0)
    assert ok and revision == 1  # as `fleet rollout` writes it in the first heartbeat after the loss
    operators = await store.read_desired("m")

    await a.reconciler.reconcile_model("m")  # its event arrives: a's write-back would replace it with the canary
    stored = await store.read_desired("m")
    assert stored.split == ((3, BUCKETS),) and stored.written_us == operators.written_us  # before the fix: canary
    assert stored.revision == canary + 1 and a.router.split("m") == ((3, BUCKETS),) and a.serving == [3]
    await b.reconciler.reconcile_all()  # b knows that revision number for the (older) promote: renumbered again
    stored = await store.read_desired("m")
    assert stored.split == ((3, BUCKETS),) and stored.revision == promoted + 1
    assert b.reconciler.status()["m"].applied_revision == stored.revision and b.serving == [3]
    await a.reconciler.reconcile_all()
    assert a.reconciler.status()["m"].applied_revision == stored.revision
    assert int(await store.link.call(lambda c: c.get(store.keys.revision))) == stored.revision
    assert await write(store, ((2, BUCKETS),)) == stored.revision + 1  # the next command goes on from there


async def test_writes_compare_the_revision_and_never_go_below_the_floor(store):
    d = DesiredModel("m", 0, ((1, BUCKETS),))
    assert await store.write_desired(d, 0, 0) == (True, 1)
    assert await store.write_desired(d, 0, 0) == (False, 1)  # someone else wrote first
    assert await store.write_desired(d, 1, 41) == (True, 42)  # a Redis that lost its counter
    assert (await store.read_desired("m")).revision == 42
    assert set(await store.read_all_desired()) == {"m"}


async def test_heartbeats_expire_and_events_arrive(store):
    state = ReplicaState("r1", "127.0.0.1:1", models={"m": ModelReport((VersionReport(1, "READY"),), (1, 2),
                                                                        ((1, BUCKETS),), 3, 3)})
    assert await store.publish_replica(state, ttl_s=0.3) == 1
    assert await store.publish_replica(ReplicaState("r2", "x:2"), ttl_s=5) == 2
    got = await store.read_replicas()
    assert [r.id for r in got] == ["r1", "r2"] and got[0] == state and got[0].revision == 3
    await asyncio.sleep(0.4)
    assert [r.id for r in await store.read_replicas()] == ["r2"]
    await store.remove_replica("r2")
    assert await store.read_replicas() == []
    async with store.subscription() as events:
        revision = await write(store, ((1, BUCKETS),))
        await store.publish("limits")
        got_events = [await events.next(1.0), await events.next(1.0)]
    assert got_events == [Event("desired", "m", revision), Event("limits")]
