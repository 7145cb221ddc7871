"""Per-tenant rate limits (fleet mode): token buckets in Redis, leased to replicas in small batches.

A limit (requests/s and burst, per tenant and model) is set with ``fleetserve fleet limit`` in the
hash ``{p}limits`` (field ``tenant/model``, value ``"rps burst"``). Its bucket lives in Redis as
``{p}bucket:tenant/model``: tokens and the time they were counted, refilled and taken by one Lua
script, atomically, on Redis's clock. A replica never asks Redis per request: it leases a few
tokens at a time (about ``lease_window_s`` worth of the rate, at most a quarter of the burst) and
admits requests from its lease, leasing again in the background when it runs low. A lease older
than ``lease_ttl_s`` is dropped, so tokens never pile up outside Redis. When Redis answers that the
bucket is empty, the replica refuses locally until the next token is due.

Redis down: each replica enforces its share of the limit locally (rate and burst divided by the
live replicas it last saw). Redis back without the hash's marker field (it restarted empty, or was
flushed; `fleet limit` keeps the marker, so removing the last limit does not remove it): the
replica keeps the limits it knows, on local shares, and writes them back, except those `fleet
limit` set or removed since (a removal without the marker is kept as ``REMOVED`` until then). Requests without a
tenant, or for a tenant and model without a limit, are not limited. Refusals raise
``RateLimited`` (RESOURCE_EXHAUSTED on both transports).

Loop-bound; the clock is injectable. Imports redis (through ops.redis_link): fleet mode only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from model_store.rollout import Keys
from ops.errors import QueueFull
from ops.fleet_metrics import FleetMetrics
from ops.redis_link import Client, RedisLink, RedisUnavailable, as_text

log = logging.getLogger(__name__)

# Beside the limits in the hash ``{p}limits``: written by every `fleet limit`, so the hash never goes away
# (removing the last limit leaves it). A Redis without the hash lost its data (restarted empty, flushed).
LIMITS_MARKER = "#limits"

# A field removed while the hash had no marker (Redis had lost its data): kept as this value until a replica
# has written back the limits it knows, so the write-back does not bring the removed limit back.
REMOVED = "-"

_LEASE = """
local limit = redis.call('HGET', KEYS[2], ARGV[1])
if not limit or limit == '""" + REMOVED + """' then
  if redis.call('HEXISTS', KEYS[2], '""" + LIMITS_MARKER + """') == 0 then return {-2, 0, '', ''} end
  return {-1, 0, '', ''}
end
local sep = string.find(limit, ' ')
local rps = tonumber(string.sub(limit, 1, sep - 1))
local burst = tonumber(string.sub(limit, sep + 1))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'us')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then tokens = burst; last = now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rps / 1000000)
local grant = math.min(tonumber(ARGV[2]), math.floor(tokens))
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'us', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(1000 * burst / rps) + 60000)
local wait_us = 0
if grant < 1 then wait_us = math.ceil((1 - tokens) * 1000000 / rps) end
return {grant, wait_us, tostring(rps), tostring(burst)}
"""


# Writes back the limits a replica knows (ARGV: field, value, ...) into a Redis that lost them (no marker). A field
# already there was set or removed (REMOVED) by `fleet limit` since the loss: the operator's word wins over the
# replica's memory. Then the removals are dropped and the marker set: from now on the hash is the whole truth.
_RESTORE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == '""" + REMOVED + """' then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], '1')
return 1
"""

# `fleet limit` (ARGV: field, "rps burst" or "" to remove): one script, so a replica's write-back (above) lands
# wholly before or after it. Without the marker (Redis lost its data; or a new fleet, no limit set yet) the marker
# is left to the write-back, and a removal is kept as REMOVED until then.
_SET_LIMIT = """
local kept = redis.call('HEXISTS', KEYS[1], '""" + LIMITS_MARKER + """') == 1
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif kept then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], '""" + REMOVED + """')
end
if ARGV[2] == '' then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', KEYS[3], 'limits')
return kept and 1 or 0
"""


