"""Scheduling end to end: a real fleetserve, real tritonclient calls, priorities, timeouts and shedding.

The "prio" model waits 1 s to form a batch, so requests sit in its queue long
enough to fill it, time out, or be cancelled by their caller; "impossible"
declares a latency objective no kernel can meet, so once its run-time
estimate has warmed up every request is shed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository, write_slow_model
from server.testing import ServerProcess

PRIO_CONFIG = """
max_batch_size: 8
dynamic_batching {
  max_queue_delay_microseconds: 1000000
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 1 allow_timeout_override: true }
  priority_queue_policy { key: 1 value { max_queue_size: 4 } }
}
"""

# Triton's preferred sizes without a queue delay: a burst queued behind a running batch goes in the
# largest preferred batch it forms (4 or 8 rows), or whole when it forms none (1-3 rows).
PREFERRED_CONFIG = """
max_batch_size: 16
dynamic_batching { preferred_batch_size: [ 4, 8 ] }
"""

IMPOSSIBLE_CONFIG = """
max_batch_size: 8
dynamic_batching { }
parameters { key: "latency_slo_ms" value { string_value: "0.001" } }
"""


# An ensemble of one step through "prio": the request's priority and timeout reach the step.
PRIO_PIPE_CONFIG = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "prio" model_version: -1
  input_map { key: "INPUT0" value: "IN" } output_map { key: "OUTPUT0" value: "OUT" } } ] }
"""


@pytest.fixture(scope="module")
def scheduling_server(tmp_path_factory: pytest.TempPathFactory):
    add4 = partial(write_add_constant_model, features=4)
    slow = partial(write_slow_model, features=256, repeats=64)
    repo = write_model_repository(
        tmp_path_factory.mktemp("scheduling"),
        {"prio": ModelSpec(add4, config=PRIO_CONFIG), "impossible": ModelSpec(add4, config=IMPOSSIBLE_CONFIG),
         "preferred": ModelSpec(slow, config=PREFERRED_CONFIG),
         "prio_pipe": ModelSpec(lambda folder: None, config=PRIO_PIPE_CONFIG)},
    )
    with ServerProcess(repo) as server:
        yield server


@pytest.fixture(scope="module")
def client(scheduling_server):
    c = tc.InferenceServerClient(scheduling_server.grpc_address)
    yield c
    c.close()


def inputs(name: str = "INPUT0") -> list[tc.InferInput]:
    tensor = tc.InferInput(name, [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return [tensor]


def rows_inferred(client: tc.InferenceServerClient, model: str) -> int:
    return client.get_inference_statistics(model).model_stats[0].inference_count


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_a_priority_outside_the_levels_is_invalid_argument_naming_the_range(client):
    status, message = status_of(lambda: client.infer("prio", inputs(), priority=3))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "priority 3 is outside 0..2 (1 is the highest; 0 uses the default, 2)" in message


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("priority", "string_param", "parameter 'priority' must be an integer >= 0, not 'high'"),
        ("timeout", "bool_param", "parameter 'timeout' must be an integer of microseconds >= 0, not True"),
    ],
)
def test_scheduling_parameters_of_the_wrong_type_are_invalid_argument(scheduling_server, name, value, expected):
    request = service_pb2.ModelInferRequest(model_name="prio")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0] * 4)
    setattr(request.parameters[name], value, "high" if value == "string_param" else True)
    with grpc.insecure_channel(scheduling_server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("timeout", 10**30, "parameter 'timeout' is 1000000000000000000000000000000, above 18446744073709551615, "
                            "the largest it takes (an unsigned 64-bit integer in Triton's protocol)"),
        ("timeout", 10**400, "parameter 'timeout' is a 401-digit number, above 18446744073709551615"),
        ("priority", 2**64, "parameter 'priority' is 18446744073709551616, above 18446744073709551615"),
    ],
    ids=["timeout-1e30", "timeout-401-digits", "priority-2**64"],
)
def test_scheduling_parameters_beyond_uint64_over_rest_are_invalid_argument(scheduling_server, name, value, expected):
    """JSON integers have no bound; Triton's parameters are uint64 (a timeout beyond them was an internal error)."""
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}],
            "parameters": {name: value}}
    reply = requests.post(f"{scheduling_server.http_url}/v2/models/prio/infer", data=json.dumps(body), timeout=10)
    assert reply.status_code == 400
    assert expected in reply.json()["error"]


