"""Fleet state in Redis: the desired state of each model, each replica's actual state, change events.

Keys (``prefix`` default ``fleetserve:``; one Redis, not Redis Cluster: scripts touch several keys):

``{p}revision``            counter: the last revision handed out (all models share it)
``{p}desired:{model}``     hash: ``revision``, ``doc`` (the JSON of a ``DesiredModel`` without them) and
                           ``written_us`` (when it was written, on Redis's clock)
``{p}desired``             set: the models that have a desired state
``{p}replica:{id}``        string: the JSON of a ``ReplicaState``, with a TTL (the heartbeat)
``{p}replicas``            sorted set: replica id -> expiry (Redis time, ms); live = not expired
``{p}events``              pub/sub channel: ``desired <revision> <model>`` and ``limits``

A desired state is written by one script that compares the revision the writer read (so two
operators cannot overwrite each other), takes the next revision, and publishes the event, all
atomically. Revisions only grow: the writer passes the highest revision live replicas report, so
a Redis that lost its data cannot hand out a revision replicas would take for stale; and replicas
write back the desired states they know that Redis lost (``restore_desired``). A write that lands
after the loss but before any replica published its state again gets a revision below what they
know: the write-back keeps it (it was written later, on Redis's clock) and renumbers it above.

Imports ``model_store.routing`` and ``ops.redis_link`` (so redis): fleet mode only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator, Mapping

from model_store.routing import Split, check_split
from ops.redis_link import Client, RedisLink, RedisUnavailable, as_text

DEFAULT_PREFIX = "fleetserve:"

# Redis's clock in microseconds (a Lua number holds it exactly): when a desired state was written.
_NOW_US = """
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
"""

_WRITE_DESIRED = _NOW_US + """
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0') or 0
if current ~= tonumber(ARGV[1]) then return {0, current} end
local revision = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[2])
if revision <= floor then
  revision = floor + 1
  redis.call('SET', KEYS[2], revision)
end
redis.call('HSET', KEYS[1], 'revision', revision, 'doc', ARGV[3], 'written_us', now)
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PUBLISH', KEYS[4], 'desired ' .. revision .. ' ' .. ARGV[4])
return {1, revision}
"""

# A replica settling what Redis holds for a model against the desired state it knows (ARGV: its revision, doc, the
# model, ``written_us``) after Redis lost its data. Returns {outcome, revision}, the outcome a ``WriteBack``: 0 the
# same record or a newer revision is there; 1 nothing, or a record written before the known one: the known one is
# written back (the counter raised to it); 2 a record written after the known one yet numbered at or below it (an
# operator's, before any replica raised the counter): it wins, renumbered above the known revision and the counter.
# "Before/after" is Redis's clock (``written_us``); a record without it (older fleetserve) counts as the oldest.
_RESTORE_DESIRED = """
local stored = redis.call('HMGET', KEYS[1], 'revision', 'doc', 'written_us')
local known = tonumber(ARGV[1])
local known_at = tonumber(ARGV[4]) or 0
local counter = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local current = tonumber(stored[1] or '0') or 0
local at = tonumber(stored[3] or '0') or 0
if stored[1] and stored[2] then
  if current > known then return {0, current} end
  if current == known and (at == known_at or stored[2] == ARGV[2]) then return {0, current} end
  if at > known_at then
    local revision = math.max(counter, known) + 1
    redis.call('HSET', KEYS[1], 'revision', revision)
    redis.call('SET', KEYS[2], revision)
    redis.call('PUBLISH', KEYS[4], 'desired ' .. revision .. ' ' .. ARGV[3])
    return {2, revision}
  end
end
redis.call('HSET', KEYS[1], 'revision', ARGV[1], 'doc', ARGV[2], 'written_us', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[3])
if counter < known then redis.call('SET', KEYS[2], ARGV[1]) end
redis.call('PUBLISH', KEYS[4], 'desired ' .. ARGV[1] .. ' ' .. ARGV[3])
return {1, known}
"""

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('ZCARD', KEYS[2])
"""

_LIVE_REPLICAS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def revision(self) -> str:
        return f"{self.prefix}revision"

    @property
    def desired_set(self) -> str:
        return f"{self.prefix}desired"

    @property
    def replicas(self) -> str:
        return f"{self.prefix}replicas"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def limits(self) -> str:
        return f"{self.prefix}limits"

    def desired(self, model: str) -> str:
        return f"{self.prefix}desired:{model}"

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    def bucket(self, field: str) -> str:
        return f"{self.prefix}bucket:{field}"

    def cache(self, key_hex: str) -> str:
        return f"{self.prefix}cache:{key_hex}"