class RateLimited(QueueFull):
    """A tenant is over its rate limit for a model (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limit:
    rps: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rps) and self.rps > 0) or self.burst < 1:
            raise ValueError(f"a rate limit needs requests/s > 0 and a burst >= 1, got {self.rps:g}/s, burst {self.burst}")

    def text(self) -> str:
        """As stored in Redis: the rate in full (``:g`` would keep 6 digits, turning 1234567/s into 1234570/s)."""
        return f"{self.rps!r} {self.burst}"

    @classmethod
    def parse(cls, text: str) -> "Limit":
        rps, burst = text.split()
        return cls(float(rps), int(burst))


def limit_field(tenant: str, model: str) -> str:
    return f"{tenant}/{model}"


def parse_limits(raw: dict[Any, Any]) -> dict[str, Limit]:
    """The limits in the hash as read (HGETALL), by field; the marker and removals left out, malformed ones too
    (logged)."""
    out = {}
    for field, value in raw.items():
        if as_text(field) == LIMITS_MARKER or as_text(value) == REMOVED:
            continue
        try:
            out[as_text(field)] = Limit.parse(as_text(value))
        except ValueError:
            log.warning("ignoring a malformed rate limit %s = %r", as_text(field), as_text(value))
    return out


async def write_limit(link: RedisLink, keys: Keys, tenant: str, model: str, limit: Limit | None) -> None:
    """Set (``limit``) or remove (None) a tenant's limit for a model, and announce it; raises ``RedisUnavailable``."""
    field = limit_field(tenant, model)
    await link.call(lambda c: c.eval(_SET_LIMIT, 3, keys.limits, keys.bucket(field), keys.events,
                                     field, limit.text() if limit else ""))


class _Bucket:
    __slots__ = ("tokens", "expires_at", "empty_until", "leasing", "failed", "local_tokens", "local_at")

    def __init__(self) -> None:
        self.tokens = 0  # leased from Redis, not yet used
        self.expires_at = 0.0  # when the lease is dropped
        self.empty_until = 0.0  # Redis said empty: refuse locally until then
        self.leasing: asyncio.Task[None] | None = None
        self.failed = False  # the last lease got no answer from Redis
        self.local_tokens = -1.0  # the local-share bucket while Redis is down (-1: not started)
        self.local_at = 0.0


