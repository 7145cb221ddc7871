"""Sequence batching with implicit state (Triton's sequence_batching) against real servers and tritonclient.

The accumulator model (model_store/stateful_testing.py) answers the running sum of its sequence, which only the
server carries from request to request (STATE_OUT into STATE_IN), and gives back the control values the
server filled in: so each test sees whether the state and the controls were right, over unary gRPC, the
stream and REST, for sequences interleaved and concurrent (batched together), restarted, ended, idle and
refused.
"""

from __future__ import annotations

import asyncio
import queue
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from model_store.stateful_testing import (
    ACC_PIPE, ACCUMULATOR_SEQUENCE_BATCHING, PLUS_ONE, write_accumulator_model,
)
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from model_store.routing import TrafficRouter, make_split
from ops.errors import InvalidInput
from server.app import App
from server.dataplane import ControlMode
from server.settings import Settings
from server.testing import ServerProcess, scrape_metrics
from server.types import InferRequest, InputTensor

ZERO_START = "initial_state { data_type: TYPE_FP32, dims: [ 4 ], zero_data: true }"
OLDEST = "oldest { max_candidate_sequences: 64, max_queue_delay_microseconds: 20000 }"


def accumulator_config(idle_us: int = 5_000_000, initial: str = ZERO_START, strategy: str = OLDEST,
                       max_batch_size: int = 8) -> str:
    return f"max_batch_size: {max_batch_size}\n" + ACCUMULATOR_SEQUENCE_BATCHING.format(
        idle_us=idle_us, initial=initial, strategy=strategy)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("repo")
    repo = write_model_repository(root, {
        "acc": ModelSpec(write_accumulator_model, config=accumulator_config()),
        "short": ModelSpec(write_accumulator_model, config=accumulator_config(idle_us=300_000)),
        "few": ModelSpec(write_accumulator_model, config=accumulator_config(
            strategy="oldest { max_candidate_sequences: 2 }")),
        "seeded": ModelSpec(write_accumulator_model, config=accumulator_config(
            initial='initial_state { data_type: TYPE_FP32, dims: [ 4 ], data_file: "seed.bin" }',
            strategy="direct { }")),
        "flat": ModelSpec(partial(write_accumulator_model, batch=False),
                          config=accumulator_config(max_batch_size=0, strategy="direct { }")),
        "plus_one": ModelSpec(partial(write_add_constant_model, features=4, constant=1.0), config=PLUS_ONE),
        "acc_pipe": ModelSpec(lambda folder: None, config=ACC_PIPE),  # an ensemble: plus_one, then acc
        "plain_pipe": ModelSpec(lambda folder: None, config=ACC_PIPE.replace('"acc"', '"plus_one"')),  # no sequences
    })
    (repo / "seeded" / "initial_state").mkdir()
    (repo / "seeded" / "initial_state" / "seed.bin").write_bytes(struct.pack("<4f", 10, 20, 30, 40))
    with ServerProcess(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    made = tc.InferenceServerClient(server.grpc_address)
    yield made
    made.close()


def request(value: float, module=tc, batch: bool = True) -> list:
    tensor = module.InferInput("INPUT0", [1, 4] if batch else [4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4) if batch else (4,), value, np.float32))
    return [tensor]


def step(client, model: str, sequence_id, value: float, start: bool = False, end: bool = False, **kwargs):
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    return client.infer(model, request(value, module, kwargs.pop("batch", True)), sequence_id=sequence_id,
                        sequence_start=start, sequence_end=end, **kwargs)


def total(result) -> float:
    return float(result.as_numpy("OUTPUT0").reshape(-1)[0])


