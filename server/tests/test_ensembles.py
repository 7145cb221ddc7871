"""Ensembles (Triton's ``platform: "ensemble"``) against real servers, with tritonclient over gRPC and REST.

A pipeline's answers are its steps' chained (checked against the composing models run in process), its
steps batch with other callers' in the composing models' own batchers, the stream and REST serve it, its
metadata and config say what it is, a load loads its composing models, bad requests and failing steps
fail with the step named and the right status while everyone else is served, configs that cannot run
are refused at load, and ``unload_dependents`` unloads the composing models no other ensemble runs.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from model_store.testing import (
    ModelSpec,
    reference_outputs,
    write_add_constant_model,
    write_dense_model,
    write_identity_model,
    write_model_repository,
)
from server.testing import ServerProcess, scrape_metrics, wait_until
from server.tests.conftest import HELD_CONFIG

BATCHING = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 20000 }"


def ensemble_config(steps: str, inputs: str = 'input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]',
                    outputs: str = 'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 16 ] } ]',
                    max_batch_size: int = 8) -> str:
    return (f'platform: "ensemble"\nmax_batch_size: {max_batch_size}\n{inputs}\n{outputs}\n'
            f"ensemble_scheduling {{ step [ {steps} ] }}")


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {ins} {outs} }}'


# IN -> add1 -> mid -> dense -> OUT, and beside them IN -> add10 (version 1) -> SIDE; steps written out of order.
PIPE = ensemble_config(
    ", ".join([
        step("dense", {"INPUT0": "mid"}, {"OUTPUT0": "OUT"}),
        step("add1", {"INPUT0": "IN"}, {"OUTPUT0": "mid"}),
        step("add10", {"INPUT0": "IN"}, {"OUTPUT0": "SIDE"}, version=1),
    ]),
    outputs='output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 8 ] }, '
            '{ name: "SIDE", data_type: TYPE_FP32, dims: [ 16 ] } ]',
)
EMPTY_VERSION = ModelSpec(lambda folder: None)  # an ensemble's version folder holds no file


def ensemble(config: str) -> ModelSpec:
    return ModelSpec(EMPTY_VERSION.write, config=config)


ONE_STEP = step("add1", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_repository(tmp_path_factory.mktemp("repo"), {
        "add1": ModelSpec(partial(write_add_constant_model, constant=1.0), config=BATCHING),
        "add10": ModelSpec(partial(write_add_constant_model, constant=10.0), config=BATCHING),
        "dense": ModelSpec(write_dense_model, config=BATCHING),
        "held": ModelSpec(write_add_constant_model, config=HELD_CONFIG),
        "pipe": ensemble(PIPE),
        "also_add1": ensemble(ensemble_config(ONE_STEP)),
        "outer": ensemble(ensemble_config(
            step("pipe", {"IN": "IN"}, {"SIDE": "OUT"}))),  # an ensemble of an ensemble
        "text": ModelSpec(partial(write_identity_model, datatype="BYTES"), config="max_batch_size: 8"),
        "text_twice": ensemble(ensemble_config(
            ", ".join([step("text", {"INPUT0": "IN"}, {"OUTPUT0": "mid"}), step("text", {"INPUT0": "mid"}, {"OUTPUT0": "OUT"})]),
            inputs='input [ { name: "IN", data_type: TYPE_STRING, dims: [ 4 ] } ]',
            outputs='output [ { name: "OUT", data_type: TYPE_STRING, dims: [ 4 ] } ]')),
        "via_held": ensemble(ensemble_config(step("held", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}))),
        # takes any width, but add1 takes 16: the step refuses the others
        "flexible": ensemble(ensemble_config(
            ONE_STEP, inputs='input [ { name: "IN", data_type: TYPE_FP32, dims: [ -1 ] } ]',
            outputs='output [ { name: "OUT", data_type: TYPE_FP32, dims: [ -1 ] } ]')),
        # cannot load:
        "bad_map": ensemble(ensemble_config(step("add1", {"WRONG": "IN"}, {"OUTPUT0": "OUT"}))),
        "bad_type": ensemble(ensemble_config(
            ONE_STEP, inputs='input [ { name: "IN", data_type: TYPE_INT64, dims: [ 16 ] } ]')),
        "no_such": ensemble(ensemble_config(step("nowhere", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}))),
        "cycle_a": ensemble(ensemble_config(step("cycle_b", {"IN": "IN"}, {"OUT": "OUT"}))),
        "cycle_b": ensemble(ensemble_config(step("cycle_a", {"IN": "IN"}, {"OUT": "OUT"}))),
    })


@pytest.fixture(scope="module")
def server(repo: Path):
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "pipe") as proc:
        yield proc


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess):
    client = tc.InferenceServerClient(server.grpc_address)
    yield client
    client.close()


def rows(batch: int, width: int = 16) -> np.ndarray:
    return np.arange(batch * width, dtype=np.float32).reshape(batch, width) / 7


def infer(client, model: str, data: np.ndarray, name: str = "IN", **kwargs):
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    tensor = module.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], **kwargs)


def expected(repo: Path, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OUT and SIDE of ``pipe``, from the composing models run in process."""
    out = reference_outputs(repo / "dense" / "1", {"INPUT0": data + 1})["OUTPUT0"]
    return out, data + 10


