"""Triton's logging extension over the wire: tritonclient's get/update_log_settings on both transports,
raw REST, and the server's own output as the proof (DEBUG records appear and stop)."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc

from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server.testing import ServerProcess, wait_until

BATCHING = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n"
STARTED = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
           "log_format": "text"}
DEBUG_LINE = " DEBUG batching.batcher: model 'batching'"  # the scheduler's estimate, logged at DEBUG


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_repository(tmp_path_factory.mktemp("log-settings-repo"), {
        "batching": ModelSpec(partial(write_add_constant_model, features=4), config=BATCHING)})


@pytest.fixture(scope="module")
def server(repository):
    with ServerProcess(repository) as proc:  # --log-level INFO, --log-format text: the defaults
        yield proc


@pytest.fixture
def clients(server):
    """Both tritonclients; each test leaves the server's log settings as it found them."""
    g, h = tc.InferenceServerClient(server.grpc_address), th.InferenceServerClient(server.http_address)
    yield g, h
    h.update_log_settings({k: v for k, v in STARTED.items() if k != "log_file"})
    assert h.get_log_settings() == STARTED
    g.close()
    h.close()


def grpc_settings(client: tc.InferenceServerClient, settings: dict | None = None) -> dict:
    """The gRPC answer as plain values: {name: bool, int or str}."""
    reply = client.update_log_settings(settings) if settings is not None else client.get_log_settings()
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in reply.settings.items()}


def debug_since(server, seen: int) -> bool:
    """Whether the scheduler's DEBUG line is among the server's lines from the ``seen``-th on."""
    return any(DEBUG_LINE in line for line in server.lines[seen:])


def infer_some(server) -> None:
    client = th.InferenceServerClient(server.http_address)
    x = th.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    for _ in range(5):
        client.infer("batching", [x])
    client.close()


def test_get_reports_the_start_up_settings_on_both_transports_and_the_extension_is_listed(clients):
    g, h = clients
    assert h.get_log_settings() == STARTED
    assert grpc_settings(g) == STARTED
    assert "logging" in h.get_server_metadata()["extensions"]
    assert "logging" in g.get_server_metadata().extensions


def test_verbose_on_makes_debug_lines_appear_and_off_stops_them_each_transport_seeing_the_other(server, clients):
    g, h = clients
    seen = len(server.lines)
    infer_some(server)
    time.sleep(1.2)  # the estimate is logged at most once a second
    infer_some(server)
    assert not debug_since(server, seen)  # INFO: the scheduler computes its estimate but logs nothing

    assert h.update_log_settings({"log_verbose_level": 1}) == {**STARTED, "log_verbose_level": 1}
    assert grpc_settings(g) == {**STARTED, "log_verbose_level": 1}
    assert wait_until(lambda: infer_some(server) or debug_since(server, seen), timeout_s=20), server.log[-3000:]
    assert "WARNING ops.log_settings: log settings changed over the API: log_verbose_level 0 -> 1" in server.log

    assert grpc_settings(g, {"log_verbose_level": 0}) == STARTED
    assert h.get_log_settings() == STARTED
    assert server.wait_for_log("log_verbose_level 1 -> 0")
    seen = len(server.lines)
    deadline = time.monotonic() + 2.5  # past the estimate's once-a-second pace, twice
    while time.monotonic() < deadline:
        infer_some(server)
        time.sleep(0.1)
    assert not [line for line in server.lines[seen:] if " DEBUG " in line], server.lines[seen:]


def test_switches_set_over_grpc_are_read_over_rest(server, clients):
    g, h = clients
    wanted = {**STARTED, "log_info": False, "log_warning": False, "log_verbose_level": 1}
    seen = len(server.lines)
    assert grpc_settings(g, {"log_info": False, "log_warning": False, "log_verbose_level": 1}) == wanted
    assert h.get_log_settings() == wanted
    assert wait_until(lambda: infer_some(server) or debug_since(server, seen), timeout_s=20), server.log[-3000:]
    # Said while warnings were still on, before they went off.
    assert "log_info true -> false, log_warning true -> false, log_verbose_level 0 -> 1" in server.log


@pytest.mark.parametrize("body, says", [
    ({"log_verbose": 1}, "unknown log setting 'log_verbose'; the log settings are log_file, log_info, "),
    ({"log_info": "false"}, "log setting 'log_info' must be a boolean (JSON true or false, gRPC bool_param), got a "
                            "string ('false')"),
    ({"log_verbose_level": -1}, "log setting 'log_verbose_level' must be from 0 to 4294967295, got -1"),
    ({"log_verbose_level": "1"}, "log setting 'log_verbose_level' must be an unsigned integer"),
    ({"log_file": "/tmp/fleetserve.log"}, "log_file cannot be changed over the API (asked: '/tmp/fleetserve.log'): a "
                                          "client must not make the server write to a path of its choosing"),
    ({"log_format": "ISO8601"}, "log_format 'ISO8601' cannot be used: this server writes 'text' logs"),
    ({"log_verbose_level": 1, "log_info": False, "log_format": "json"}, "log_format 'json' cannot be used"),
    ({"log_error": False, "bogus": True}, "unknown log setting 'bogus'"),
], ids=["unknown", "bool-as-string", "negative", "level-as-string", "log-file", "iso8601", "atomic", "atomic-unknown"])
def test_a_bad_post_is_400_saying_why_and_changes_nothing(server, clients, body, says):
    g, h = clients
    with pytest.raises(th.InferenceServerException) as err:
        h.update_log_settings(body)
    assert err.value.status() == "400" and says in err.value.message(), err.value.message()
    reply = requests.post(server.http_url + "/v2/logging", json=body, timeout=10)  # what curl sees
    assert reply.status_code == 400 and says in reply.json()["error"], reply.text
    assert h.get_log_settings() == STARTED and grpc_settings(g) == STARTED