def test_the_state_and_controls_follow_each_sequence(client) -> None:
    first = step(client, "acc", 11, 1.0, start=True)
    other = step(client, "acc", 22, 100.0, start=True)
    second = step(client, "acc", 11, 2.0)
    other_end = step(client, "acc", 22, 100.0, end=True)
    last = step(client, "acc", 11, 3.0, end=True)

    assert [total(r) for r in (first, second, last)] == [1.0, 3.0, 6.0]  # 11's running sum, untouched by 22's
    assert [total(r) for r in (other, other_end)] == [100.0, 200.0]
    seen = [(int(r.as_numpy("START_SEEN")[0, 0]), int(r.as_numpy("END_SEEN")[0, 0]), int(r.as_numpy("READY_SEEN")[0, 0]),
             int(r.as_numpy("ID_SEEN")[0, 0])) for r in (first, second, last)]
    assert seen == [(1, 0, 1, 11), (0, 0, 1, 11), (0, 1, 1, 11)]
    assert last.as_numpy("STATE_OUT") is None  # the state is the server's, not answered


def test_metadata_and_config_show_the_requests_tensors_and_the_sequence_batching(client) -> None:
    metadata = client.get_model_metadata("acc", as_json=True)
    config = client.get_model_config("acc", as_json=True)["config"]

    assert [t["name"] for t in metadata["inputs"]] == ["INPUT0"]  # controls and state are filled by the server
    assert "STATE_OUT" not in [t["name"] for t in metadata["outputs"]]
    batching = config["sequence_batching"]
    assert [c["name"] for c in batching["control_input"]] == ["START", "END", "READY", "CORRID"]
    assert batching["state"][0]["input_name"] == "STATE_IN" and batching["oldest"]["max_candidate_sequences"] == 64
    assert "dynamic_batching" not in config


def test_a_sequence_that_ended_or_never_started_is_refused(client) -> None:
    step(client, "acc", 33, 1.0, start=True, end=True)

    for sequence_id in (33, 34):
        with pytest.raises(InferenceServerException) as caught:
            step(client, "acc", sequence_id, 1.0)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"sequence {sequence_id} is not live" in caught.value.message()


def test_a_start_on_a_live_sequence_starts_it_again(client) -> None:
    step(client, "acc", 44, 5.0, start=True)
    step(client, "acc", 44, 5.0)

    assert total(step(client, "acc", 44, 1.0, start=True)) == 1.0
    assert total(step(client, "acc", 44, 1.0, end=True)) == 2.0