@dataclass(frozen=True)
class DesiredModel:
    """What the fleet should serve for one model. ``split`` () means: follow the model's version policy.

    ``previous`` is what ``rollback`` restores; ``canary`` the version a canary split is trying out."""

    model: str
    revision: int
    split: Split
    previous: Split = ()
    canary: int | None = None
    action: str = ""  # the command that wrote it, for `fleet status`
    by: str = ""  # user@host
    at: float = 0.0  # seconds since the epoch
    written_us: int = 0  # when Redis stored it, on Redis's clock (µs); orders records across a loss of Redis's data

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(v for v, _ in self.split)

    def doc(self) -> str:
        """The JSON stored beside the revision."""
        return json.dumps({"split": self.split, "previous": self.previous, "canary": self.canary,
                           "action": self.action, "by": self.by, "at": self.at}, separators=(",", ":"))

    @classmethod
    def from_redis(cls, model: str, revision: Any, doc: Any, written_us: Any = None) -> "DesiredModel":
        """Raises ValueError for a malformed record."""
        data = json.loads(as_text(doc))
        canary = data.get("canary")
        return cls(model, int(as_text(revision)), check_split(data.get("split") or ()),
                   check_split(data.get("previous") or ()), int(canary) if canary is not None else None,
                   str(data.get("action", "")), str(data.get("by", "")), float(data.get("at", 0.0)),
                   int(as_text(written_us)) if written_us is not None else 0)


class WriteBack(enum.Enum):
    """What ``restore_desired`` did (the outcomes of ``_RESTORE_DESIRED``)."""

    NOTHING = 0  # Redis holds this record, or a newer revision
    RESTORED = 1  # Redis held nothing, or an older record: the known one is back, with its revision
    RENUMBERED = 2  # Redis held a record written after the known one but numbered below it: it wins, renumbered


@dataclass(frozen=True)
class VersionReport:
    version: int
    state: str  # a ModelState value
    reason: str = ""


@dataclass(frozen=True)
class ModelReport:
    """One model on one replica: what is loaded, what serves, how far it got with the desired state."""

    versions: tuple[VersionReport, ...] = ()
    available: tuple[int, ...] = ()  # versions in this replica's repository
    route: Split = ()  # the split in force; () = latest ready version (the version policy)
    desired_revision: int = 0  # the latest revision seen
    applied_revision: int = 0  # the revision being served
    error: str = ""  # why desired_revision is not applied
    queue_depth: int = 0


@dataclass(frozen=True)
class ReplicaState:
    """The actual state one replica publishes with each heartbeat."""

    id: str
    address: str  # gRPC host:port
    http_address: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    queue_depth: int = 0
    models: Mapping[str, ModelReport] = field(default_factory=dict)

    @property
    def revision(self) -> int:
        """The highest revision this replica has applied (any model)."""
        return max((m.applied_revision for m in self.models.values()), default=0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Any) -> "ReplicaState":
        data = json.loads(as_text(text))
        models = {}
        for name, m in (data.get("models") or {}).items():
            models[name] = ModelReport(
                versions=tuple(VersionReport(int(v["version"]), str(v["state"]), str(v.get("reason", "")))
                               for v in m.get("versions", ())),
                available=tuple(int(v) for v in m.get("available", ())),
                route=check_split(m.get("route") or ()),
                desired_revision=int(m.get("desired_revision", 0)),
                applied_revision=int(m.get("applied_revision", 0)),
                error=str(m.get("error", "")),
                queue_depth=int(m.get("queue_depth", 0)),
            )
        return cls(str(data["id"]), str(data.get("address", "")), str(data.get("http_address", "")),
                   float(data.get("started_at", 0.0)), float(data.get("updated_at", 0.0)),
                   int(data.get("queue_depth", 0)), models)


@dataclass(frozen=True)
class Event:
    kind: str  # "desired" or "limits"
    model: str = ""
    revision: int = 0


def parse_event(data: Any) -> Event | None:
    parts = as_text(data).split(" ", 2)
    if parts[0] == "desired" and len(parts) == 3 and parts[1].isdigit():
        return Event("desired", parts[2], int(parts[1]))
    if parts[0] == "limits":
        return Event("limits")
    return None


