"""An operator's command racing the replicas' write-back after Redis lost its data: the command is never lost.

Redis restarted empty (or was flushed): replicas write back the desired states and limits they know at
their next full reconcile, and publish their state at their next heartbeat. A `fleet rollout` or `fleet
limit` in that window used to be overwritten by the write-back (a rollout: numbered below what replicas
know, so also ignored by them). A real redis-server; the write-back lands exactly where the test puts it,
through the store's seams (``write_desired``, ``read_replicas``), never by sleeping.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import pytest

from model_store.rollout import DesiredModel, ModelReport, ReplicaState, RolloutStore, VersionReport, WriteBack
from model_store.routing import BUCKETS, make_split
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from ops.fleet_metrics import FleetMetrics
from ops.redis_link import RedisLink
from ops.redis_testing import RedisServer
from prometheus_client import CollectorRegistry
from server import fleet_cli
from server.rate_limit import LIMITS_MARKER, Limit, TenantLimiter

CANARY = make_split({1: 70, 2: 30})
Hook = Callable[[], Awaitable[None]]


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
async def link(redis_server):
    link = RedisLink(redis_server.url)
    await link.start()
    await link.call(lambda c: c.flushall())
    yield link
    await link.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_model_repository(tmp_path_factory.mktemp("repo"),
                                  {"m": ModelSpec(write_add_constant_model, versions=(1, 2, 3))})


class Interleaved(RolloutStore):
    """A store whose writes, and reads of the replicas, run a hook first (``before``) or after (``after``): the
    replicas' write-back or heartbeat landing at that exact point of the command."""

    before: Hook | None = None
    after: Hook | None = None
    on_read_replicas: Hook | None = None

    async def write_desired(self, desired: DesiredModel, expected_revision: int, floor_revision: int) -> tuple[bool, int]:
        if self.before is not None:
            await self.before()
        result = await super().write_desired(desired, expected_revision, floor_revision)
        if self.after is not None:
            await self.after()
        return result

    async def read_replicas(self) -> list[ReplicaState]:
        if self.on_read_replicas is not None:
            await self.on_read_replicas()
        return await super().read_replicas()


async def known_canary(store: RolloutStore) -> DesiredModel:
    """The fleet at a 30% canary of version 2, as every replica knows it; then Redis loses everything."""
    assert (await store.write_desired(DesiredModel("m", 0, ((1, BUCKETS),)), 0, 0))[0]
    assert (await store.write_desired(DesiredModel("m", 0, CANARY, ((1, BUCKETS),), 2), 1, 0))[0]
    known = await store.read_desired("m")
    assert known is not None
    await store.link.call(lambda c: c.flushall())
    return known


def rollout_v3(repo, *extra: str):
    return fleet_cli.parser().parse_args(["rollout", "m", "--version", "3", "--model-repository", str(repo), *extra])


async def test_a_rollout_in_the_first_heartbeat_after_the_loss_is_not_lost_to_the_write_back(link, repo, capsys):
    store = Interleaved(link)
    known = await known_canary(store)

    # the write-back lands between the command's read (nothing there) and its write: the write is refused, said so
    store.before = lambda: _write_back(store, known, WriteBack.RESTORED)
    with pytest.raises(fleet_cli.Refused, match="changed meanwhile"):
        await fleet_cli.rollout(rollout_v3(repo), store)
    assert await store.read_desired("m") == known

    # the write lands first (no live replica yet: floor 0, revision 1), the write-back after it: the write wins,
    # renumbered above what the replica knows. Before the fix: the canary came back and version 3 never rolled out.
    await link.call(lambda c: c.flushall())
    store.before, store.after = None, lambda: _write_back(store, known, WriteBack.RENUMBERED)
    assert await fleet_cli.rollout(rollout_v3(repo), store) == 0
    assert "revision 1 written" in capsys.readouterr().out
    stored = await store.read_desired("m")
    assert stored is not None and stored.split == ((3, BUCKETS),) and stored.action == "rollout v3"
    assert stored.revision == known.revision + 1
    store.after = None
    assert await store.restore_desired(known) == (WriteBack.NOTHING, stored.revision)  # settled: stays so