def ready(client) -> set[str]:
    """The models READY in the repository index."""
    if isinstance(client, tc.InferenceServerClient):
        index = client.get_model_repository_index(as_json=True)["models"]
    else:
        index = client.get_model_repository_index()
    return {m["name"] for m in index if m.get("state") == "READY"}


def test_loading_an_ensemble_loads_its_composing_models(server: ServerProcess, grpc_client) -> None:
    # only pipe was named at start-up (explicit mode): its steps' models load with it
    assert {"pipe", "add1", "add10", "dense"} <= (ready(grpc_client))
    assert "held" not in ready(grpc_client)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_pipeline_answers_its_steps_chained(transport: str, server: ServerProcess, repo: Path) -> None:
    client = (tc.InferenceServerClient(server.grpc_address) if transport == "grpc"
              else th.InferenceServerClient(server.http_address))
    data = rows(3)

    result = infer(client, "pipe", data, request_id="r-7")

    out, side = expected(repo, data)
    np.testing.assert_allclose(result.as_numpy("OUT"), out, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("SIDE"), side)
    response = result.get_response()
    version = response.model_version if transport == "grpc" else response["model_version"]
    request_id = response.id if transport == "grpc" else response["id"]
    assert (version, request_id) == ("1", "r-7")
    client.close()


def test_an_ensemble_of_an_ensemble_runs_it(grpc_client) -> None:
    grpc_client.load_model("outer")

    np.testing.assert_array_equal(infer(grpc_client, "outer", rows(2)).as_numpy("OUT"), rows(2) + 10)


def test_text_flows_through_the_steps(grpc_client) -> None:
    grpc_client.load_model("text_twice")
    words = np.array([["ein", "zwei", "drei", "vier"], ["un", "deux", "trois", "quatre"]], dtype=object)
    tensor = tc.InferInput("IN", [2, 4], "BYTES")
    tensor.set_data_from_numpy(words)

    answer = grpc_client.infer("text_twice", [tensor]).as_numpy("OUT")

    assert answer.tolist() == [[w.encode() for w in row] for row in words.tolist()]


def test_metadata_and_config_say_it_is_an_ensemble(grpc_client, server: ServerProcess) -> None:
    metadata = grpc_client.get_model_metadata("pipe", as_json=True)
    config = grpc_client.get_model_config("pipe", as_json=True)["config"]
    rest = requests.get(f"{server.http_url}/v2/models/pipe/config", timeout=10).json()

    assert metadata["platform"] == "ensemble"
    assert [(t["name"], t["shape"]) for t in metadata["outputs"]] == [("OUT", ["-1", "8"]), ("SIDE", ["-1", "16"])]
    assert config["platform"] == rest["platform"] == "ensemble"
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["dense", "add1", "add10"]
    assert rest["ensemble_scheduling"]["step"][2] == {
        "model_name": "add10", "model_version": 1, "input_map": {"INPUT0": "IN"}, "output_map": {"OUTPUT0": "SIDE"},
        "model_namespace": ""}
    assert "instance_group" not in config and "dynamic_batching" not in config


def test_concurrent_requests_batch_in_the_composing_models(grpc_client, server: ServerProcess, repo: Path) -> None:
    def stats(model: str) -> dict:
        return grpc_client.get_inference_statistics(model, as_json=True)["model_stats"][0]

    before = {m: stats(m) for m in ("pipe", "add1", "dense")}
    data = rows(1)
    out, side = expected(repo, data)

    def call(_: int) -> np.ndarray:
        with tc.InferenceServerClient(server.grpc_address) as client:
            return infer(client, "pipe", data).as_numpy("OUT")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(48)))

    for answer in answers:
        np.testing.assert_allclose(answer, out, rtol=1e-6)
    after = {m: stats(m) for m in ("pipe", "add1", "dense")}

    def grew(model: str, key: str) -> int:
        return int(after[model].get(key, 0)) - int(before[model].get(key, 0))

    def successes(model: str) -> int:
        return (int(after[model]["inference_stats"]["success"].get("count", 0))
                - int(before[model]["inference_stats"]["success"].get("count", 0)))

    assert successes("pipe") == successes("add1") == successes("dense") == 48
    assert grew("add1", "inference_count") == 48
    assert grew("add1", "execution_count") < 48  # callers' steps shared batches
    assert grew("dense", "execution_count") < 48
    assert grew("pipe", "inference_count") == 48


def test_the_stream_serves_an_ensemble(grpc_client, repo: Path) -> None:
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for index in range(4):
            tensor = tc.InferInput("IN", [1, 16], "FP32")
            tensor.set_data_from_numpy(rows(1) + index)
            grpc_client.async_stream_infer("pipe", [tensor], request_id=str(index))
        answers = [responses.get(timeout=20) for _ in range(4)]
    finally:
        grpc_client.stop_stream()

    assert [error for _, error in answers] == [None] * 4
    for result, _ in answers:
        index = int(result.get_response().id)
        np.testing.assert_array_equal(result.as_numpy("SIDE"), rows(1) + index + 10)