def test_a_full_level_answers_resource_exhausted_at_once_while_a_higher_level_is_served(client):
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(client.infer, "prio", inputs())  # default level 2: waits for its 1 s delay
        time.sleep(0.3)
        started = time.monotonic()
        status, message = status_of(lambda: client.infer("prio", inputs(), priority=2))
        assert time.monotonic() - started < 0.5  # refused at once, not after the queue delay
        assert status == "StatusCode.RESOURCE_EXHAUSTED"
        assert "the queue of priority level 2 is full (1 requests waiting); retry later" in message
        urgent = pool.submit(client.infer, "prio", inputs(), priority=1)
        for result in (waiting.result(10), urgent.result(10)):
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 4), 2.0, np.float32))


def test_a_request_timeout_rejects_it_from_the_queue_on_time(client):
    before = rows_inferred(client, "prio")
    started = time.monotonic()
    status, message = status_of(lambda: client.infer("prio", inputs(), timeout=50_000))  # 50 ms, in us
    assert time.monotonic() - started < 0.8  # well before the 1 s batching delay
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert "longer than its queue timeout of 50.0 ms at priority level 2; it was not executed" in message
    assert rows_inferred(client, "prio") == before


def test_a_request_timeout_is_on_time_behind_a_request_already_waiting(client):
    before = rows_inferred(client, "prio")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.infer, "prio", inputs(), priority=1)  # waits for its 1 s delay
        time.sleep(0.2)
        started = time.monotonic()
        status, message = status_of(lambda: client.infer("prio", inputs(), timeout=50_000))
        assert time.monotonic() - started < 0.5  # not when the batcher wakes for the first one, 0.8 s later
        assert status == "StatusCode.DEADLINE_EXCEEDED"
        assert "longer than its queue timeout of 50.0 ms at priority level 2; it was not executed" in message
        waiting.result(10)
    assert rows_inferred(client, "prio") == before + 1


def test_an_ensemble_request_s_priority_reaches_its_steps(client):
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(client.infer, "prio", inputs())  # default level 2 (size 1): full for its 1 s delay
        time.sleep(0.3)
        started = time.monotonic()
        status, message = status_of(lambda: client.infer("prio_pipe", inputs("IN")))  # the step: level 2 too
        assert time.monotonic() - started < 0.5
        assert status == "StatusCode.RESOURCE_EXHAUSTED"
        assert "model 'prio_pipe' version 1, step 1 (model 'prio')" in message
        assert "the queue of priority level 2 is full" in message
        urgent = pool.submit(client.infer, "prio_pipe", inputs("IN"), priority=1)  # its step: level 1, room for 4
        np.testing.assert_array_equal(urgent.result(10).as_numpy("OUT"), np.full((1, 4), 2.0, np.float32))
        waiting.result(10)


def test_an_ensemble_request_s_timeout_reaches_its_steps(client):
    before = rows_inferred(client, "prio")
    started = time.monotonic()
    status, message = status_of(lambda: client.infer("prio_pipe", inputs("IN"), timeout=50_000))
    assert time.monotonic() - started < 0.8  # the step left prio's queue at 50 ms, before its 1 s delay
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert "step 1 (model 'prio')" in message
    assert "longer than its queue timeout of 50.0 ms at priority level 2; it was not executed" in message
    assert rows_inferred(client, "prio") == before