def test_requests_without_a_sequence_or_with_several_rows_are_refused(client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("acc", request(1.0))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "model 'acc' runs sequences: a request needs a sequence_id" in caught.value.message()

    rows = tc.InferInput("INPUT0", [2, 4], "FP32")
    rows.set_data_from_numpy(np.ones((2, 4), np.float32))
    with pytest.raises(InferenceServerException, match="carries one row"):
        client.infer("acc", [rows], sequence_id=55, sequence_start=True)
    with pytest.raises(InferenceServerException, match="sequence_id must be an integer"):
        step(client, "acc", "a-string", 1.0, start=True)  # the model takes its id as UINT64


def test_an_idle_sequence_is_released(client) -> None:
    step(client, "short", 66, 1.0, start=True)
    assert total(step(client, "short", 66, 1.0)) == 2.0  # within the idle time

    time.sleep(0.8)  # idle for longer than its 0.3 s

    with pytest.raises(InferenceServerException, match="sequence 66 is not live"):
        step(client, "short", 66, 1.0)


def test_live_sequences_are_bounded(client) -> None:
    step(client, "few", 1, 1.0, start=True)
    step(client, "few", 2, 1.0, start=True)

    with pytest.raises(InferenceServerException) as caught:
        step(client, "few", 3, 1.0, start=True)
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "holds 2 live sequences, its limit" in caught.value.message()
    step(client, "few", 1, 1.0, end=True)  # one ends: another may start
    assert total(step(client, "few", 3, 7.0, start=True, end=True)) == 7.0


def test_live_sequences_are_a_metric(client, server: ServerProcess) -> None:
    live = ("fleetserve_sequences_live", frozenset({("model", "acc"), ("version", "1")}))
    before = scrape_metrics(server.metrics_url)[live]
    step(client, "acc", 7001, 1.0, start=True)
    step(client, "acc", 7002, 1.0, start=True)

    assert scrape_metrics(server.metrics_url)[live] == before + 2
    step(client, "acc", 7001, 1.0, end=True)
    step(client, "acc", 7002, 1.0, end=True)
    assert scrape_metrics(server.metrics_url)[live] == before


def test_the_initial_state_comes_from_its_file(client) -> None:
    assert np.array_equal(step(client, "seeded", 77, 1.0, start=True).as_numpy("OUTPUT0"), [[11, 21, 31, 41]])


def test_a_model_that_does_not_batch_runs_sequences_too(client) -> None:
    first = step(client, "flat", 88, 2.0, start=True, batch=False)
    second = step(client, "flat", 88, 3.0, end=True, batch=False)

    assert (total(first), total(second)) == (2.0, 5.0)
    assert second.as_numpy("END_SEEN").tolist() == [1]


def test_concurrent_sequences_batch_together_and_keep_their_own_sums(client, server: ServerProcess) -> None:
    def stats() -> dict:
        return client.get_inference_statistics("acc", as_json=True)["model_stats"][0]

    before = stats()

    def run(sequence_id: int) -> list[float]:
        with tc.InferenceServerClient(server.grpc_address) as own:
            return [total(step(own, "acc", sequence_id, float(sequence_id), start=i == 0, end=i == 4))
                    for i in range(5)]

    with ThreadPoolExecutor(16) as pool:
        sums = dict(zip(range(1000, 1016), pool.map(run, range(1000, 1016))))

    assert all(sums[s] == [s * k for k in range(1, 6)] for s in sums)
    after = stats()
    runs = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 80
    assert runs < 80  # requests of different sequences shared batches


def test_the_stream_keeps_each_sequences_order(client) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for k in range(4):
            for sequence_id in (501, 502):
                client.async_stream_infer("acc", request(1.0), request_id=f"{sequence_id}-{k}",
                                          sequence_id=sequence_id, sequence_start=k == 0, sequence_end=k == 3)
        got = [answers.get(timeout=20) for _ in range(8)]
    finally:
        client.stop_stream()

    assert [error for _, error in got] == [None] * 8
    sums = {result.get_response().id: total(result) for result, _ in got}
    assert sums == {f"{s}-{k}": k + 1.0 for s in (501, 502) for k in range(4)}


def ensemble_request(value: float) -> list:
    tensor = tc.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return [tensor]


def test_an_ensemble_carries_each_request_s_sequence_to_its_sequence_step(client) -> None:
    def pipe(sequence_id: int, value: float, **flags) -> float:
        result = client.infer("acc_pipe", ensemble_request(value), sequence_id=sequence_id, **flags)
        return float(result.as_numpy("OUT")[0, 0])

    got = [pipe(71, 1.0, sequence_start=True), pipe(72, 10.0, sequence_start=True), pipe(71, 2.0),
           pipe(72, 10.0, sequence_end=True), pipe(71, 3.0, sequence_end=True)]

    assert got == [2.0, 11.0, 5.0, 22.0, 9.0]  # each sequence's running sum of its inputs plus one
    with pytest.raises(InferenceServerException, match="sequence 71 is not live"):
        pipe(71, 1.0)  # ended at the acc step


def test_an_ensemble_runs_a_sequence_s_requests_in_the_order_they_came(client) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for k in range(12):  # sent without waiting; each odd one with priority 1, which plus_one answers first
            client.async_stream_infer("acc_pipe", ensemble_request(float(k)), request_id=str(k), sequence_id=81,
                                      sequence_start=k == 0, sequence_end=k == 11, priority=2 - k % 2)
        got = [answers.get(timeout=20) for _ in range(12)]
    finally:
        client.stop_stream()

    assert [error for _, error in got] == [None] * 12
    sums = {int(result.get_response().id): float(result.as_numpy("OUT")[0, 0]) for result, _ in got}
    assert sums == {k: sum(j + 1.0 for j in range(k + 1)) for k in range(12)}


def test_an_ensemble_with_a_sequence_step_needs_a_sequence_and_one_without_refuses_it(client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("acc_pipe", ensemble_request(1.0))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert ("model 'acc_pipe' runs sequences (its step(s) running acc): a request needs a sequence_id"
            in caught.value.message())
    with pytest.raises(InferenceServerException) as caught:
        client.infer("plain_pipe", ensemble_request(1.0), sequence_id=5, sequence_start=True)
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "model 'plain_pipe' is an ensemble none of whose steps runs sequences" in caught.value.message()


def test_rest_carries_sequences(server: ServerProcess) -> None:
    rest = th.InferenceServerClient(server.http_address)
    try:
        assert total(step(rest, "acc", 909, 4.0, start=True)) == 4.0
        assert total(step(rest, "acc", 909, 4.0, end=True)) == 8.0
        with pytest.raises(InferenceServerException, match="sequence 909 is not live"):
            step(rest, "acc", 909, 4.0)
    finally:
        rest.close()


@pytest.mark.parametrize("config, says", [
    ("max_batch_size: 8\nsequence_batching { control_input [ { name: \"NOPE\", control [ { kind: CONTROL_SEQUENCE_START,"
     " int32_false_true: [ 0, 1 ] } ] } ] }", 'sequence_batching.control_input[0]: "NOPE" is not an input of the model'),
    ("max_batch_size: 8\nsequence_batching { control_input [ { name: \"START\", control [ { kind: CONTROL_SEQUENCE_START,"
     " fp32_false_true: [ 0, 1 ] } ] } ] }", 'sets a TYPE_FP32 value, but the model input "START" is TYPE_INT32'),
])
def test_a_sequence_config_that_does_not_fit_the_model_is_unavailable_saying_why(
        tmp_path: Path, config: str, says: str) -> None:
    repo = write_model_repository(tmp_path, {"bad": ModelSpec(write_accumulator_model, config=config)})
    with ServerProcess(repo) as proc, tc.InferenceServerClient(proc.grpc_address) as own:
        index = {m["name"]: m for m in own.get_model_repository_index(as_json=True)["models"]}
        assert index["bad"]["state"] == "UNAVAILABLE" and says in index["bad"]["reason"]


async def test_a_rollout_sends_every_request_of_a_sequence_to_one_version(tmp_path: Path) -> None:
    """In a fleet's canary the split is a function of the request id; a sequence's requests carry different ids,
    so they are split by their sequence instead, and each finds its state."""
    config = accumulator_config() + "\nversion_policy { all { } }"
    repo = write_model_repository(tmp_path, {"acc": ModelSpec(write_accumulator_model, config=config,
                                                               versions=(1, 2))})
    app = App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0))
    await app.start()
    try:
        router = TrafficRouter()
        router.set("acc", make_split({1: 50, 2: 50}))
        app.dataplane._router = router
        versions: dict[int, set[str]] = {}
        for sequence_id in range(1, 21):
            for k in range(4):
                data = np.full((1, 4), 1.0, np.float32)
                answer = await app.dataplane.infer(InferRequest(
                    "acc", id=f"r{sequence_id}-{k}", inputs=[InputTensor("INPUT0", "FP32", (1, 4), data)],
                    parameters={"sequence_id": sequence_id, "sequence_start": k == 0, "sequence_end": k == 3}))
                assert answer.outputs[0].data.tolist() == [[k + 1.0] * 4]
                versions.setdefault(sequence_id, set()).add(answer.model_version)
        assert all(len(v) == 1 for v in versions.values())
        assert {v for vs in versions.values() for v in vs} == {"1", "2"}  # the split still splits sequences
    finally:
        await app.stop()