class TenantLimiter:
    """See the module docstring. ``try_admit`` is the hot path; ``admit`` the rare wait for a lease."""

    def __init__(
        self, link: RedisLink, keys: Keys, metrics: FleetMetrics, *, lease_window_s: float = 0.1,
        lease_ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._keys = keys
        self._metrics = metrics
        self._lease_window_s = lease_window_s
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock
        self.limits: dict[tuple[str, str], Limit] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.replicas = 1  # live replicas last seen: the local share's divisor
        self._script: Any = None  # the lease script, sent once and then called by its SHA
        self._restoring: asyncio.Task[None] | None = None

    # ---- configuration --------------------------------------------------------------------
    async def refresh(self) -> None:
        """Read every limit from Redis (at start, on a ``limits`` event, at each full reconcile)."""
        raw = await self._link.call(lambda c: c.hgetall(self._keys.limits))
        if self.limits and not any(as_text(f) == LIMITS_MARKER for f in raw):
            await self._restore()  # Redis lost its data: write back what is known here, then read what it holds
            raw = await self._link.call(lambda c: c.hgetall(self._keys.limits))
        limits: dict[tuple[str, str], Limit] = {}
        for field, limit in parse_limits(raw).items():
            tenant, _, model = field.rpartition("/")
            limits[(tenant, model)] = limit
        if limits != self.limits:
            log.info("rate limits: %s", ", ".join(f"{t}/{m} {lim.rps:g}/s burst {lim.burst}"
                                                  for (t, m), lim in sorted(limits.items())) or "none")
        for key in list(self._buckets):
            if limits.get(key) != self.limits.get(key):  # removed or changed: its lease and refusals were the old limit's
                del self._buckets[key]
        self.limits = limits

    async def _restore(self) -> None:
        """Redis has no marker in the limits hash: it lost its data (restarted empty, flushed). Write back the
        limits known here, except where `fleet limit` set or removed one since (``_RESTORE``)."""
        args: list[str] = [LIMITS_MARKER, "1"]
        for key, limit in sorted(self.limits.items()):
            args += [limit_field(*key), limit.text()]
        if await self._link.call(lambda c: c.eval(_RESTORE, 1, self._keys.limits, *args)):
            log.warning("redis had no rate limits (it lost its data?): wrote back the %d this replica knows, "
                        "but for those set or removed since", len(self.limits))

    async def stop(self) -> None:
        """Leases under way are left to finish (within the Redis timeout): a request may be waiting on one."""

    # ---- admission ---------------------------------------------------------------------------
    def try_admit(self, tenant: str, model: str) -> bool | None:
        """True: admitted. False: refused (raise ``refusal``). None: ask Redis (await ``admit``)."""
        limit = self.limits.get((tenant, model))
        if limit is None:
            return True
        key = (tenant, model)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        now = self._clock()
        if not self._link.up:
            return self._local_share(bucket, limit, now)
        if bucket.tokens > 0 and now < bucket.expires_at:
            bucket.tokens -= 1
            if bucket.tokens <= self._lease_size(limit) // 2 and bucket.leasing is None:
                bucket.leasing = asyncio.get_running_loop().create_task(self._lease(key, bucket, limit))
            return True
        if now < bucket.empty_until:
            return False
        return None

    async def admit(self, tenant: str, model: str) -> None:
        """Lease tokens for ``tenant``/``model`` (or join the lease under way) and take one; raises ``RateLimited``."""
        key = (tenant, model)
        limit = self.limits.get(key)
        bucket = self._buckets.get(key)
        if limit is None or bucket is None:
            return
        if bucket.leasing is None:
            bucket.leasing = asyncio.get_running_loop().create_task(self._lease(key, bucket, limit))
        await asyncio.shield(bucket.leasing)
        verdict = self.try_admit(tenant, model)
        if verdict is None:  # still nothing after a fresh lease: Redis said empty, or did not answer
            verdict = self._local_share(bucket, limit, self._clock()) if bucket.failed else False
        if not verdict:
            raise self.refusal(tenant, model)

    def refusal(self, tenant: str, model: str) -> RateLimited:
        limit = self.limits.get((tenant, model))
        self._metrics.record_rate_limited(model, tenant)
        what = f"{limit.rps:g} requests/s with bursts of {limit.burst}" if limit else "its limit"
        local = "" if self._link.up else f" (this replica's share of 1/{self.replicas} while Redis is unreachable)"
        return RateLimited(f"tenant '{tenant}' is over its rate limit for model '{model}': {what}{local}; "
                           "retry later", tenant=tenant, model=model)

    def _lease_script(self, client: Client) -> Any:
        if self._script is None:
            self._script = client.register_script(_LEASE)
        return self._script

    def _lease_size(self, limit: Limit) -> int:
        return max(1, min(math.ceil(limit.rps * self._lease_window_s), limit.burst // 4))

    async def _lease(self, key: tuple[str, str], bucket: _Bucket, limit: Limit) -> None:
        try:
            k = self._keys
            field = limit_field(*key)
            want = self._lease_size(limit)
            try:
                grant, wait_us, rps, burst = await self._link.call(
                    lambda c: self._lease_script(c)(keys=[k.bucket(field), k.limits], args=[field, want]))
            except RedisUnavailable:
                self._metrics.leases["unavailable"] += 1
                bucket.failed = True
                return
            now = self._clock()
            grant = int(grant)
            if grant == -2:  # Redis lost every limit: this one holds (local share) while they are written back
                self._metrics.leases["unavailable"] += 1
                bucket.failed = True
                if self._restoring is None or self._restoring.done():
                    self._restoring = asyncio.get_running_loop().create_task(self._refresh_quietly())
                return
            bucket.failed = False
            if grant < 0:  # the limit was removed meanwhile
                self.limits.pop(key, None)
                return
            try:
                self.limits[key] = Limit(float(as_text(rps)), int(as_text(burst)))
            except ValueError:
                pass
            if grant:
                self._metrics.leases["granted"] += 1
                if now >= bucket.expires_at:
                    bucket.tokens = 0
                bucket.tokens += grant
                bucket.expires_at = now + self._lease_ttl_s
            else:
                self._metrics.leases["empty"] += 1
                bucket.empty_until = now + int(wait_us) / 1e6
        finally:
            bucket.leasing = None

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except RedisUnavailable:
            pass  # the next full reconcile tries again
        except Exception:
            log.exception("writing back the rate limits failed")

    def _local_share(self, bucket: _Bucket, limit: Limit, now: float) -> bool:
        share = max(1, self.replicas)
        rate, burst = limit.rps / share, max(1.0, limit.burst / share)
        if bucket.local_tokens < 0:
            bucket.local_tokens, bucket.local_at = burst, now
        bucket.local_tokens = min(burst, bucket.local_tokens + (now - bucket.local_at) * rate)
        bucket.local_at = now
        if bucket.local_tokens >= 1:
            bucket.local_tokens -= 1
            return True
        return False