def test_a_priority_a_step_s_model_lacks_runs_at_that_model_s_default_level(client):
    with ThreadPoolExecutor(1) as pool:
        beyond = pool.submit(client.infer, "prio_pipe", inputs("IN"), priority=3)  # prio has 2 levels
        time.sleep(0.3)
        status, message = status_of(lambda: client.infer("prio", inputs()))  # the step holds level 2's one place
        assert status == "StatusCode.RESOURCE_EXHAUSTED"
        assert "the queue of priority level 2 is full" in message
        np.testing.assert_array_equal(beyond.result(10).as_numpy("OUT"), np.full((1, 4), 2.0, np.float32))


def cancel_while_queued(stub, model: str, input_name: str) -> service_pb2.ModelInferRequest:
    """Send one request for ``model`` and cancel it 0.3 s later, while it waits for prio's 1 s delay; the request."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=input_name, datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0] * 4)
    gone = stub.ModelInfer.future(request)
    time.sleep(0.3)
    gone.cancel()
    time.sleep(0.1)
    return request


def test_a_cancelled_caller_is_removed_from_the_queue(client, scheduling_server):
    before = rows_inferred(client, "prio")
    with grpc.insecure_channel(scheduling_server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = cancel_while_queued(stub, "prio", "INPUT0")
        kept = stub.ModelInfer(request, timeout=10)  # waits its own 1 s delay, then runs alone
    assert list(kept.outputs[0].shape) == [1, 4]
    assert rows_inferred(client, "prio") == before + 1  # the cancelled request never ran


def test_a_cancelled_ensemble_request_s_step_leaves_its_model_s_queue(client, scheduling_server):
    before = rows_inferred(client, "prio")
    with grpc.insecure_channel(scheduling_server.grpc_address) as channel:
        cancel_while_queued(service_pb2_grpc.GRPCInferenceServiceStub(channel), "prio_pipe", "IN")
        kept = client.infer("prio", inputs())  # level 2's one place is free again: queued, not refused
    np.testing.assert_array_equal(kept.as_numpy("OUTPUT0"), np.full((1, 4), 2.0, np.float32))
    assert rows_inferred(client, "prio") == before + 1  # the cancelled step never ran


def test_without_a_delay_a_burst_goes_in_preferred_batches_not_whole(client):
    def one_row(_: int) -> None:
        tensor = tc.InferInput("INPUT0", [1, 256], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 256), np.float32))
        client.infer("preferred", [tensor])

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one_row, range(48)))
    stats = client.get_inference_statistics("preferred").model_stats[0]
    sizes = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
    assert stats.inference_count == 48
    assert set(sizes) <= {1, 2, 3, 4, 8}, sizes  # never the whole queue (e.g. 10 rows), nor 5-7 rows


def test_requests_that_cannot_meet_the_latency_objective_are_shed_with_a_clear_message(client):
    outcomes = []
    for _ in range(12):  # the first few run while the run-time estimate warms up
        try:
            client.infer("impossible", inputs())
            outcomes.append("ok")
        except InferenceServerException as exc:
            outcomes.append((exc.status(), exc.message()))
    assert outcomes[0] == "ok"
    shed = outcomes[-1]
    assert shed[0] == "StatusCode.RESOURCE_EXHAUSTED"
    assert "cannot meet the model's latency objective of 0.001 ms (p99): even alone on an idle instance" in shed[1]
    assert "raise latency_slo_ms if this lasts" in shed[1]
    assert "it was not queued" in shed[1]


def test_the_model_config_reports_the_scheduling_options(client):
    config = client.get_model_config("prio").config
    db = config.dynamic_batching
    assert (db.priority_levels, db.default_priority_level) == (2, 2)
    assert db.default_queue_policy.max_queue_size == 1 and db.default_queue_policy.allow_timeout_override
    assert db.priority_queue_policy[1].max_queue_size == 4
    slo = client.get_model_config("impossible").config.parameters["latency_slo_ms"].string_value
    assert slo == "0.001"
