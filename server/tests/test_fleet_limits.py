"""Per-tenant rate limits enforced across two real replicas through one real redis-server.

One tenant floods both replicas for two seconds, over gRPC on one and REST on the other; the
fleet as a whole admits about burst + rate x time, and refuses the rest with RESOURCE_EXHAUSTED
(HTTP 429) naming the tenant and the limit. Other tenants are not slowed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from prometheus_client.registry import CollectorRegistry

from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from model_store.rollout import Keys
from ops.fleet_metrics import FleetMetrics
from ops.redis_link import RedisLink
from ops.redis_testing import RedisServer
from server.fleet_testing import fleet_args, fleet_cli, infer_request, start_replicas
from server.protos import grpc_service_pb2 as pb
from server.protos import grpc_service_pb2_grpc as rpc
from server.rate_limit import LIMITS_MARKER, Limit, RateLimited, TenantLimiter
from server.testing import scrape_metrics

RPS, BURST, FLOOD_S = 10, 10, 2.0
MESSAGE = f"tenant 'acme' is over its rate limit for model 'add': {RPS} requests/s with bursts of {BURST}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {"add": ModelSpec(write_add_constant_model)})
    with RedisServer() as redis:
        a, b = start_replicas([(repo, fleet_args(redis.url, "a")), (repo, fleet_args(redis.url, "b"))])
        try:
            yield redis, a, b
        finally:
            a.stop()
            b.stop()


def http_body(tenant_parameter: str = "") -> str:
    body: dict = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
    if tenant_parameter:
        body["parameters"] = {"tenant": tenant_parameter}
    return json.dumps(body)


class Flood(threading.Thread):
    """Requests from one tenant, back to back, for ``seconds``; counts answers by outcome."""

    def __init__(self, send, seconds: float) -> None:
        super().__init__(daemon=True)
        self.send, self.seconds = send, seconds
        self.ok = 0
        self.refused: list[str] = []
        self.other: list[str] = []

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            outcome, message = self.send()
            if outcome == "ok":
                self.ok += 1
            elif outcome == "refused":
                self.refused.append(message)
            else:
                self.other.append(message)


def grpc_sender(address: str, tenant: str):
    stub = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))

    def send():
        try:
            stub.ModelInfer(infer_request("add"), metadata=[("fleetserve-tenant", tenant)], timeout=5)
            return "ok", ""
        except grpc.RpcError as exc:
            kind = "refused" if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED else "error"
            return kind, exc.details()
    return send


def http_sender(url: str, tenant: str):
    session = requests.Session()

    def send():
        reply = session.post(f"{url}/v2/models/add/infer", data=http_body(), headers={"X-Fleetserve-Tenant": tenant},
                             timeout=5)
        if reply.status_code == 200:
            return "ok", ""
        return ("refused" if reply.status_code == 429 else "error"), reply.json()["error"]
    return send


def test_one_tenant_is_held_to_its_limit_across_both_replicas_and_transports(pair):
    redis, a, b = pair
    result = fleet_cli(redis.url, "limit", "acme", "add", "--rps", str(RPS), "--burst", str(BURST))
    assert result.returncode == 0 and "10 requests/s, bursts of 10" in result.stdout, result.stdout + result.stderr
    time.sleep(0.3)  # the replicas read the new limit on its event
    floods = [Flood(grpc_sender(a.grpc_address, "acme"), FLOOD_S), Flood(http_sender(b.http_url, "acme"), FLOOD_S),
              Flood(grpc_sender(b.grpc_address, "beta"), FLOOD_S)]
    for flood in floods:
        flood.start()
    for flood in floods:
        flood.join(30)
    on_a, on_b, beta = floods
    admitted = on_a.ok + on_b.ok
    expected = BURST + RPS * FLOOD_S
    assert expected - 8 <= admitted <= expected + 3, (on_a.ok, on_b.ok)
    assert on_a.ok > 2 and on_b.ok > 2  # both replicas got a share
    assert on_a.refused and on_b.refused and not on_a.other and not on_b.other
    assert all(MESSAGE in m for m in on_a.refused + on_b.refused), (on_a.refused[:1], on_b.refused[:1])
    assert beta.ok > 50 and not beta.refused and not beta.other  # no limit, not slowed by acme's
    refused_a = scrape_metrics(a.metrics_url)[
        ("fleetserve_rate_limited_requests_total", frozenset({("model", "add"), ("tenant", "acme")}))]
    assert refused_a == len(on_a.refused)


def test_a_limited_tenant_over_a_stream_gets_each_refusal_as_that_requests_error(pair):
    """Rate limits await before queueing, so stream requests take the stream's awaited path."""
    redis, a, _ = pair
    result = fleet_cli(redis.url, "limit", "gamma", "add", "--rps", str(RPS), "--burst", str(BURST))
    assert result.returncode == 0, result.stdout + result.stderr
    time.sleep(0.3)
    with grpc.insecure_channel(a.grpc_address) as channel:
        stub = rpc.GRPCInferenceServiceStub(channel)
        requests_ = (infer_request("add", request_id=str(i)) for i in range(40))
        started = time.monotonic()
        replies = list(stub.ModelStreamInfer(requests_, metadata=[("fleetserve-tenant", "gamma")], timeout=30))
        refilled = RPS * (time.monotonic() - started)  # tokens the bucket regained while the stream ran
    fleet_cli(redis.url, "limit", "gamma", "add", "--remove")
    assert sorted(int(r.infer_response.id) for r in replies) == list(range(40))  # each answered once
    refused = [r for r in replies if r.error_message]
    ok = [r for r in replies if not r.error_message]
    assert BURST - 1 <= len(ok) <= BURST + refilled + 2, (len(ok), refilled)
    assert all(MESSAGE.replace("acme", "gamma") in r.error_message for r in refused), refused[:1]
    for r in ok:
        assert np.frombuffer(r.infer_response.raw_output_contents[0], np.float32).tolist() == [2.0] * 16