def test_a_request_that_does_not_fit_the_ensemble_is_refused_by_it(grpc_client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(grpc_client, "pipe", rows(1, width=15))

    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'IN': shape [1, 15] does not match the model's [-1, 16]" in caught.value.message()


def test_a_step_that_refuses_its_input_fails_the_request_naming_the_step(grpc_client) -> None:
    grpc_client.load_model("flexible")
    np.testing.assert_array_equal(infer(grpc_client, "flexible", rows(1)).as_numpy("OUT"), rows(1) + 1)

    with pytest.raises(InferenceServerException) as caught:
        infer(grpc_client, "flexible", rows(1, width=5))

    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message().startswith("model 'flexible' version 1, step 1 (model 'add1'): input 'INPUT0': "
                                             "shape [1, 5] does not match")
    np.testing.assert_array_equal(infer(grpc_client, "pipe", rows(1)).as_numpy("SIDE"), rows(1) + 10)


def test_the_callers_deadline_holds_for_every_step(grpc_client, server: ServerProcess) -> None:
    grpc_client.load_model("via_held")  # held keeps a lone request queued for 0.4 s
    expired = ("fleetserve_inference_requests_total",
               frozenset({("model", "held"), ("version", "1"), ("code", "DEADLINE_EXCEEDED")}))
    before = scrape_metrics(server.metrics_url).get(expired, 0.0)

    with pytest.raises(InferenceServerException) as caught:
        infer(grpc_client, "via_held", rows(1), client_timeout=0.1)

    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # the step itself had the caller's deadline (without it, its end would count as CANCELLED)
    assert wait_until(lambda: scrape_metrics(server.metrics_url).get(expired, 0.0) == before + 1)
    np.testing.assert_array_equal(infer(grpc_client, "via_held", rows(1)).as_numpy("OUT"), rows(1) + 1)


@pytest.mark.parametrize("model, says", [
    ("bad_map", "maps 'WRONG', which model 'add1' does not take; its inputs: INPUT0"),
    ("bad_type", "feeds ensemble input 'IN' (INT64 [16]) to input 'INPUT0', which takes FP32 [16]"),
    ("no_such", "its step's model 'nowhere' cannot serve: model 'nowhere' is not in the repository"),
    ("cycle_a", "ensembles compose each other (cycle_a -> cycle_b -> cycle_a)"),
])
def test_an_ensemble_that_cannot_run_fails_its_load_saying_why(grpc_client, model: str, says: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.load_model(model)

    assert says in caught.value.message()
    assert not grpc_client.is_model_ready(model)
    np.testing.assert_array_equal(infer(grpc_client, "pipe", rows(1)).as_numpy("SIDE"), rows(1) + 10)


def test_a_composing_model_unloaded_fails_requests_unavailable_until_it_loads_again(grpc_client) -> None:
    grpc_client.unload_model("add10")
    try:
        with pytest.raises(InferenceServerException) as caught:
            infer(grpc_client, "pipe", rows(1))
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert caught.value.message().startswith("model 'pipe' version 1, step 3 (model 'add10') cannot run: ")
        assert grpc_client.is_model_ready("pipe")
    finally:
        grpc_client.load_model("add10")

    np.testing.assert_array_equal(infer(grpc_client, "pipe", rows(1)).as_numpy("SIDE"), rows(1) + 10)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_unload_dependents_unloads_the_composing_models_no_other_ensemble_runs(repo: Path, transport: str) -> None:
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "pipe",
                       "--load-model", "also_add1") as proc:
        client = (tc.InferenceServerClient(proc.grpc_address) if transport == "grpc"
                  else th.InferenceServerClient(proc.http_address))
        client.unload_model("pipe", unload_dependents=True)

        # add1 stays: also_add1 runs it
        assert (ready(client)) == {"also_add1", "add1"}
        client.unload_model("also_add1")  # without unload_dependents its models stay
        assert (ready(client)) == {"add1"}
        client.close()


def test_ensembles_load_in_any_order_at_start_up(tmp_path: Path) -> None:
    # "a_pipe" comes first in the repository's order, before the models it runs
    root = write_model_repository(tmp_path, {
        "a_pipe": ensemble(ensemble_config(ONE_STEP)),
        "add1": ModelSpec(partial(write_add_constant_model, constant=1.0), config=BATCHING),
    })
    with ServerProcess(root) as proc, tc.InferenceServerClient(proc.grpc_address) as client:
        np.testing.assert_array_equal(infer(client, "a_pipe", rows(2)).as_numpy("OUT"), rows(2) + 1)
        assert (ready(client)) == {"a_pipe", "add1"}


def test_unload_dependents_must_be_a_boolean(server: ServerProcess) -> None:
    answer = requests.post(f"{server.http_url}/v2/repository/models/pipe/unload",
                           json={"parameters": {"unload_dependents": "yes"}}, timeout=10)

    assert answer.status_code == 400
    assert "'unload_dependents' must be true or false" in answer.json()["error"]
    assert requests.get(f"{server.http_url}/v2/models/pipe/ready", timeout=10).status_code == 200