@pytest.mark.parametrize("settings, says", [
    ({"log_verbose": 1}, "unknown log setting 'log_verbose'"),
    ({"log_file": "/tmp/fleetserve.log"}, "log_file cannot be changed over the API"),
    ({"log_format": "ISO8601", "log_verbose_level": 1}, "log_format 'ISO8601' cannot be used"),
], ids=["unknown", "log-file", "iso8601-atomic"])
def test_a_bad_grpc_request_is_invalid_argument_saying_why_and_changes_nothing(clients, settings, says):
    g, h = clients
    with pytest.raises(tc.InferenceServerException) as err:
        g.update_log_settings(settings)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and says in err.value.message(), err.value.message()
    assert grpc_settings(g) == STARTED


def test_a_grpc_value_of_the_wrong_type_is_invalid_argument(server, clients):
    """tritonclient always sends log_info as bool_param; another client may not."""
    g, _ = clients
    request = service_pb2.LogSettingsRequest()
    request.settings["log_info"].string_param = "false"
    request.settings["log_verbose_level"].uint32_param = 1
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).LogSettings(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "log setting 'log_info' must be a boolean (JSON true or false, gRPC bool_param), got a string ('false')" \
        in err.value.details()
    assert grpc_settings(g) == STARTED


def test_raw_rest_answers_the_whole_object_and_refuses_what_is_not_one(server, clients):
    url = server.http_url + "/v2/logging"
    reply = requests.post(url, data=b'{"log_verbose_level":1}', timeout=10)
    assert reply.status_code == 200 and reply.json() == {**STARTED, "log_verbose_level": 1}, reply.text
    assert requests.post(url, data=b"", timeout=10).json() == {**STARTED, "log_verbose_level": 1}  # {}: a read
    reply = requests.post(url, data=b'{"log_verbose_level":0, "log_info": null}', timeout=10)
    assert reply.status_code == 200 and reply.json() == STARTED, reply.text
    reply = requests.post(url, data=b"[]", timeout=10)
    assert reply.status_code == 400 and reply.json()["error"] == "the request body must be a JSON object"
    reply = requests.put(url, data=b"{}", timeout=10)
    assert reply.status_code == 405, reply.text
    assert requests.get(url, timeout=10).json() == STARTED


def test_trace_settings_are_their_own_and_a_log_change_leaves_them_as_they_were(server, clients):
    """The trace extension (server/tests/test_trace_settings_api.py) is served beside this one, not by it."""
    g, h = clients
    before = h.get_trace_settings()
    assert before["trace_level"] == ["OFF"]  # this server runs without --trace
    h.update_log_settings({"log_verbose_level": 1})
    assert h.get_trace_settings() == before
    assert {name: list(v.value) for name, v in g.get_trace_settings().settings.items()}["trace_level"] == ["OFF"]
    with pytest.raises(th.InferenceServerException) as err:
        h.update_log_settings({"trace_rate": "2"})
    assert err.value.status() == "400" and "unknown log setting 'trace_rate'" in err.value.message()


def records(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_server_started_at_debug_with_json_logs_says_so_keeps_its_format_and_can_drop_info_alone(repository):
    """With JSON logs every request writes an INFO line (fleetserve.request): switching log_info off stops
    those while the DEBUG lines, below INFO, go on."""
    with ServerProcess(repository, "--log-level", "DEBUG", "--log-format", "json") as server:
        h = th.InferenceServerClient(server.http_address)
        g = tc.InferenceServerClient(server.grpc_address)
        started = {**STARTED, "log_verbose_level": 1, "log_format": "json"}
        assert h.get_log_settings() == started and grpc_settings(g) == started
        assert h.update_log_settings({"log_format": "default"}) == started  # Triton's name for the start-up one
        assert grpc_settings(g, {"log_format": "json"}) == started
        with pytest.raises(th.InferenceServerException) as err:
            h.update_log_settings({"log_format": "text"})
        assert err.value.status() == "400" and "this server writes 'json' logs" in err.value.message()

        infer_some(server)
        assert wait_until(lambda: any(r["logger"] == "fleetserve.request" for r in records(server.lines)))
        assert grpc_settings(g, {"log_info": False}) == {**started, "log_info": False}
        assert server.wait_for_log("log settings changed over the API: log_info true -> false")
        seen = len(server.lines)  # every line written before the change has been read by now
        deadline = time.monotonic() + 2.5  # past the estimate's once-a-second pace, twice
        while time.monotonic() < deadline:
            infer_some(server)
            time.sleep(0.1)
        after = records(server.lines[seen:])
        assert not [r for r in after if r["level"] == "INFO"], after
        assert [r for r in after if r["level"] == "DEBUG" and r["logger"] == "batching.batcher"], after
        h.close()
        g.close()
