"""Sequences across a fleet: two real replicas, one real redis-server, tritonclient calls to either replica.

A sequence's state lives in the replica that started it; a request of it that reaches the other replica is
forwarded there (server/sequence_owners.py), whose record in Redis names the replica holding it.
"""

from __future__ import annotations

import contextlib
import queue
import time

import numpy as np
import pytest
import redis
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from model_store.stateful_testing import ACCUMULATOR_SEQUENCE_BATCHING, write_accumulator_model
from model_store.testing import ModelSpec, write_model_repository
from ops.redis_testing import RedisServer
from server.fleet_testing import fleet_args, start_replicas
from server.testing import scrape_metrics
from server.tls_testing import make_pki, tls_args

CONFIG = "max_batch_size: 8\n" + ACCUMULATOR_SEQUENCE_BATCHING.format(
    idle_us=2_000_000, initial="", strategy="direct { }")


@contextlib.contextmanager
def replica_pair(repo, extra: list[str], **client_options):
    """Two replicas of ``repo`` with ``extra`` flags, a real Redis, and a tritonclient for each."""
    with RedisServer() as server:
        a, b = start_replicas([(repo, [*fleet_args(server.url, "a"), *extra]),
                               (repo, [*fleet_args(server.url, "b"), *extra])])
        clients = [tc.InferenceServerClient(s.grpc_address, **client_options) for s in (a, b)]
        try:
            yield server, (a, b), clients
        finally:
            for client in clients:
                client.close()
            a.stop()
            b.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {"acc": ModelSpec(write_accumulator_model,
                                                                                     config=CONFIG)})
    with replica_pair(repo, []) as pair:
        yield pair


def step(client: tc.InferenceServerClient, sequence_id, value: float, start: bool = False, end: bool = False) -> float:
    tensor = tc.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
    result = client.infer("acc", [tensor], sequence_id=sequence_id, sequence_start=start, sequence_end=end)
    return float(result.as_numpy("OUTPUT0")[0, 0])


def forwarded(replica) -> float:
    return scrape_metrics(replica.metrics_url).get(
        ("fleetserve_sequence_forwarded_requests_total", frozenset({("model", "acc")})), 0.0)


def served(client: tc.InferenceServerClient) -> int:
    """Requests the replica's own acc version ran (forwarded ones count where they ran)."""
    stats = client.get_inference_statistics("acc", as_json=True)["model_stats"][0]["inference_stats"]
    return int(stats["success"].get("count", 0))


def record(server: RedisServer, sequence_id) -> str | None:
    kind = "s" if isinstance(sequence_id, str) else "i"
    with redis.Redis.from_url(server.url) as client:
        value = client.get(f"fleetserve:sequence:acc:{kind}:{sequence_id}")
    return value.decode() if value is not None else None


