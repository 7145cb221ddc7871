"""Every error class through both transports: the gRPC status and the HTTP status come from one code.

Each case makes the same mistake over gRPC and over REST against one real server and checks
both statuses against the two tables (server/grpc_errors.py, server/http_errors.py) and that
the messages agree. CANCELLED cannot reach a caller that left, so it is checked where it is
recorded: the requests-by-outcome metric.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ops.errors import Code
from server.grpc_errors import GRPC_STATUS
from server.http_errors import HTTP_STATUS
from server.testing import scrape_metrics


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def grpc_infer(model, name="INPUT0", features=16, shape=None):
    msg = service_pb2.ModelInferRequest(model_name=model)
    msg.inputs.add(name=name, datatype="FP32", shape=shape or [1, features])
    msg.raw_input_contents.append(bytes(4 * features))
    return msg


def http_infer(model, name="INPUT0", features=16, shape=None, parameters=None):
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": shape or [1, features], "data": [0.0] * features}]}
    if parameters:
        body["parameters"] = parameters
    return "POST", f"/v2/models/{model}/infer", json.dumps(body)


CASES = {
    "unknown model": (Code.NOT_FOUND, lambda s: s.ModelInfer(grpc_infer("nope")), http_infer("nope")),
    "unknown version": (Code.NOT_FOUND,
                        lambda s: s.ModelInfer(service_pb2.ModelInferRequest(model_name="dense", model_version="9")),
                        ("POST", "/v2/models/dense/versions/9/infer", "{\"inputs\": []}")),
    # int() refuses over 4,300 digits: was INTERNAL / 500 with a traceback, on every endpoint naming a version.
    "version too long to be one": (
        Code.NOT_FOUND, lambda s: s.ModelStatistics(service_pb2.ModelStatisticsRequest(name="dense", version="9" * 5000)),
        ("GET", f"/v2/models/dense/versions/{'9' * 5000}/stats", None)),
    "metadata of unknown model": (Code.NOT_FOUND, lambda s: s.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope")),
                                  ("GET", "/v2/models/nope", None)),
    "model failed to load": (Code.UNAVAILABLE, lambda s: s.ModelInfer(grpc_infer("corrupt")), http_infer("corrupt")),
    "wrong input name": (Code.INVALID_ARGUMENT, lambda s: s.ModelInfer(grpc_infer("dense", name="WRONG")),
                         http_infer("dense", name="WRONG")),
    "wrong shape": (Code.INVALID_ARGUMENT, lambda s: s.ModelInfer(grpc_infer("dense", features=15)),
                    http_infer("dense", features=15)),
    # Shapes numpy cannot give an array: refused as the caller's error, not failed as INTERNAL while decoding.
    "too many dimensions": (Code.INVALID_ARGUMENT,
                            lambda s: s.ModelInfer(grpc_infer("dense", features=1, shape=[1] * 70)),
                            http_infer("dense", features=1, shape=[1] * 70)),
    "too many elements": (Code.INVALID_ARGUMENT,
                          lambda s: s.ModelInfer(grpc_infer("dense", features=0, shape=[1 << 62, 0])),
                          http_infer("dense", features=0, shape=[1 << 62, 0])),
    "kernel failure": (Code.INTERNAL, lambda s: s.ModelInfer(grpc_infer("fragile", features=4)),
                       http_infer("fragile", features=4)),
    "control outside explicit mode": (
        Code.UNIMPLEMENTED, lambda s: s.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="dense")),
        ("POST", "/v2/repository/models/dense/unload", "")),
}


def test_the_tables_are_total_and_agree_with_google_rpc():
    assert set(HTTP_STATUS) == set(Code) and set(GRPC_STATUS) == set(Code)
    assert all(GRPC_STATUS[code].value[0] == code.value for code in Code)
    assert {c.name: HTTP_STATUS[c] for c in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED,
                                             Code.CANCELLED, Code.INTERNAL, Code.UNIMPLEMENTED, Code.UNAVAILABLE,
                                             Code.DEADLINE_EXCEEDED)} == {
        "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499,
        "INTERNAL": 500, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_error_same_code_on_both_transports(server, stub, case):
    code, grpc_call, (method, path, body) = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(stub)
    reply = requests.request(method, server.http_url + path, data=body, timeout=30)
    assert err.value.code() == GRPC_STATUS[code], err.value.details()
    assert reply.status_code == HTTP_STATUS[code], reply.text
    assert reply.json()["error"] == err.value.details()


def test_a_non_boolean_unload_dependents_is_refused_on_both_transports(server, stub):
    """As Triton: the parameter is a boolean (a bool_param over gRPC), refused before anything is done."""
    request = service_pb2.RepositoryModelUnloadRequest(model_name="dense")
    request.parameters["unload_dependents"].string_param = "yes"
    with pytest.raises(grpc.RpcError) as err:  # was: UNIMPLEMENTED here, the parameter never looked at
        stub.RepositoryModelUnload(request)
    reply = requests.post(server.http_url + "/v2/repository/models/dense/unload",
                          data='{"parameters": {"unload_dependents": "yes"}}', timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() == "the unload request's parameter 'unload_dependents' must be a bool_param, got string_param"
    assert reply.status_code == 400 and "'unload_dependents' must be true or false" in reply.json()["error"]
    request.parameters["unload_dependents"].bool_param = True  # well formed: on to the model control check
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelUnload(request)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("rpc, request_, path", [
    ("RepositoryIndex", service_pb2.RepositoryIndexRequest(repository_name="other", ready=True),
     "/v2/repository/other/index"),
    ("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(repository_name="other", model_name="dense"),
     "/v2/repository/other/models/dense/load"),
    ("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(repository_name="other", model_name="dense"),
     "/v2/repository/other/models/dense/unload"),
])
def test_a_named_repository_is_refused_never_answered_for_the_one_served(server, stub, rpc, request_, path):
    """As Triton: 'repository_name' is UNSUPPORTED. Was: gRPC answered for this server's repository (an index of
    it, a load refused only for the control mode), and REST's paths naming a repository were no endpoint."""
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, rpc)(request_)
    reply = requests.post(server.http_url + path, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, err.value.details()
    assert reply.status_code == 501 and reply.json()["error"] == err.value.details()
    assert err.value.details() == ("model repository 'other': naming a repository is not supported; this server "
                                   "serves the one given by --model-repository: send the request without a "
                                   "repository name")


def held_grpc():
    return grpc_infer("held", features=4)


def held_http(**parameters):
    return http_infer("held", features=4, parameters=parameters or None)


def post(server, request):
    method, path, body = request
    return requests.request(method, server.http_url + path, data=body, timeout=30)


def outcome(server, code):
    key = ("fleetserve_inference_requests_total",
           frozenset({"model": "held", "version": "1", "code": code}.items()))
    return scrape_metrics(server.metrics_url).get(key, 0.0)


def test_full_queue_is_resource_exhausted_and_429(server, stub):
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, server, held_http())  # takes the only queue slot for 0.4 s
        time.sleep(0.15)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(held_grpc())
        reply = post(server, held_http())
        assert first.result().status_code == 200
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reply.status_code == 429 and reply.json()["error"] == err.value.details()
    assert "queue is full" in reply.json()["error"]


def test_expired_timeout_is_deadline_exceeded_and_504(server, stub):
    before = outcome(server, "DEADLINE_EXCEEDED")
    request = held_grpc()
    request.parameters["timeout"].int64_param = 50_000  # Triton's queue timeout, in microseconds
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    reply = post(server, held_http(timeout=50_000))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert reply.status_code == 504, reply.text
    # A gRPC deadline the caller set: the client gives up; the server records the expiry, not a cancel.
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(held_grpc(), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5  # the held request leaves the queue when its model frees: on a busy machine, later
    while outcome(server, "DEADLINE_EXCEEDED") < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcome(server, "DEADLINE_EXCEEDED") == before + 3


def test_callers_that_leave_are_recorded_as_cancelled(server, stub):
    before = outcome(server, "CANCELLED")
    future = stub.ModelInfer.future(held_grpc())
    time.sleep(0.1)
    future.cancel()
    time.sleep(0.5)
    _, path, body = held_http()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        time.sleep(0.1)  # the request is queued; the caller hangs up (HTTP 499 in the logs)
    deadline = time.monotonic() + 5
    while outcome(server, "CANCELLED") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcome(server, "CANCELLED") == before + 2
