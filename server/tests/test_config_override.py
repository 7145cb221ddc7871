"""Loading a model with a config override (Triton's ``config`` load parameter), against real servers.

tritonclient's ``load_model(name, config=json_text)`` over gRPC and REST: the override is in force (in
``get_model_config`` and in behaviour), a later load without it returns to config.pbtxt, an override
that does not parse, names another model or breaks a rule is refused while the model serves on as it
did, and traffic during an override load is never dropped. Model files sent with an override
(``file:``) are tested in test_load_files.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th

from model_store.testing import ModelSpec, write_add_constant_model, write_dense_model, write_model_repository
from ops.redis_testing import RedisServer
from server.fleet_testing import fleet_args
from server.testing import ServerProcess

DENSE_CONFIG = "max_batch_size: 4\ndynamic_batching { }"


def dense_input(batch: int, module=tc) -> list:
    inp = module.InferInput("INPUT0", [batch, 16], "FP32")
    inp.set_data_from_numpy(np.ones((batch, 16), np.float32))
    return [inp]


def add_input(module=tc) -> list:
    inp = module.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    return [inp]


def config_of(client, name: str) -> dict:
    if isinstance(client, tc.InferenceServerClient):
        return client.get_model_config(name, as_json=True)["config"]
    return client.get_model_config(name)


def served_version(client, name: str) -> float:
    """Which version answered: version N of ``add`` adds N to zeros."""
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    return float(client.infer(name, add_input(module)).as_numpy("OUTPUT0")[0, 0])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {
        "dense": ModelSpec(write_dense_model, config=DENSE_CONFIG),
        # version N adds N: which version answered shows in the output
        "add": ModelSpec(lambda d: write_add_constant_model(d, constant=float(d.name)), versions=(1, 2)),
    })
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "dense",
                       "--load-model", "add") as proc:
        yield proc


@pytest.fixture(params=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: ServerProcess):
    made = (tc.InferenceServerClient(server.grpc_address) if request.param == "grpc"
            else th.InferenceServerClient(server.http_address))
    yield made
    made.load_model("dense")  # back to config.pbtxt for the next test
    made.load_model("add")
    made.close()


def status_of(client, grpc_status: str, http_status: str) -> str:
    return grpc_status if isinstance(client, tc.InferenceServerClient) else http_status


def test_an_override_is_in_force_until_a_load_without_one(client):
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    assert config_of(client, "dense")["max_batch_size"] == 4
    with pytest.raises(Exception) as err:
        client.infer("dense", dense_input(8, module))
    assert err.value.status() == status_of(client, "StatusCode.INVALID_ARGUMENT", "400"), err.value

    override = {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_microseconds": 500},
                "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}
    client.load_model("dense", config=json.dumps(override))
    config = config_of(client, "dense")
    assert config["max_batch_size"] == 16
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 500
    assert [(g["count"], g["kind"]) for g in config["instance_group"]] == [(2, "KIND_CPU")]
    assert client.infer("dense", dense_input(8, module)).as_numpy("OUTPUT0").shape == (8, 8)
    assert client.is_model_ready("dense")

    client.load_model("dense")  # without an override: config.pbtxt again
    assert config_of(client, "dense")["max_batch_size"] == 4
    assert int(config_of(client, "dense")["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == 0
    with pytest.raises(Exception) as err:
        client.infer("dense", dense_input(8, module))
    assert err.value.status() == status_of(client, "StatusCode.INVALID_ARGUMENT", "400"), err.value


def test_the_config_endpoints_answer_is_an_override_as_it_is(client):
    """What Model Analyzer does: read the complete config, change a field, load it back."""
    config = config_of(client, "dense")
    config["max_batch_size"] = 2  # batching turned off would need max_batch_size 0, stated: also kept below
    client.load_model("dense", config=json.dumps(config))
    assert config_of(client, "dense")["max_batch_size"] == 2
    config["max_batch_size"] = 0
    config.pop("dynamic_batching", None)
    config["input"][0]["dims"] = [1, 16]  # without a batch dimension, a request's shape is the whole tensor's
    config["output"][0]["dims"] = [1, 8]
    client.load_model("dense", config=json.dumps(config))
    assert config_of(client, "dense").get("max_batch_size", 0) == 0  # gRPC's JSON leaves zeros out
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    assert client.infer("dense", dense_input(1, module)).as_numpy("OUTPUT0").shape == (1, 8)


def test_an_override_choosing_other_versions_replaces_the_served_ones(client):
    assert served_version(client, "add") == 2.0  # the default policy: the latest
    client.load_model("add", config=json.dumps({"name": "add", "version_policy": {"specific": {"versions": [1]}}}))
    assert served_version(client, "add") == 1.0
    assert client.is_model_ready("add", "1") and not client.is_model_ready("add", "2")
    client.load_model("add")
    assert served_version(client, "add") == 2.0 and not client.is_model_ready("add", "1")


@pytest.mark.parametrize("override, message", [
    ('{"max_batch_size": 16', "config override of model 'dense': is not valid JSON"),
    ('[{"max_batch_size": 16}]', "config override of model 'dense': is an array, not a JSON object"),
    ('{"name": "add", "max_batch_size": 16}',
     "config override of model 'dense': name: is \"add\", but the load request is for model \"dense\""),
    ('{"max_batch_size": 16, "model_operations": {}}',
     "config override of model 'dense': field \"model_operations\" of Triton's model configuration is not "
     "supported by fleetserve"),
    ('{"max_batch_size": 16, "dynamic_batching": {"max_queue_delay": 5}}',
     "config override of model 'dense': unknown field \"max_queue_delay\" in dynamic_batching"),
    ('{"max_batch_size": 16, "instance_group": [{"count": 1, "passive": true}]}',
     "config override of model 'dense': instance_group[0].passive: is true"),
    # checked while the version loads, against the model's signature, as config.pbtxt is
    ('{"max_batch_size": 16, "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [3]}]}',
     "model 'dense' did not load with its config override: version 1: serving the copy loaded earlier; "
     "reloading it failed: config override of model 'dense': input"),
    ('{"max_batch_size": 16, "parameters": {"latency_slo_ms": {"string_value": "soon"}}}',
     "config override of model 'dense': parameters"),
])
def test_a_bad_override_is_refused_and_the_model_serves_on_as_before(client, override: str, message: str):
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    with pytest.raises(Exception) as err:
        client.load_model("dense", config=override)
    assert err.value.status() == status_of(client, "StatusCode.INVALID_ARGUMENT", "400"), err.value
    assert message in err.value.message(), err.value.message()
    assert config_of(client, "dense")["max_batch_size"] == 4
    assert client.infer("dense", dense_input(4, module)).as_numpy("OUTPUT0").shape == (4, 8)
    client.load_model("dense")  # the repository's config loads again, with no error left behind
    assert client.is_model_ready("dense")


def test_a_config_that_is_not_a_string_is_refused(server: ServerProcess):
    url = f"{server.http_url}/v2/repository/models/dense/load"
    reply = requests.post(url, json={"parameters": {"config": {"max_batch_size": 16}}}, timeout=30)
    assert reply.status_code == 400, reply.text
    assert "parameter 'config' must be a string holding the model configuration as JSON" in reply.json()["error"]


def test_traffic_during_override_loads_is_not_dropped(server: ServerProcess):
    failures: list[BaseException] = []
    answered: list[int] = []  # list.append is atomic: four threads count here
    stop = threading.Event()

    def send() -> None:
        client = tc.InferenceServerClient(server.grpc_address)
        while not stop.is_set():
            try:
                client.infer("dense", dense_input(2))
                answered.append(1)
            except Exception as exc:  # any failure at all is what this test looks for
                failures.append(exc)
        client.close()

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    control = tc.InferenceServerClient(server.grpc_address)
    try:
        for count in (2, 1, 3):
            before = len(answered)
            control.load_model("dense", config=json.dumps({"max_batch_size": 8, "instance_group": [{"count": count}]}))
            assert config_of(control, "dense")["instance_group"][0]["count"] == count
            deadline = time.monotonic() + 30
            while len(answered) < before + 20 and not failures and time.monotonic() < deadline:
                stop.wait(0.01)  # some requests reach the new copy before the next swap
        control.load_model("dense")
    finally:
        stop.set()
        for sender in senders:
            sender.join()
        control.close()
    assert not failures, failures[:3]
    assert len(answered) > 60


def test_an_override_is_refused_in_fleet_mode(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model, config=DENSE_CONFIG)})
    with RedisServer() as redis, ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "dense",
                                               *fleet_args(redis.url, "a")) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("dense", config='{"max_batch_size": 16}')
        assert err.value.status() == "StatusCode.UNIMPLEMENTED", err.value
        assert "a config override is not supported in fleet mode" in err.value.message()
        assert config_of(client, "dense")["max_batch_size"] == 4
        client.close()