def eventually(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_sequence_goes_on_through_either_replica_on_the_state_of_the_one_that_started_it(fleet) -> None:
    server, (a, b), (on_a, on_b) = fleet
    ran_a, ran_b, sent_on = served(on_a), served(on_b), forwarded(b)

    sums = [step(on_a, 41, 1.0, start=True), step(on_b, 41, 2.0), step(on_a, 41, 3.0)]
    eventually(lambda: record(server, 41) == a.grpc_address)  # the record names the replica holding it
    sums.append(step(on_b, 41, 4.0, end=True))

    assert sums == [1.0, 3.0, 6.0, 10.0]
    assert (served(on_a) - ran_a, served(on_b) - ran_b) == (4, 0)  # every request ran on a, where the state is
    assert forwarded(b) - sent_on == 2  # b forwarded its two (the metric SREs read)
    eventually(lambda: record(server, 41) is None, timeout_s=1.0)  # its end removed it (its expiry is 3 s away)
    with pytest.raises(InferenceServerException, match="sequence 41 is not live"):
        step(on_b, 41, 1.0)


def test_sequences_started_on_each_replica_stay_there(fleet) -> None:
    server, (a, b), (on_a, on_b) = fleet
    assert step(on_b, 8, 5.0, start=True) == 5.0
    assert step(on_a, 7, 1.0, start=True) == 1.0
    assert step(on_a, 8, 5.0) == 10.0  # forwarded to b
    assert step(on_b, 7, 1.0) == 2.0  # forwarded to a
    assert step(on_b, 8, 1.0, end=True) == 11.0  # b's own
    assert step(on_a, 7, 1.0, end=True) == 3.0  # a's own
    eventually(lambda: record(server, 7) is None and record(server, 8) is None)


def test_a_forwarded_request_s_error_keeps_its_status_and_names_the_replica(fleet) -> None:
    server, (a, b), (on_a, on_b) = fleet
    step(on_a, 51, 1.0, start=True)
    eventually(lambda: record(server, 51) == a.grpc_address)
    tensor = tc.InferInput("INPUT0", [1, 5], "FP32")  # a shape the model refuses, sent to b
    tensor.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        on_b.infer("acc", [tensor], sequence_id=51)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"forwarded to replica {a.grpc_address}, which holds sequence 51" in caught.value.message()
    assert step(on_b, 51, 1.0, end=True) == 2.0  # the sequence goes on: a refused request leaves the state


def test_a_sequence_whose_replica_released_it_is_not_live_anywhere(fleet) -> None:
    server, (a, b), (on_a, on_b) = fleet
    step(on_a, 61, 1.0, start=True)
    eventually(lambda: record(server, 61) == a.grpc_address)
    time.sleep(2.5)  # idle past the model's 2 s: a releases it, and its record goes
    eventually(lambda: record(server, 61) is None)
    for client in (on_a, on_b):
        with pytest.raises(InferenceServerException, match="sequence 61 is not live"):
            step(client, 61, 1.0)


def test_the_stream_forwards_too(fleet) -> None:
    server, (a, b), (on_a, on_b) = fleet
    step(on_a, 71, 1.0, start=True)
    eventually(lambda: record(server, 71) == a.grpc_address)
    answers: queue.Queue = queue.Queue()
    on_b.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for k, value in enumerate((2.0, 3.0)):
            tensor = tc.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
            on_b.async_stream_infer("acc", [tensor], request_id=str(k), sequence_id=71, sequence_end=k == 1)
            result, error = answers.get(timeout=20)  # one at a time: a sequence's order is its client's
            assert error is None
            assert float(result.as_numpy("OUTPUT0")[0, 0]) == (3.0, 6.0)[k]
    finally:
        on_b.stop_stream()


def test_a_sequence_held_by_a_replica_that_is_gone_fails_unavailable_naming_it(fleet) -> None:
    server, (a, b), (on_a, on_b) = fleet
    with redis.Redis.from_url(server.url) as client:  # the record a replica that died left behind
        client.set("fleetserve:sequence:acc:i:91", "127.0.0.1:1", px=5000)
    with pytest.raises(InferenceServerException) as caught:
        step(on_b, 91, 1.0)
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "forwarded to replica 127.0.0.1:1, which holds sequence 91" in caught.value.message()
    assert step(on_b, 91, 1.0, start=True) == 1.0  # started again: b holds it now, and the record says so
    eventually(lambda: record(server, 91) == b.grpc_address)
    assert step(on_a, 91, 1.0, end=True) == 2.0


def test_replicas_serving_mutual_tls_forward_a_sequence_over_it(tmp_path) -> None:
    """Peers are called with the replica's own certificate, checked for --peer-tls-server-name: the
    certificate names only the Service, not the addresses the replicas advertise."""
    pki = make_pki(tmp_path / "pki", "fleetserve.test")
    repo = write_model_repository(tmp_path / "repo", {"acc": ModelSpec(write_accumulator_model, config=CONFIG)})
    peer = [*tls_args(pki, mutual=True, http=False), "--peer-tls-server-name", "fleetserve.test"]
    with replica_pair(repo, peer, ssl=True, root_certificates=str(pki.ca), private_key=str(pki.client_key),
                      certificate_chain=str(pki.client_cert),
                      channel_args=[("grpc.ssl_target_name_override", "fleetserve.test")]) as (server, (a, b), clients):
        on_a, on_b = clients
        assert step(on_a, 81, 1.0, start=True) == 1.0
        eventually(lambda: record(server, 81) == a.grpc_address)
        assert step(on_b, 81, 2.0) == 3.0  # forwarded to a over TLS
        assert step(on_b, 81, 3.0, end=True) == 6.0
        assert forwarded(b) == 2.0


def test_a_replica_forwards_with_the_header_a_restricted_inference_api_asks_for(tmp_path) -> None:
    repo = write_model_repository(tmp_path / "repo", {"acc": ModelSpec(write_accumulator_model, config=CONFIG)})
    headers = {"triton-grpc-protocol-infer-key": "v"}

    def send(client: tc.InferenceServerClient, value: float, **flags) -> float:
        tensor = tc.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        result = client.infer("acc", [tensor], sequence_id=82, headers=headers, **flags)
        return float(result.as_numpy("OUTPUT0")[0, 0])

    with replica_pair(repo, ["--grpc-restricted-protocol=inference:infer-key=v"]) as (server, (a, b), clients):
        assert send(clients[0], 1.0, sequence_start=True) == 1.0
        eventually(lambda: record(server, 82) == a.grpc_address)
        assert send(clients[1], 2.0) == 3.0  # b forwards to a, with the header
        assert send(clients[1], 3.0, sequence_end=True) == 6.0
        assert forwarded(b) == 2.0
