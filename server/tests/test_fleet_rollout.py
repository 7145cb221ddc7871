"""Rollouts across three real replicas sharing one real redis-server, with load running all along.

Replicas a and b serve a repository whose model ``add`` has good versions 1, 2 and 3 (version v
adds v to its input); replica c's repository has the same versions 1 and 2 but a corrupt version 3.
The fleet starts at version 1 (its desired state is written before the replicas start), takes a
20% canary of version 2, promotes it, tries version 3 (c cannot load it: it keeps serving version 2
and reports why), and rolls back to version 2. Every request sent meanwhile must succeed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from model_store.routing import bucket_of
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from ops.redis_testing import RedisServer
from server.fleet_testing import LoadThread, fleet_args, fleet_cli, start_replicas
from server.testing import scrape_metrics


def _add_version(version_dir: Path) -> None:
    write_add_constant_model(version_dir, constant=float(version_dir.name))


def _corrupt(version_dir: Path) -> None:
    (version_dir / "model.onnx").write_bytes(b"not an onnx model" * 8)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    good = write_model_repository(tmp_path_factory.mktemp("good"),
                                  {"add": ModelSpec(_add_version, versions=(1, 2, 3))})
    bad = write_model_repository(tmp_path_factory.mktemp("bad"), {"add": ModelSpec(_add_version, versions=(1, 2))})
    write_model_repository(bad, {"add": ModelSpec(_corrupt, versions=(3,))})
    with RedisServer() as redis:
        first = fleet_cli(redis.url, "rollout", "add", "--version", "1", "--model-repository", str(good),
                          in_process=False)  # the real command line, once
        assert first.returncode == 0, first.stdout + first.stderr
        replicas = start_replicas([(good, fleet_args(redis.url, "a")), (good, fleet_args(redis.url, "b")),
                                   (bad, fleet_args(redis.url, "c"))])
        loads = [LoadThread(r.grpc_address, "add", prefix=f"{name}") for r, name in zip(replicas, "abc")]
        for load in loads:
            load.start()
        try:
            yield redis, replicas, loads
        finally:
            for load in loads:
                load.stop()
            for replica in replicas:
                replica.stop()


def converge_seconds(result) -> float:
    match = re.search(r"replicas applied revision \d+ in ([0-9.]+) s", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def status(redis) -> dict:
    result = fleet_cli(redis.url, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n  {text}", end="")


def test_start_up_loads_the_desired_version_not_the_latest(fleet):
    redis, replicas, loads = fleet
    time.sleep(0.3)
    state = status(redis)
    assert [r["id"] for r in state["replicas"]] == ["a", "b", "c"]
    for replica in state["replicas"]:
        model = replica["models"]["add"]
        assert [v["version"] for v in model["versions"]] == [1] and model["route"] == [[1, 10000]]
        assert model["available"] in ([1, 2, 3],)


def test_canary_then_promote_under_load(fleet, capsys):
    redis, replicas, loads = fleet
    time.sleep(0.5)  # some traffic on version 1 first
    canary = fleet_cli(redis.url, "rollout", "add", "--version", "2", "--canary", "20", "--wait", "30")
    assert canary.returncode == 0, canary.stdout + canary.stderr
    assert "v1 100% -> v1 80% · v2 20%" in canary.stdout and "3 of 3 replicas applied" in canary.stdout
    canary_s = converge_seconds(canary)
    converged = time.monotonic()
    time.sleep(1.5)
    answers = [a for load in loads for a in load.answers if a.started > converged and not a.error]
    assert len(answers) > 100
    for answer in answers:  # the split is a function of the request id, the same on every replica
        assert answer.version == ("1" if bucket_of(answer.request_id) < 8000 else "2"), answer
    share = sum(a.version == "2" for a in answers) / len(answers)
    assert 0.12 < share < 0.28, share

    promote = fleet_cli(redis.url, "promote", "add", "--wait", "30")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    promote_s = converge_seconds(promote)
    converged = time.monotonic()
    time.sleep(0.8)
    for load in loads:
        assert load.versions_since(converged) == {"2"}
    for replica in status(redis)["replicas"]:
        assert [v["version"] for v in replica["models"]["add"]["versions"]] == [2]  # version 1 unloaded
    assert not [a for load in loads for a in load.errors]
    report(capsys, f"time to converge, 3 replicas under load: canary {canary_s:.2f} s, promote {promote_s:.2f} s")


def test_a_replica_that_cannot_load_keeps_serving_and_rollback_restores(fleet, capsys):
    redis, replicas, loads = fleet
    result = fleet_cli(redis.url, "rollout", "add", "--version", "3", "--wait", "30")
    assert result.returncode == 1, result.stdout + result.stderr  # not every replica applied it
    assert "2 of 3 replicas applied" in result.stdout and "c: FAILED: version 3 UNAVAILABLE" in result.stdout
    moment = time.monotonic()
    time.sleep(0.8)
    a, b, c = loads
    assert a.versions_since(moment) == b.versions_since(moment) == {"3"}
    assert c.versions_since(moment) == {"2"}  # c keeps serving what it served
    table = fleet_cli(redis.url, "status").stdout
    assert re.search(r"\bc\s+127\.0\.0\.1:\d+\s+\d+\s+v2 100%.*FAILED: version 3 UNAVAILABLE", table), table
    metrics = scrape_metrics(replicas[2].metrics_url)
    assert metrics[("fleetserve_rollout_failed", frozenset({("model", "add")}))] == 1

    back = fleet_cli(redis.url, "rollback", "add", "--wait", "30")
    assert back.returncode == 0 and "3 of 3 replicas applied" in back.stdout, back.stdout + back.stderr
    rollback_s = converge_seconds(back)
    moment = time.monotonic()
    time.sleep(0.8)
    for load in loads:
        assert load.versions_since(moment) == {"2"}
    for replica in status(redis)["replicas"]:
        model = replica["models"]["add"]
        assert model["error"] == "" and [v["version"] for v in model["versions"]] == [2]
    errors = [a for load in loads for a in load.errors]
    assert not errors, errors[:5]
    total = sum(len(load.answers) for load in loads)
    report(capsys, f"rollback (reloading version 2 on a and b) converged in {rollback_s:.2f} s; "
                   f"{total} requests, 0 failed")


def test_a_replica_that_starts_mid_rollout_it_cannot_load_serves_the_previous_split(tmp_path):
    """A replica (re)started while the fleet rolls out a version it cannot load: pinned to that version, it used
    to serve nothing (UNAVAILABLE) where the replica before the restart served the previous version."""
    good = write_model_repository(tmp_path / "good", {"add": ModelSpec(_add_version, versions=(1, 2, 3))})
    bad = write_model_repository(tmp_path / "bad", {"add": ModelSpec(_add_version, versions=(1, 2))})
    write_model_repository(bad, {"add": ModelSpec(_corrupt, versions=(3,))})
    with RedisServer() as redis:
        for version in ("2", "3"):
            result = fleet_cli(redis.url, "rollout", "add", "--version", version, "--model-repository", str(good))
            assert result.returncode == 0, result.stdout + result.stderr
        [c] = start_replicas([(bad, fleet_args(redis.url, "c"))])
        try:
            load = LoadThread(c.grpc_address, "add", prefix="c", pause_s=0.01)
            load.start()
            time.sleep(1.5)  # past a full reconcile (1 s), which tries version 3 again
            load.stop()
            assert load.answers and not load.errors, load.errors[:3]
            assert {a.version for a in load.answers} == {"2"}
            [replica] = status(redis)["replicas"]
            model = replica["models"]["add"]
            assert model["route"] == [[2, 10000]] and model["applied_revision"] == 0
            assert model["error"].startswith("version 3 UNAVAILABLE"), model
            back = fleet_cli(redis.url, "rollback", "add", "--wait", "30")
            assert back.returncode == 0 and "1 of 1 replicas applied" in back.stdout, back.stdout + back.stderr
        finally:
            c.stop()


def test_a_replica_whose_repository_lacks_the_model_is_not_waited_for_nor_counted(tmp_path):
    """A fleet whose replicas serve different models: b has no model 'add'. It learns the desired state (and
    keeps it for a later load) but serves nothing of 'add', so it must not appear among the replicas serving it."""
    with_add = write_model_repository(tmp_path / "a", {"add": ModelSpec(_add_version, versions=(1, 2))})
    without = write_model_repository(tmp_path / "b", {"other": ModelSpec(_add_version)})
    with RedisServer() as redis:
        a, b = start_replicas([(with_add, fleet_args(redis.url, "a")), (without, fleet_args(redis.url, "b"))])
        try:
            time.sleep(0.5)  # both have published their state
            first = fleet_cli(redis.url, "rollout", "add", "--version", "1", "--wait", "10")
            assert first.returncode == 0 and "1 of 1 replicas applied" in first.stdout, first.stdout + first.stderr
            time.sleep(0.5)  # b has seen revision 1 and published its state since
            # before the fix: b reported 'add' (applied revision 0, no versions) once it had seen a desired state,
            # so this waited for b and failed "not converged after 10 s: 1 of 2 replicas applied revision 2"
            back = fleet_cli(redis.url, "rollback", "add", "--wait", "10")
            assert back.returncode == 0 and "1 of 1 replicas applied" in back.stdout, back.stdout + back.stderr
            assert "1 live replica(s) serve it" in back.stdout
            [serving] = [r["id"] for r in status(redis)["replicas"] if "add" in r["models"]]
            assert serving == "a"
            table = fleet_cli(redis.url, "status").stdout
            assert "applying" not in table, table
            desired = ("fleetserve_rollout_desired_revision", frozenset({("model", "add")}))
            assert desired in scrape_metrics(a.metrics_url) and desired not in scrape_metrics(b.metrics_url)
        finally:
            a.stop()
            b.stop()