def test_the_tenant_parameter_counts_and_removing_the_limit_lifts_it(pair):
    redis, a, b = pair
    with requests.Session() as session:  # the request parameter names the tenant too
        replies = [session.post(f"{a.http_url}/v2/models/add/infer", data=http_body(tenant_parameter="acme"),
                                timeout=5) for _ in range(40)]
    refused = [r for r in replies if r.status_code == 429]
    assert refused and all(MESSAGE in r.json()["error"] for r in refused)
    assert {r.status_code for r in replies} == {200, 429}
    result = fleet_cli(redis.url, "limit", "acme", "add", "--remove")
    assert result.returncode == 0 and "no limit (was 10/s, burst 10)" in result.stdout
    time.sleep(0.3)
    for _ in range(30):
        reply = requests.post(f"{a.http_url}/v2/models/add/infer", data=http_body(), timeout=5,
                              headers={"X-Fleetserve-Tenant": "acme"})
        assert reply.status_code == 200
    out = np.array(reply.json()["outputs"][0]["data"], np.float32)
    assert out.tolist() == [2.0] * 16
    status = fleet_cli(redis.url, "status").stdout
    assert "TENANT" not in status


def test_a_limit_needs_a_rate_and_a_burst(pair):
    redis, _, _ = pair
    result = fleet_cli(redis.url, "limit", "acme", "add", "--rps", "0", "--burst", "5")
    assert result.returncode == 1 and "requests/s > 0" in result.stderr
    result = fleet_cli(redis.url, "limit", "acme", "add", "--rps", "5")
    assert result.returncode == 1 and "give --rps and --burst" in result.stderr


def test_a_limit_is_stored_with_every_digit_of_its_rate(pair):
    redis, _, _ = pair
    try:
        result = fleet_cli(redis.url, "limit", "precise", "add", "--rps", "1234567", "--burst", "10")
        assert result.returncode == 0
        limits = json.loads(fleet_cli(redis.url, "status", "--json").stdout)["limits"]
        assert limits["precise/add"] == {"rps": 1234567.0, "burst": 10}  # was 1234570.0: six significant digits
    finally:
        fleet_cli(redis.url, "limit", "precise", "add", "--remove")


