"""The one Redis connection of a fleet replica, and the one place that knows whether Redis is up.

Everything that talks to Redis (rollout state, heartbeats, the response cache, rate limits, the
``fleetserve fleet`` commands) goes through ``RedisLink.call``. The link keeps one flag, ``up``:

- while up, a call runs with short socket timeouts (``timeout_s``, default 0.25 s); a connection
  error or timeout marks the link down at once and raises ``RedisUnavailable``;
- while down, a call raises ``RedisUnavailable`` immediately, without touching the network, so no
  request ever waits on a dead Redis; callers fall back (last known state, no cache, local limits);
- a background task pings while up (``ping_interval_s``) and, while down, reconnects with
  exponential backoff and jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``);
- each transition is logged once and reported to the listeners (a metric, the fleet's reconcile on
  reconnect), never once per request.

redis-py's own retries are turned off: the link decides when to try again. Loop-bound.
Importing this module imports redis: only fleet mode (``--redis-url``) and the fleet commands do.

Imports nothing from fleetserve but ``ops.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from ops.errors import Code, ServingError

log = logging.getLogger(__name__)

T = TypeVar("T")
Client = aioredis.Redis


class RedisUnavailable(ServingError):
    """Redis could not answer: it is down, slow, or refused the command (UNAVAILABLE if it ever reaches a caller).

    ``link_down`` is False for a command Redis answered with an error (a bug, a wrong key type),
    which does not mean Redis is unreachable."""

    code = Code.UNAVAILABLE

    def __init__(self, message: str, *, link_down: bool = True) -> None:
        super().__init__(message)
        self.link_down = link_down


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisLink:
    """See the module docstring. ``__init__`` does no I/O; ``start``/``stop`` own the background task."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.25,
        ping_interval_s: float = 1.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        if timeout_s <= 0 or ping_interval_s <= 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("redis timeouts, ping interval and backoff must be positive (backoff max >= initial)")
        self.url = url
        self.name = redacted(url)
        self.timeout_s = timeout_s
        self._ping_interval_s = ping_interval_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._client: Client | None = None
        self._up = False
        self._up_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._reason = "not connected yet"
        self._listeners: list[Callable[[bool], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.transitions = {"up": 0, "down": 0}

    # ---- state ------------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self._up

    @property
    def reason(self) -> str:
        """Why the link is down ("" while up)."""
        return "" if self._up else self._reason

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """``listener(up)`` is called on the loop at each transition (not for the state at the time of adding)."""
        self._listeners.append(listener)

    async def wait_up(self) -> None:
        await self._up_event.wait()

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self, connect_timeout_s: float | None = None) -> bool:
        """Build the client, try to connect for up to ``connect_timeout_s`` (default: one attempt), and start
        the background task. Returns whether Redis is up; a down Redis is not an error (it is retried)."""
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        deadline = asyncio.get_running_loop().time() + (connect_timeout_s or 0.0)
        delay = self._backoff[0]
        while not await self._try_connect(first=True):
            if asyncio.get_running_loop().time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])
        if not self._up:
            log.warning("redis %s is down (%s); retrying in the background", self.name, self._reason)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="redis-link")
        return self._up

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # ---- calls ------------------------------------------------------------------------------
    async def call(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``fn(client)``; raises ``RedisUnavailable`` at once while down, and on any Redis failure."""
        if not self._up or self._client is None:
            raise RedisUnavailable(f"redis {self.name} is down: {self._reason}")
        try:
            return await fn(self._client)
        except ResponseError as exc:
            raise RedisUnavailable(f"redis {self.name} refused a command: {exc}", link_down=False) from exc
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.mark_down(exc)
            raise RedisUnavailable(f"redis {self.name} is down: {self._reason}") from exc

    @property
    def client(self) -> Client:
        """The client itself, for what ``call`` cannot wrap (a pub/sub subscription); report failures
        with ``mark_down``. Raises ``RedisUnavailable`` while down."""
        if not self._up or self._client is None:
            raise RedisUnavailable(f"redis {self.name} is down: {self._reason}")
        return self._client

    def mark_down(self, exc: BaseException | str) -> None:
        """Record that Redis failed (a call, a subscription): the link goes down and starts reconnecting."""
        reason = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
        if not self._up:
            return
        self._reason = reason
        self._set(False)
        log.warning("redis %s is down (%s): serving on the last known fleet state, response cache bypassed, "
                    "rate limits on local shares; reconnecting in the background", self.name, reason)
        self._wake.set()

    # ---- background ---------------------------------------------------------------------------
    def _set(self, up: bool) -> None:
        self._up = up
        self.transitions["up" if up else "down"] += 1
        if up:
            self._up_event.set()
        else:
            self._up_event.clear()
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:
                log.exception("redis link listener failed")

    async def _try_connect(self, first: bool = False) -> bool:
        assert self._client is not None
        with contextlib.suppress(Exception):
            await self._client.connection_pool.disconnect()  # drop sockets to the old server
        try:
            await self._client.ping()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._reason = str(exc) or type(exc).__name__
            return False
        self._set(True)
        log.info("redis %s is %s", self.name, "connected" if first else "back up: resuming fleet state, cache and rate limits")
        return True

    async def _watch(self) -> None:
        delay = self._backoff[0]
        while True:
            if self._up:
                delay = self._backoff[0]
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._ping_interval_s)
                if self._up:
                    with contextlib.suppress(RedisUnavailable):
                        await self.call(lambda client: client.ping())
                continue
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if not await self._try_connect():
                delay = min(delay * 2, self._backoff[1])

    def __repr__(self) -> str:
        return f"RedisLink({self.name!r}, up={self._up})"


async def run_once(url: str, fn: Callable[[Client], Awaitable[T]], *, timeout_s: float = 2.0) -> T:
    """For short-lived programs (the fleet commands): connect, run ``fn(client)``, close.

    Raises ``RedisUnavailable`` naming the URL when Redis cannot be reached."""
    link = RedisLink(url, timeout_s=timeout_s)
    try:
        if not await link.start():
            raise RedisUnavailable(f"cannot reach redis {link.name}: {link.reason}")
        return await link.call(fn)
    finally:
        await link.stop()


def as_text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
