"""The shared response cache (fleet mode): an in-process LRU in front of Redis, with single flight.

Only models whose config says ``response_cache { enable: true }`` take part; entries live
``response_cache_ttl_s`` (model parameter, default 60 s). The dataplane calls ``fetch`` after
validating a request and before queueing it:

1. the local tier (an LRU bounded in bytes; an entry keeps the expiry it had in Redis, so an
   answer expires at the same moment on every replica);
2. an identical request already being looked up or computed here: wait for its answer (single
   flight: N identical concurrent misses run the model once);
3. Redis (one GET + PTTL round trip); a hit fills the local tier;
4. a miss: ``compute()`` (the batcher), then the outputs go into the local tier and, in the
   background, into Redis with the model's TTL.

Entries are the model's output tensors. An output asked for as classes (Triton's classification
extension) is made from them per request once ``fetch`` returns (server/classification.py), so a
cached tensor answers plain and classification requests alike, each its own: the key needs no
part of the classification parameters, and an entry never holds a request's strings.

Redis down, slow or failing: steps 3 and 4's write are skipped at once (``RedisLink``), and
counted; the local tier and single flight keep working. A request whose leader failed computes
on its own. Statistics: a hit adds its lookup time to ``cache_hit``, a miss its lookup and insert
time to ``cache_miss`` (the protocol's ModelStatistics fields).

Loop-bound. Imports redis (through ops.redis_link): fleet mode only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np

from model_store.rollout import Keys
from ops.fleet_metrics import CacheMetrics, FleetMetrics
from ops.redis_link import Client, RedisLink, RedisUnavailable
from ops.statistics import ModelStats
from server.cache_codec import config_digest, decode_outputs, encode_outputs, key_prefix, request_key
from server.types import InputTensor

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
_LOCAL, _REDIS, _INFLIGHT = 0, 1, 2  # ops.fleet_metrics.CACHE_TIERS
_GET, _SET = 0, 1  # ops.fleet_metrics.CACHE_OPS
MAX_PENDING_WRITES = 256  # background SETs in flight; beyond it, new entries stay local (Redis is slow)
MAX_SHARED_ENTRY_BYTES = 16 * 1024 * 1024  # larger answers are cached in this process only


@dataclass
class _Version:
    """What every lookup for one loaded model version shares."""

    prefix: "hashlib.blake2b"
    ttl_s: float
    outputs: tuple[str, ...]
    datatypes: Mapping[str, str]
    stats: ModelStats
    metrics: CacheMetrics


class LocalTier:
    """An LRU of outputs bounded by their bytes, each entry with an expiry (monotonic seconds)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[float, Outputs, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Outputs | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, outputs: Outputs, expires_at: float, size: int | None = None) -> None:
        """``size``: ``outputs_bytes(outputs)`` when the caller has it already."""
        if size is None:
            size = outputs_bytes(outputs)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (expires_at, outputs, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size


class ResponseCache:
    """See the module docstring. ``register`` each loaded version that enables the cache; ``fetch`` per request."""

    def __init__(
        self, link: RedisLink, keys: Keys, metrics: FleetMetrics, *, local_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._keys = keys
        self._metrics = metrics
        self.local = LocalTier(local_bytes)
        self._clock = clock
        self._versions: weakref.WeakKeyDictionary[Any, _Version] = weakref.WeakKeyDictionary()
        self._flights: dict[bytes, asyncio.Future[Outputs | None]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def register(self, servable: Any, model_file_digest: bytes) -> None:
        """Cache the answers of ``servable`` (a loaded version whose config enables the cache)."""
        config = servable.config
        self._versions[servable] = _Version(
            prefix=key_prefix(config.name, servable.version_str, config_digest(config), model_file_digest),
            ttl_s=config.response_cache_ttl_s,
            outputs=tuple(s.name for s in config.outputs),
            datatypes={s.name: s.datatype.name for s in config.outputs},
            stats=servable.stats,
            metrics=self._metrics.cache(config.name, servable.version_str),
        )

    async def stop(self) -> None:
        for task in list(self._writes):
            task.cancel()
        self._writes.clear()

    async def fetch(
        self, servable: Any, inputs: Sequence[InputTensor], requested: Sequence[str] | None,
        compute: Callable[[], Awaitable[Outputs]],
    ) -> Outputs:
        """The outputs of one validated request: cached, or computed by ``compute()`` and cached.

        Raises what ``compute`` raises; Redis problems are never raised."""
        version = self._versions.get(servable)
        if version is None:
            return await compute()
        start = time.perf_counter_ns()
        key = request_key(version.prefix, inputs, requested)
        hit = self.local.get(key, self._clock())
        if hit is not None:
            return self._hit(version, _LOCAL, start, hit)
        flight = self._flights.get(key)
        if flight is not None:
            shared = await asyncio.shield(flight)
            if shared is not None:
                return self._hit(version, _INFLIGHT, start, shared)
            return await compute()  # the leader failed (its own deadline, say): try on our own
        flight = self._flights[key] = asyncio.get_running_loop().create_future()
        try:
            found = await self._get(version, key)
            if found is not None:
                flight.set_result(found)
                return self._hit(version, _REDIS, start, found)
            lookup_ns = time.perf_counter_ns() - start
            version.metrics.misses += 1
            version.metrics.lookup.observe(lookup_ns)
            computed = await compute()
            insert_start = time.perf_counter_ns()
            outputs = {name: _owned(computed[name]) for name in (requested or version.outputs)}
            self._put(version, key, outputs)
            version.stats.cache_miss.add(lookup_ns + time.perf_counter_ns() - insert_start)
            flight.set_result(outputs)
            return outputs
        finally:
            if not flight.done():
                flight.set_result(None)
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _hit(self, version: _Version, tier: int, start: int, outputs: Outputs) -> Outputs:
        elapsed = time.perf_counter_ns() - start
        version.metrics.hits[tier] += 1
        version.metrics.lookup.observe(elapsed)
        version.stats.cache_hit.add(elapsed)
        return outputs

    async def _get(self, version: _Version, key: bytes) -> Outputs | None:
        if not self._link.up:
            version.metrics.errors[_GET] += 1
            return None
        redis_key = self._keys.cache(key.hex())

        async def get(client: Client) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.get(redis_key)
            pipe.pttl(redis_key)
            return await pipe.execute()

        try:
            blob, ttl_ms = await self._link.call(get)
        except RedisUnavailable:
            version.metrics.errors[_GET] += 1
            return None
        if blob is None:
            return None
        try:
            outputs = decode_outputs(blob)
        except ValueError as exc:
            log.warning("response cache: ignoring an unreadable entry %s: %s", redis_key, exc)
            version.metrics.errors[_GET] += 1
            return None
        ttl_s = ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else version.ttl_s
        self.local.put(key, outputs, self._clock() + min(ttl_s, version.ttl_s))
        return outputs

    def _put(self, version: _Version, key: bytes, outputs: Outputs) -> None:
        size = outputs_bytes(outputs)
        self.local.put(key, outputs, self._clock() + version.ttl_s, size)
        if size > MAX_SHARED_ENTRY_BYTES:
            return
        if not self._link.up or len(self._writes) >= MAX_PENDING_WRITES:
            version.metrics.errors[_SET] += 1
            return
        blob = encode_outputs(outputs, version.datatypes)
        task = asyncio.get_running_loop().create_task(self._set(version, self._keys.cache(key.hex()), blob))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _set(self, version: _Version, redis_key: str, blob: bytes) -> None:
        ttl_ms = max(1, int(version.ttl_s * 1000))
        try:
            await self._link.call(lambda c: c.set(redis_key, blob, px=ttl_ms))
        except RedisUnavailable:
            version.metrics.errors[_SET] += 1


def outputs_bytes(outputs: Outputs) -> int:
    """The outputs' size as the wire's raw format holds them: a BYTES (object) array's ``nbytes`` counts
    only its pointers, so its elements are measured, each with its 4-byte length prefix."""
    total = 0
    for array in outputs.values():
        if array.dtype != object:
            total += array.nbytes
        else:
            total += sum(4 + (len(item) if isinstance(item, (bytes, bytearray)) else len(str(item).encode()))
                         for item in array.reshape(-1))
    return total


def _owned(array: np.ndarray) -> np.ndarray:
    """A view into a whole batch's output would keep the batch alive in the cache: copy it out."""
    return array if array.base is None else array.copy()
