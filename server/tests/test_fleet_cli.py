"""``fleetserve fleet``: each command checks before it writes, says what it will do, and refuses clearly.

Runs against a real redis-server with replica states published directly (no servers needed).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from model_store.rollout import ModelReport, ReplicaState, RolloutStore, VersionReport
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from ops.redis_link import RedisLink
from ops.redis_testing import RedisServer
from server.fleet_testing import fleet_cli


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis(redis_server):
    asyncio.run(_flush(redis_server.url))
    return redis_server


async def _flush(url: str) -> None:
    link = RedisLink(url)
    await link.start()
    await link.call(lambda c: c.flushdb())
    await link.stop()


def publish(url: str, *states: ReplicaState) -> None:
    async def run() -> None:
        link = RedisLink(url)
        await link.start()
        for state in states:
            await RolloutStore(link).publish_replica(state, ttl_s=30)
        await link.stop()
    asyncio.run(run())


def replica(replica_id: str, available=(1, 2), ready=(1,)) -> ReplicaState:
    versions = tuple(VersionReport(v, "READY") for v in ready)
    return ReplicaState(replica_id, f"10.0.0.{replica_id[-1]}:8001", models={"m": ModelReport(versions, available)})


def desired(url: str) -> dict:
    return json.loads(fleet_cli(url, "status", "--json").stdout)["desired"]


def run(url: str, *args: str) -> subprocess.CompletedProcess:
    return fleet_cli(url, *args)


def test_a_version_missing_from_the_repository_is_refused(redis, tmp_path):
    repo = write_model_repository(tmp_path, {"m": ModelSpec(write_add_constant_model, versions=(1, 2))})
    result = run(redis.url, "rollout", "m", "--version", "9", "--model-repository", str(repo))
    assert result.returncode == 1 and "model 'm' has no version 9" in result.stderr and "nothing was written" in result.stderr
    result = run(redis.url, "rollout", "nope", "--version", "1", "--model-repository", str(repo))
    assert result.returncode == 1 and "'nope' is not in the repository" in result.stderr
    result = run(redis.url, "rollout", "m", "--version", "1")
    assert result.returncode == 1 and "no live replica serves model 'm'" in result.stderr
    assert desired(redis.url) == {}


def test_canary_share_promote_and_rollback_from_what_replicas_report(redis):
    publish(redis.url, replica("r1"), replica("r2", available=(1,)))
    result = run(redis.url, "rollout", "m", "--version", "3", "--canary", "10")
    assert result.returncode == 1 and "no live replica's repository has version 3" in result.stderr
    dry = run(redis.url, "rollout", "m", "--version", "2", "--canary", "10", "--dry-run")
    assert dry.returncode == 0 and "v1 100% -> v1 90% · v2 10%" in dry.stdout and "dry run" in dry.stdout
    assert "1 of 2 replicas' repositories have version 2; 1 lack it (r2)" in dry.stdout  # named, as the README says
    assert desired(redis.url) == {}
    assert run(redis.url, "rollout", "m", "--version", "2", "--canary", "10").returncode == 0
    assert desired(redis.url)["m"]["split"] == [[1, 9000], [2, 1000]]
    other = run(redis.url, "rollout", "m", "--version", "1", "--canary", "5")
    assert other.returncode == 1 and "a canary of version 2 is in progress" in other.stderr
    for bad in ("0", "100", "-3", "inf", "nan"):  # inf: an OverflowError traceback before the fix
        result = run(redis.url, "rollout", "m", "--version", "2", "--canary", bad)
        assert result.returncode == 1 and "outside (0, 100]" in result.stderr, result.stderr
    more = run(redis.url, "rollout", "m", "--version", "2", "--canary", "30")
    assert more.returncode == 0 and "v1 90% · v2 10% -> v1 70% · v2 30%" in more.stdout
    promote = run(redis.url, "promote", "m")
    assert promote.returncode == 0 and "v1 70% · v2 30% -> v2 100%" in promote.stdout
    state = desired(redis.url)["m"]
    assert state["split"] == [[2, 10000]] and state["previous"] == [[1, 10000]] and state["revision"] == 3
    assert run(redis.url, "promote", "m").returncode == 1
    back = run(redis.url, "rollback", "m")
    assert back.returncode == 0 and "v2 100% -> v1 100%" in back.stdout
    again = run(redis.url, "rollback", "m")
    assert again.returncode == 1 and "nothing to roll back to" in again.stderr
    table = run(redis.url, "status").stdout
    assert "MODEL  DESIRED  REV  REPLICA" in table and "v1 100%  4" in table and "applying" in table


def test_a_canary_needs_a_version_to_start_from(redis):
    publish(redis.url, replica("r1", ready=()))
    result = run(redis.url, "rollout", "m", "--version", "2", "--canary", "10")
    assert result.returncode == 1 and "a canary needs one version serving now" in result.stderr


def test_an_unreachable_redis_is_exit_status_2():
    result = fleet_cli("redis://127.0.0.1:1/0", "--timeout", "0.2", "status", in_process=False)
    assert result.returncode == 2 and "cannot reach redis redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_standalone_server_never_imports_redis_nor_without_tls_cryptography(tmp_path):
    repo = write_model_repository(tmp_path, {"m": ModelSpec(write_add_constant_model)})
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from server.app import App
        from server.settings import Settings

        async def main():
            app = App(Settings(model_repository=Path({str(repo)!r}), host="127.0.0.1",
                               grpc_port=0, http_port=0, metrics_port=0))
            await app.start()
            await app.stop()

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "cryptography"))
        assert not loaded, loaded  # (cryptography: 8 MB resident, for the TLS certificates' expiry only)
        print("clean")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "clean" in result.stdout, result.stdout + result.stderr


def test_fleet_flags_are_validated():
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server", "serve", *args], capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parents[2])
    result = serve("--redis-url", "localhost:6379")
    assert result.returncode == 2 and "--redis-url must be a URL such as redis://host:6379/0" in result.stderr
    result = serve("--redis-url", "redis://x/0", "--fleet-heartbeat-secs", "0")
    assert result.returncode == 2 and "--fleet-heartbeat-secs must be a finite number of seconds > 0" in result.stderr
    result = serve("--redis-url", "redis://x/0", "--redis-timeout", "nan")
    assert result.returncode == 2 and "--redis-timeout must be a finite number of seconds > 0, got nan" in result.stderr


def test_the_cache_ttl_is_a_checked_model_parameter():
    import numpy as np

    from model_store.complete import ModelTensor, build_config
    from model_store.config import DEFAULT_RESPONSE_CACHE_TTL_S
    from model_store.pbtxt import parse_config_text, stated_fields
    from ops.errors import ConfigError

    tensors = [ModelTensor("INPUT0", np.dtype(np.float32), (None, 4))]

    def build(text: str):
        return build_config("m", parse_config_text(text, "c.pbtxt"), tensors, tensors, "c.pbtxt",
                            stated=stated_fields(text))

    ttl = 'response_cache { enable: true } parameters { key: "response_cache_ttl_s" value { string_value: "%s" } }'
    assert build(ttl % "2.5").response_cache_ttl_s == 2.5
    assert build("response_cache { enable: true }").response_cache_ttl_s == DEFAULT_RESPONSE_CACHE_TTL_S
    with pytest.raises(ConfigError, match=r'parameters.response_cache_ttl_s.*is "0"; give seconds > 0'):
        build(ttl % "0")
