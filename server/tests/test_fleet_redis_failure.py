"""Redis killed in the middle of load, then restarted: no request fails, and the fleet picks up again.

Two real replicas serve a canary split and a cached model while a real redis-server (with an
append-only file, so it restarts with its data) is SIGKILLed. Meanwhile: the split holds (last
known desired state), the cache is bypassed, a limited tenant gets this replica's local share,
``fleetserve_redis_up`` is 0 and each replica logs the loss once. After the restart: the link is
back, replicas publish their state again, and a promote converges.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from model_store.routing import bucket_of
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from ops.redis_testing import RedisServer
from server.fleet_testing import LoadThread, fleet_args, fleet_cli, infer_request, start_replicas
from server.protos import grpc_service_pb2_grpc as rpc
from server.testing import scrape_metrics, wait_until

UP = ("fleetserve_redis_up", frozenset())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {
        "add": ModelSpec(write_add_constant_model, versions=(1, 2)),
        "cached": ModelSpec(write_add_constant_model, config="response_cache { enable: true }"),
    })
    redis = RedisServer(data_dir=tmp_path_factory.mktemp("redis-data")).start()
    try:
        for args in (("rollout", "add", "--version", "1"), ("rollout", "add", "--version", "2", "--canary", "50"),
                     ("limit", "acme", "add", "--rps", "2", "--burst", "2")):
            result = fleet_cli(redis.url, *args, "--model-repository", str(repo)) if args[0] == "rollout" \
                else fleet_cli(redis.url, *args)
            assert result.returncode == 0, result.stdout + result.stderr
        replicas = start_replicas([(repo, fleet_args(redis.url, "a")), (repo, fleet_args(redis.url, "b"))])
        try:
            yield redis, replicas
        finally:
            for replica in replicas:
                replica.stop()
    finally:
        redis.kill()


def acme_burst(address: str, n: int = 10) -> tuple[int, list[str]]:
    stub = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    ok, refused = 0, []
    for _ in range(n):
        try:
            stub.ModelInfer(infer_request("add"), metadata=[("fleetserve-tenant", "acme")], timeout=5)
            ok += 1
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            refused.append(exc.details())
    return ok, refused


def test_killing_redis_mid_load_fails_no_request_and_a_restart_recovers(fleet, capsys):
    redis, replicas = fleet
    loads = [LoadThread(r.grpc_address, model, prefix=f"{model}-{i}")
             for i, r in enumerate(replicas) for model in ("add", "cached")]
    for load in loads:
        load.start()
    try:
        time.sleep(0.5)
        assert all(scrape_metrics(r.metrics_url)[UP] == 1 for r in replicas)
        killed = time.monotonic()
        redis.kill()
        assert wait_until(lambda: all(scrape_metrics(r.metrics_url)[UP] == 0 for r in replicas), 5)
        time.sleep(1.0)
        ok, refused = acme_burst(replicas[0].grpc_address)  # local share: burst 2 / 2 replicas
        assert 1 <= ok <= 2 and refused, (ok, refused)
        assert "this replica's share of 1/2 while Redis is unreachable" in refused[0]
        restarted = time.monotonic()
        redis.start()  # same port, same append-only file
        assert wait_until(lambda: all(scrape_metrics(r.metrics_url)[UP] == 1 for r in replicas), 10)
        recovered = time.monotonic() - restarted

        def both_listed():
            result = fleet_cli(redis.url, "status", "--json")
            return result.returncode == 0 and '"id": "a"' in result.stdout and '"id": "b"' in result.stdout
        assert wait_until(both_listed, 10)
        promote = fleet_cli(redis.url, "promote", "add", "--wait", "20")
        assert promote.returncode == 0 and "2 of 2 replicas applied" in promote.stdout, promote.stdout + promote.stderr
        promoted = time.monotonic()
        time.sleep(0.5)
    finally:
        for load in loads:
            load.stop()
    errors = [a for load in loads for a in load.errors]
    assert not errors, errors[:5]
    during = [a for load in loads if load.model == "add" for a in load.answers if killed < a.started < restarted]
    assert len(during) > 20
    for answer in during:  # the canary split held while Redis was gone
        assert answer.version == ("1" if bucket_of(answer.request_id) < 5000 else "2"), answer
    for load in loads:
        if load.model == "add":
            assert load.versions_since(promoted) == {"2"}
    for replica in replicas:
        log = replica.log  # one line each way, however many requests met the outage
        assert log.count("is down") == 1 and log.count("is back up") == 1, log[-3000:]
        metrics = scrape_metrics(replica.metrics_url)
        assert metrics[("fleetserve_redis_transitions_total", frozenset({("state", "down")}))] == 1
    total = sum(len(load.answers) for load in loads)
    with capsys.disabled():
        print(f"\n  redis killed for {restarted - killed:.1f} s under load: {total} requests, 0 failed; "
              f"link back {recovered:.2f} s after the restart", end="")


def test_a_redis_restarted_empty_gets_the_fleets_state_back_from_the_replicas(tmp_path):
    """No persistence: the restarted Redis holds nothing. The replicas kept serving the canary split, but `fleet
    status` showed the version policy, promote and rollback refused, and the limited tenant went unlimited."""
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model, versions=(1, 2))})
    redis = RedisServer().start()  # no data_dir: nothing survives a restart
    try:
        for args in (("rollout", "add", "--version", "1", "--model-repository", str(repo)),
                     ("rollout", "add", "--version", "2", "--canary", "50", "--model-repository", str(repo)),
                     ("limit", "acme", "add", "--rps", "0.01", "--burst", "2")):
            result = fleet_cli(redis.url, *args)
            assert result.returncode == 0, result.stdout + result.stderr
        replicas = start_replicas([(repo, fleet_args(redis.url, "a")), (repo, fleet_args(redis.url, "b"))])
        try:
            redis.kill()
            assert wait_until(lambda: all(scrape_metrics(r.metrics_url)[UP] == 0 for r in replicas), 5)
            redis.start()  # same port, empty
            assert wait_until(lambda: all(scrape_metrics(r.metrics_url)[UP] == 1 for r in replicas), 10)

            def restored() -> bool:
                status = fleet_cli(redis.url, "status", "--json")
                state = json.loads(status.stdout) if status.returncode == 0 else {}
                return bool(state.get("desired")) and len(state.get("replicas", ())) == 2
            assert wait_until(restored, 10)
            state = json.loads(fleet_cli(redis.url, "status", "--json").stdout)
            assert state["desired"]["add"]["split"] == [[1, 5000], [2, 5000]] and state["desired"]["add"]["canary"] == 2
            assert state["limits"] == {"acme/add": {"rps": 0.01, "burst": 2}}
            ok, refused = acme_burst(replicas[0].grpc_address)  # a fresh bucket: the burst, then refusals
            assert ok <= 2 and refused, (ok, refused)
            promote = fleet_cli(redis.url, "promote", "add", "--wait", "20")  # before the fix: "no canary to promote"
            assert promote.returncode == 0 and "2 of 2 replicas applied" in promote.stdout, \
                promote.stdout + promote.stderr
        finally:
            for replica in replicas:
                replica.stop()
    finally:
        redis.kill()