class RolloutStore:
    """Reads and writes the state above through a ``RedisLink``; every method raises ``RedisUnavailable``."""

    def __init__(self, link: RedisLink, keys: Keys | None = None) -> None:
        self.link = link
        self.keys = keys or Keys()

    async def read_desired(self, model: str) -> DesiredModel | None:
        values = await self.link.call(lambda c: c.hmget(self.keys.desired(model), *_FIELDS))
        return _desired(model, values)

    async def read_all_desired(self) -> dict[str, DesiredModel]:
        async def read(client: Client) -> dict[str, DesiredModel]:
            names = sorted(as_text(n) for n in await client.smembers(self.keys.desired_set))
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.hmget(self.keys.desired(name), *_FIELDS)
            out = {}
            for name, values in zip(names, await pipe.execute()):
                desired = _desired(name, values)
                if desired is not None:
                    out[name] = desired
            return out

        return await self.link.call(read)

    async def write_desired(self, desired: DesiredModel, expected_revision: int, floor_revision: int) -> tuple[bool, int]:
        """Write ``desired`` (its revision is assigned here) if the stored revision is still ``expected_revision``.

        Returns (written, revision): the new revision, or the one found instead of the expected."""
        k = self.keys
        written, revision = await self.link.call(lambda c: c.eval(
            _WRITE_DESIRED, 4, k.desired(desired.model), k.revision, k.desired_set, k.events,
            expected_revision, floor_revision, desired.doc(), desired.model))
        return bool(written), int(revision)

    async def restore_desired(self, desired: DesiredModel) -> tuple["WriteBack", int]:
        """Settle what Redis holds for ``desired.model`` against ``desired``, the state this replica knows, after
        Redis lost it (see ``WriteBack``). Atomic: an operator's write is never overwritten, whenever it lands.
        Returns what was done and the model's revision in Redis afterwards."""
        k = self.keys
        outcome, revision = await self.link.call(lambda c: c.eval(
            _RESTORE_DESIRED, 4, k.desired(desired.model), k.revision, k.desired_set, k.events,
            desired.revision, desired.doc(), desired.model, desired.written_us))
        return WriteBack(int(outcome)), int(revision)

    async def publish_replica(self, state: ReplicaState, ttl_s: float) -> int:
        """Write this replica's state with a TTL; returns the number of live replicas (this one included)."""
        k = self.keys
        count = await self.link.call(lambda c: c.eval(
            _HEARTBEAT, 2, k.replica(state.id), k.replicas, state.to_json(), max(1, int(ttl_s * 1000)), state.id))
        return int(count)

    async def remove_replica(self, replica_id: str) -> None:
        async def remove(client: Client) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.delete(self.keys.replica(replica_id))
            pipe.zrem(self.keys.replicas, replica_id)
            await pipe.execute()

        await self.link.call(remove)

    async def read_replicas(self) -> list[ReplicaState]:
        """Every live replica's last published state, by id."""
        async def read(client: Client) -> list[ReplicaState]:
            ids = [as_text(i) for i in await client.eval(_LIVE_REPLICAS, 1, self.keys.replicas)]
            if not ids:
                return []
            values = await client.mget([self.keys.replica(i) for i in ids])
            return sorted((ReplicaState.from_json(v) for v in values if v is not None), key=lambda r: r.id)

        return await self.link.call(read)

    async def publish(self, message: str) -> None:
        await self.link.call(lambda c: c.publish(self.keys.events, message))

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator["Subscription"]:
        """Subscribed to the events channel for the life of the block; raises ``RedisUnavailable``."""
        pubsub = self.link.client.pubsub()
        try:
            try:
                await pubsub.subscribe(self.keys.events)
            except Exception as exc:
                self.link.mark_down(exc)
                raise RedisUnavailable(f"redis {self.link.name}: cannot subscribe: {exc}") from exc
            yield Subscription(self.link, pubsub)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


class Subscription:
    """Events as they arrive; ``next`` raises ``RedisUnavailable`` when the link fails or goes down."""

    def __init__(self, link: RedisLink, pubsub: Any) -> None:
        self._link = link
        self._pubsub = pubsub

    async def next(self, timeout_s: float) -> Event | None:
        """The next event, or None after ``timeout_s`` without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if not self._link.up:
                raise RedisUnavailable(f"redis {self._link.name} is down")
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                         timeout=max(0.0, deadline - loop.time()))
            except Exception as exc:
                self._link.mark_down(exc)
                raise RedisUnavailable(f"redis {self._link.name}: subscription lost: {exc}") from exc
            if message is not None and message.get("type") == "message":
                event = parse_event(message.get("data", b""))
                if event is not None:
                    return event
            if loop.time() >= deadline:
                return None


_FIELDS = ("revision", "doc", "written_us")


def _desired(model: str, values: Any) -> DesiredModel | None:
    revision, doc, written_us = values
    if revision is None or doc is None:
        return None
    try:
        return DesiredModel.from_redis(model, revision, doc, written_us)
    except (ValueError, KeyError, TypeError):
        return None  # a malformed record is ignored; `fleet status` shows it as absent


def now_s() -> float:
    return time.time()