async def sequence_step(app: App, sequence_id: int, value: float, start: bool = False, end: bool = False,
                        version: str = ""):
    data = np.full((1, 4), value, np.float32)
    return await app.dataplane.infer(InferRequest(
        "acc", model_version=version, inputs=[InputTensor("INPUT0", "FP32", (1, 4), data)],
        parameters={"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}))


def sums(answer) -> float:
    return float(answer.outputs[0].data[0, 0])


async def wait_for(condition, timeout_s: float = 10.0) -> float:
    """Seconds until ``condition()`` held (it must within ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        assert loop.time() - started < timeout_s
        await asyncio.sleep(0.02)
    return loop.time() - started


def sequence_app(repo: Path, **settings) -> App:
    return App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0,
                        model_control_mode=ControlMode.EXPLICIT, load_models=("acc",), **settings))


async def test_a_reload_lets_live_sequences_finish_on_the_version_they_started_on(tmp_path: Path) -> None:
    config = accumulator_config(idle_us=1_000_000)
    repo = write_model_repository(tmp_path, {"acc": ModelSpec(write_accumulator_model, config=config)})
    app = sequence_app(repo)
    await app.start()
    try:
        assert sums(await sequence_step(app, 11, 1.0, start=True)) == 1.0
        assert sums(await sequence_step(app, 11, 2.0)) == 3.0
        assert sums(await sequence_step(app, 44, 1.0, start=True)) == 1.0  # left idle: released after 1 s
        old = app.registry.get("acc")
        (repo / "acc" / "config.pbtxt").write_text(accumulator_config(idle_us=4_000_000))  # new files: a reload
        await asyncio.wait_for(app.dataplane.load_model("acc"), 5)  # answered at once, not after the sequence

        new = app.registry.get("acc")
        assert new is not old and app.registry.retiring.servables() == [old]
        assert sums(await sequence_step(app, 11, 3.0)) == 6.0  # the live sequence goes on, on its state
        assert sums(await sequence_step(app, 22, 5.0, start=True)) == 5.0  # a new one starts on the new copy
        assert new.holds_sequence(22) and not new.holds_sequence(11) and old.holds_sequence(11)
        assert sums(await sequence_step(app, 44, 7.0, start=True)) == 7.0  # 44 started again: on the new copy,
        assert sums(await sequence_step(app, 44, 1.0, end=True)) == 8.0  # where it goes on (the old holds 1.0)
        assert sums(await sequence_step(app, 11, 4.0, end=True)) == 10.0

        await wait_for(lambda: not app.registry.retiring.servables())  # its last sequence ended: it closed
        with pytest.raises(InvalidInput, match="sequence 11 is not live"):
            await sequence_step(app, 11, 1.0)
        assert sums(await sequence_step(app, 22, 1.0, end=True)) == 6.0
    finally:
        await app.stop()


async def test_a_version_leaving_service_ends_sequences_still_live_after_the_drain_timeout(tmp_path: Path) -> None:
    config = accumulator_config() + "\nversion_policy { latest { num_versions: 1 } }"
    repo = write_model_repository(tmp_path, {"acc": ModelSpec(write_accumulator_model, config=config)})
    app = sequence_app(repo, drain_timeout_s=0.5)
    await app.start()
    try:
        await sequence_step(app, 11, 1.0, start=True)
        write_accumulator_model(repo / "acc" / "2" / "model.onnx")  # version 2: version 1 leaves service
        await asyncio.wait_for(app.dataplane.load_model("acc"), 5)
        assert app.registry.get("acc").version == 2
        assert sums(await sequence_step(app, 11, 2.0)) == 3.0  # still on version 1, idle time 5 s

        assert await wait_for(lambda: not app.registry.retiring.servables()) < 3.0  # ended at the 0.5 s bound
        with pytest.raises(InvalidInput, match="sequence 11 is not live"):
            await sequence_step(app, 11, 1.0)
    finally:
        await app.stop()


async def test_shutdown_does_not_wait_for_sequences_a_replaced_version_holds(tmp_path: Path) -> None:
    repo = write_model_repository(tmp_path, {"acc": ModelSpec(write_accumulator_model, config=accumulator_config())})
    app = sequence_app(repo)  # drain timeout 30 s, sequences idle for 5 s
    await app.start()
    stopped = False
    try:
        await sequence_step(app, 11, 1.0, start=True)
        (repo / "acc" / "config.pbtxt").write_text(accumulator_config(idle_us=4_000_000))
        await app.dataplane.load_model("acc")
        await sequence_step(app, 22, 1.0, start=True)  # and one on the version serving
        assert len(app.registry.retiring.servables()) == 1

        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(app.stop(), 10)
        stopped = True
        assert loop.time() - started < 3.0  # no request can come: neither copy waits for its sequences
    finally:
        if not stopped:
            await app.stop()