async def test_rollout_wait_follows_its_write_when_a_replica_renumbers_it(link, repo, capsys):
    """Before: `--wait` compared the replicas' revision with the one written (1) and reported at once that every
    replica had applied it, while they all still served the canary."""
    store = Interleaved(link)
    known = await known_canary(store)
    reads = 0

    def heartbeat(desired: int, applied: int, route=CANARY) -> Awaitable[int]:
        versions = tuple(VersionReport(v, "READY") for v in (1, 2, 3))
        report = ModelReport(versions, (1, 2, 3), route, desired, applied)
        return store.publish_replica(ReplicaState("r1", "10.0.0.1:8001", models={"m": report}), ttl_s=30)

    async def replica_catches_up() -> None:  # the replica's heartbeat, then (third poll) its write-back, applied
        nonlocal reads
        reads += 1
        if reads == 3:
            outcome, revision = await store.restore_desired(known)
            assert outcome is WriteBack.RENUMBERED
            await heartbeat(revision, revision, ((3, BUCKETS),))

    async def first_heartbeat() -> None:
        await heartbeat(known.revision, known.revision)
        store.on_read_replicas = replica_catches_up

    store.after = first_heartbeat  # it lands just after the write: the command saw no live replica
    assert await fleet_cli.rollout(rollout_v3(repo, "--wait", "10"), store) == 0
    out = capsys.readouterr().out
    renumbered = known.revision + 1
    assert f"a replica renumbered it {renumbered}" in out, out
    assert f"1 of 1 replicas applied revision {renumbered} in" in out, out


async def test_limits_set_or_removed_while_redis_was_empty_win_and_the_rest_come_back(link, capsys):
    """Before: `fleet limit` wrote the marker into the empty hash, so the write-back saw a hash and wrote nothing:
    every other limit the replicas knew was dropped; and a removal there was undone by a write-back after it."""
    store = RolloutStore(link)
    limiter = TenantLimiter(link, store.keys, FleetMetrics(CollectorRegistry()))

    async def limit(*argv: str) -> None:
        assert await fleet_cli.limit(fleet_cli.parser().parse_args(["limit", *argv]), store) == 0

    for tenant, rps in (("acme", "1"), ("other", "2"), ("kept", "3")):
        await limit(tenant, "m", "--rps", rps, "--burst", "5")
    await limiter.refresh()
    assert limiter.limits == {("acme", "m"): Limit(1, 5), ("other", "m"): Limit(2, 5), ("kept", "m"): Limit(3, 5)}
    await link.call(lambda c: c.flushall())
    await limit("acme", "m", "--rps", "7", "--burst", "7")  # in the window, before the write-back
    await limit("other", "m", "--remove")
    await limiter.refresh()  # the write-back (at the next full reconcile)
    assert limiter.limits == {("acme", "m"): Limit(7, 7), ("kept", "m"): Limit(3, 5)}
    stored = {k.decode(): v.decode() for k, v in (await link.call(lambda c: c.hgetall(store.keys.limits))).items()}
    assert stored == {LIMITS_MARKER: "1", "acme/m": "7.0 7", "kept/m": "3.0 5"}
    await limit("kept", "m", "--remove")  # with the marker back, a removal is a removal
    await limiter.refresh()
    assert limiter.limits == {("acme", "m"): Limit(7, 7)}


async def _write_back(store: RolloutStore, known: DesiredModel, expected: WriteBack) -> None:
    """What a replica that knows ``known`` writes back at its next full reconcile (``Reconciler._restore``)."""
    outcome, _ = await store.restore_desired(known)
    assert outcome is expected