def test_raising_a_limit_lifts_a_refusal_made_under_the_old_one(pair):
    redis, a, _ = pair
    send = grpc_sender(a.grpc_address, "raised")
    try:
        assert fleet_cli(redis.url, "limit", "raised", "add", "--rps", "0.01", "--burst", "1").returncode == 0
        assert a.wait_for_log("raised/add 0.01/s burst 1")
        assert send()[0] == "ok"
        assert send()[0] == "refused"  # the next token is 100 s away
        assert fleet_cli(redis.url, "limit", "raised", "add", "--rps", "100", "--burst", "100").returncode == 0
        assert a.wait_for_log("raised/add 100/s burst 100")
        # The shared bucket was empty when the limit rose and refills at the new rate, a token every 10 ms:
        # 0.1 s gives ten. The replica used to keep refusing locally until the old limit's next token (100 s).
        time.sleep(0.1)
        assert [send()[0] for _ in range(5)] == ["ok"] * 5
    finally:
        fleet_cli(redis.url, "limit", "raised", "add", "--remove")


def test_limits_outlive_a_redis_that_lost_its_data_and_removing_the_last_one_sticks(pair):
    """Redis restarted empty or flushed: replicas dropped every limit at their next lease or full reconcile, and
    each tenant went unlimited. They keep enforcing the limits they know and write them back; `fleet limit`
    leaves a marker in the hash, so removing the last limit is not taken for such a loss."""
    redis, a, _ = pair
    send = grpc_sender(a.grpc_address, "kept")
    assert fleet_cli(redis.url, "limit", "kept", "add", "--rps", "1", "--burst", "3").returncode == 0
    assert a.wait_for_log("kept/add 1/s burst 3")
    assert fleet_cli(redis.url, "limit", "kept", "add", "--remove").returncode == 0  # the last limit
    time.sleep(1.5)  # past a full reconcile (1 s) on each replica
    assert [send()[0] for _ in range(20)] == ["ok"] * 20
    try:
        assert fleet_cli(redis.url, "limit", "kept", "add", "--rps", "1", "--burst", "4").returncode == 0
        assert a.wait_for_log("kept/add 1/s burst 4")
        asyncio.run(flushdb(redis.url))
        time.sleep(1.5)
        outcomes = [send()[0] for _ in range(20)]
        assert outcomes.count("ok") <= 6 and "refused" in outcomes, outcomes  # before the fix: 20 "ok"
        limits = json.loads(fleet_cli(redis.url, "status", "--json").stdout)["limits"]
        assert limits == {"kept/add": {"rps": 1.0, "burst": 4}}
    finally:
        fleet_cli(redis.url, "limit", "kept", "add", "--remove")


def test_a_lease_from_a_redis_that_lost_every_limit_keeps_the_limit_and_writes_it_back(pair):
    """The lease script answered "no such limit" for a Redis that lost the whole hash, and the replica dropped it."""
    redis, _, _ = pair

    async def scenario() -> tuple[list[bool], bytes | None]:
        link = RedisLink(redis.url)
        await link.start()
        keys = Keys("lease-test:")  # apart from the replicas' keys
        limiter = TenantLimiter(link, keys, FleetMetrics(CollectorRegistry()))
        try:
            await link.call(lambda c: c.hset(keys.limits, mapping={LIMITS_MARKER: "1", "t/m": Limit(1, 2).text()}))
            await limiter.refresh()

            async def admit_once() -> bool:
                verdict = limiter.try_admit("t", "m")
                if verdict is None:
                    try:
                        await limiter.admit("t", "m")
                    except RateLimited:
                        return False
                    return True
                return verdict

            assert await admit_once()
            await link.call(lambda c: c.delete(keys.limits, keys.bucket("t/m")))  # Redis lost its data
            outcomes = [await admit_once() for _ in range(5)]
            await asyncio.sleep(0.2)  # the write-back
            return outcomes, await link.call(lambda c: c.hget(keys.limits, "t/m"))
        finally:
            await link.call(lambda c: c.delete(keys.limits, keys.bucket("t/m")))
            await link.stop()

    outcomes, stored = asyncio.run(scenario())
    # the local share (one replica: all of it) until the limit is back, then a fresh bucket; before: all True
    assert outcomes.count(True) <= 4 and outcomes[-1] is False, outcomes
    assert stored is not None and Limit.parse(stored.decode()) == Limit(1, 2)


async def flushdb(url: str) -> None:
    link = RedisLink(url)
    await link.start()
    await link.call(lambda c: c.flushdb())
    await link.stop()
