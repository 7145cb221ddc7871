"""The Redis link against a real redis-server: up, killed, back; fast failure while down; one log line each way."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ops.redis_link import RedisLink, RedisUnavailable, redacted
from ops.redis_testing import RedisServer


def test_urls_are_logged_without_their_password():
    assert redacted("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
    assert redacted("rediss://user:s3cret@redis/1") == "rediss://user:***@redis/1"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"


async def test_down_is_answered_at_once_and_reconnects_with_backoff(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ops.redis_link")
    server = RedisServer().start()
    link = RedisLink(server.url, ping_interval_s=0.1, backoff_initial_s=0.02, backoff_max_s=0.2)
    seen: list[bool] = []
    link.add_listener(seen.append)
    try:
        assert await link.start()
        assert await link.call(lambda c: c.set("k", "v")) and await link.call(lambda c: c.get("k")) == b"v"
        server.kill()
        with pytest.raises(RedisUnavailable):
            await link.call(lambda c: c.get("k"))  # the failure that notices
        assert not link.up and seen == [True, False]
        start = time.perf_counter()
        for _ in range(100):  # while down: no network, no timeout
            with pytest.raises(RedisUnavailable, match="is down"):
                await link.call(lambda c: c.get("k"))
        assert (time.perf_counter() - start) / 100 < 0.005
        await asyncio.sleep(0.5)  # reconnect attempts fail quietly
        server.start()
        await asyncio.wait_for(link.wait_up(), 5)
        assert await link.call(lambda c: c.ping())
        assert link.transitions == {"up": 2, "down": 1}
    finally:
        await link.stop()
        server.kill()
    downs = [r for r in caplog.records if "is down" in r.getMessage()]
    ups = [r for r in caplog.records if "back up" in r.getMessage()]
    assert len(downs) == 1 and len(ups) == 1, [r.getMessage() for r in caplog.records]


async def test_a_watchdog_ping_notices_a_dead_redis_without_any_traffic():
    server = RedisServer().start()
    link = RedisLink(server.url, ping_interval_s=0.05)
    try:
        assert await link.start()
        server.kill()
        deadline = time.monotonic() + 3
        while link.up and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not link.up
    finally:
        await link.stop()


async def test_an_unreachable_redis_at_start_is_not_an_error():
    link = RedisLink("redis://127.0.0.1:1/0", timeout_s=0.1)
    try:
        assert not await link.start(connect_timeout_s=0.2)
        with pytest.raises(RedisUnavailable):
            await link.call(lambda c: c.ping())
    finally:
        await link.stop()
