"""Every error class through both transports: the gRPC status and the HTTP status come from one code.

Each case makes the same mistake over gRPC and over REST against one real server and checks
both statuses against the two tables (server/grpc_errors.py, server/http_errors.py) and that
the messages agree. CANCELLED cannot reach a caller that left, so it is checked where it is
recorded: the requests-by-outcome metric. The inference rows (``INFER_ROWS``) pin the message too, and are
also sent on the stream (an error is a response with error_message) and counted alike on all three
(requests by outcome, ModelStatistics' fail count). This module's server adds models whose load fails
(warm-up, accelerator, instance bound) and one with a reshape to the shared repository.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ops.errors import Code
from server.grpc_errors import GRPC_STATUS
from server.http_errors import HTTP_STATUS
from model_store.testing import ModelSpec, write_dense_model, write_lookup_model, write_model_repository
from server.testing import ServerProcess, scrape_metrics
from server.tests.conftest import build_repository

RESHAPED_CONFIG = """max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4, 4 ] reshape: { shape: [ 16 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 4 ] reshape: { shape: [ 8 ] } } ]
"""
# Index 7 of a 3-row table: the sample fails, and the version never serves.
WARM_BAD_CONFIG = """max_batch_size: 8
model_warmup [ { name: "from-file" batch_size: 8 count: 1
  inputs { key: "INDEX" value: { data_type: TYPE_INT64 dims: [ ] input_data_file: "index" } } } ]
"""
CUDA_GRAPH_CONFIG = """optimization { execution_accelerators { gpu_execution_accelerator [
  { name: "tensorrt" parameters { key: "trt_cuda_graph_enable" value: "1" } } ] } }"""
TOO_MANY_CONFIG = "instance_group [ { count: 1025, kind: KIND_CPU } ]"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_repository(tmp_path_factory.mktemp("parity_repo"))
    write_model_repository(root, {
        "reshaped": ModelSpec(write_dense_model, config=RESHAPED_CONFIG),
        "warm_bad": ModelSpec(write_lookup_model, config=WARM_BAD_CONFIG),
        "cuda_graph": ModelSpec(write_dense_model, config=CUDA_GRAPH_CONFIG),
        "too_many": ModelSpec(write_dense_model, config=TOO_MANY_CONFIG),
    })
    (root / "warm_bad" / "warmup").mkdir()
    (root / "warm_bad" / "warmup" / "index").write_bytes(np.array(7, "<i8").tobytes())
    return root


@pytest.fixture(scope="module")
def server(repository: Path):
    with ServerProcess(repository) as proc:
        yield proc


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


def typed_infer(model, datatype, field, values):
    msg = service_pb2.ModelInferRequest(model_name=model)
    getattr(msg.inputs.add(name="INPUT0", datatype=datatype, shape=[1, len(values)]).contents, field).extend(values)
    return msg


def json_infer(model, datatype, values, name="INPUT0", shape=None):
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": shape or [1, len(values)], "data": values}]}
    return "POST", f"/v2/models/{model}/infer", json.dumps(body)


BAD_UTF8 = b"".join(struct.pack("<I", len(item)) + item for item in (b"a", b"\xff", b"c"))


def bad_utf8_grpc():
    msg = service_pb2.ModelInferRequest(model_name="identity_bytes")
    msg.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 3])
    msg.raw_input_contents.append(BAD_UTF8)
    return msg


def bad_utf8_http():  # REST's binary extension: JSON strings cannot hold bytes that are not UTF-8
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 3],
                                     "parameters": {"binary_data_size": len(BAD_UTF8)}}]}).encode()
    return "POST", "/v2/models/identity_bytes/infer", header + BAD_UTF8, {"Inference-Header-Content-Length":
                                                                           str(len(header))}


def lookup_infer():
    msg = service_pb2.ModelInferRequest(model_name="warm_bad")
    msg.inputs.add(name="INDEX", datatype="INT64", shape=[1])
    msg.raw_input_contents.append(bytes(8))
    return msg


def classified_bool_grpc():
    msg = service_pb2.ModelInferRequest(model_name="identity_bool")
    msg.inputs.add(name="INPUT0", datatype="BOOL", shape=[1, 3])
    msg.raw_input_contents.append(bytes([1, 0, 1]))
    msg.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 2
    return msg


def classified_bool_http():
    body = {"inputs": [{"name": "INPUT0", "datatype": "BOOL", "shape": [1, 3], "data": [True, False, True]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}
    return "POST", "/v2/models/identity_bool/infer", json.dumps(body)


NOT_READY = "model '{model}' is not ready: version 1 UNAVAILABLE: "
# Inference errors that landed with the reshape, BYTES, range, warm-up, accelerator, instance bound,
# model-first and classification changes: (code, gRPC request, REST request, the message both say; {repo}: the repository).
INFER_ROWS: dict[str, tuple[Code, Any, tuple, str]] = {
    "reshape: the client's dims, not the model's": (
        Code.INVALID_ARGUMENT, grpc_infer("reshaped"), http_infer("reshaped"),
        "input 'INPUT0': shape [1, 16] does not match the model's [-1, 4, 4] (first dimension is the batch, "
        "-1 is any size)"),
    "BYTES element not UTF-8": (
        Code.INVALID_ARGUMENT, bad_utf8_grpc(), bad_utf8_http(),
        "input 'INPUT0': element [0, 1] is not UTF-8 text (byte 0xff at offset 0); this model's BYTES tensors "
        "are ONNX strings, which hold UTF-8 text only"),
    "value out of its datatype's range": (
        Code.INVALID_ARGUMENT, typed_infer("identity_int8", "INT8", "int_contents", [300, 0, 0]),
        json_infer("identity_int8", "INT8", [300, 0, 0]), "input 'INPUT0': 300 is out of range for INT8 (-128 to 127)"),
    "unsigned value out of its datatype's range": (
        Code.INVALID_ARGUMENT, typed_infer("identity_uint16", "UINT16", "uint_contents", [70000, 0, 0]),
        json_infer("identity_uint16", "UINT16", [70000, 0, 0]),
        "input 'INPUT0': 70000 is out of range for UINT16 (0 to 65535)"),
    "model_warmup sample failed": (
        Code.UNAVAILABLE, lookup_infer(), json_infer("warm_bad", "INT64", [0], name="INDEX", shape=[1]),
        NOT_READY.format(model="warm_bad") + "model 'warm_bad': model_warmup[0] 'from-file' failed: the model "
        "rejected the input: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while "
        "running Gather node. Name:'' Status Message: indices element out of data bounds, idx=7 must be within "
        "the inclusive range [-3,2]"),
    "accelerator option refused": (
        Code.UNAVAILABLE, grpc_infer("cuda_graph"), http_infer("cuda_graph"),
        NOT_READY.format(model="cuda_graph") + "{repo}/cuda_graph/config.pbtxt: optimization.execution_accelerators"
        ".gpu_execution_accelerator[0].parameters.trt_cuda_graph_enable: is not supported: CUDA graphs need every "
        "run to have the same shapes, bound to fixed GPU buffers, which dynamic batches do not have; remove it"),
    "instance bound": (
        Code.UNAVAILABLE, grpc_infer("too_many"), http_infer("too_many"),
        NOT_READY.format(model="too_many") + "{repo}/too_many/config.pbtxt: instance_group[0].count: is 1025; each "
        "instance is a thread running batches, so give at most 1024 (a few per core, or per GPU, is what serves "
        "fastest)"),
    "classification of an output without numeric values": (
        Code.INVALID_ARGUMENT, classified_bool_grpc(), classified_bool_http(),
        "model 'identity_bool' output 'OUTPUT0' is BOOL: the 'classification' parameter (tritonclient's class_count: "
        "how many top classes to return) needs a numeric output (UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
        "INT64, FP32, FP64); request the output without it"),
    "a label file that cannot be read": (
        Code.UNAVAILABLE, grpc_infer("label_missing"), http_infer("label_missing"),
        NOT_READY.format(model="label_missing") + "model 'label_missing' output 'OUTPUT0': label_filename 'gone.txt' "
        "cannot be read from the model folder {repo}/label_missing: No such file or directory; add the file (one "
        "label per line, line i naming class i) or remove label_filename"),
    # Was: gRPC (and the stream) said what was wrong with the body (INVALID_ARGUMENT) where REST said 404 / 503.
    "unknown model before the body's error": (
        Code.NOT_FOUND, typed_infer("nope", "INT8", "int_contents", [300, 0, 0]), json_infer("nope", "INT8", [300, 0, 0]),
        "unknown model 'nope': it is not loaded on this server"),
    "unknown model before an unknown datatype": (
        Code.NOT_FOUND, typed_infer("nope", "INT9", "int_contents", [1]), json_infer("nope", "INT9", [1]),
        "unknown model 'nope': it is not loaded on this server"),
    "unready model before the body's error": (
        Code.UNAVAILABLE, typed_infer("corrupt", "INT8", "fp32_contents", [1.5]), json_infer("corrupt", "INT8", [1.5]),
        NOT_READY.format(model="corrupt") + "{repo}/corrupt/1/model.onnx is not a readable ONNX model: Error parsing "
        "message with type 'onnx.ModelProto'"),
}
MESSAGES = {case: row[3] for case, row in INFER_ROWS.items()}

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
    **{case: (code, lambda s, r=request: s.ModelInfer(r), http) for case, (code, request, http, _) in INFER_ROWS.items()},
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
def test_same_error_same_code_on_both_transports(server, repository, stub, case):
    code, grpc_call, (method, path, body, *headers) = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(stub)
    reply = requests.request(method, server.http_url + path, data=body, headers=headers[0] if headers else None,
                             timeout=30)
    assert err.value.code() == GRPC_STATUS[code], err.value.details()
    assert reply.status_code == HTTP_STATUS[code], reply.text
    assert reply.json()["error"] == err.value.details()
    if case in MESSAGES:
        assert err.value.details() == MESSAGES[case].format(repo=repository)


def fail_counts(server, stub):
    """Requests by outcome (every series) and ModelStatistics' fail count of every version."""
    outcomes = {k: v for k, v in scrape_metrics(server.metrics_url).items()
                if k[0] == "fleetserve_inference_requests_total"}
    stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest()).model_stats
    return outcomes, {(s.name, s.version): s.inference_stats.fail.count for s in stats}


def delta(before, after):
    return tuple({k: part.get(k, 0) - was.get(k, 0) for k in set(was) | set(part) if part.get(k, 0) != was.get(k, 0)}
                 for was, part in zip(before, after))


@pytest.mark.parametrize("case", sorted(INFER_ROWS))
def test_the_stream_says_it_too_and_each_transport_counts_it_alike(server, repository, stub, case):
    code, request, (method, path, body, *headers), message = INFER_ROWS[case]
    counts = [fail_counts(server, stub)]
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(request)
    counts.append(fail_counts(server, stub))
    reply = next(iter(stub.ModelStreamInfer(iter([request]), timeout=30)))
    counts.append(fail_counts(server, stub))
    requests.request(method, server.http_url + path, data=body, headers=headers[0] if headers else None, timeout=30)
    counts.append(fail_counts(server, stub))
    assert reply.error_message == message.format(repo=repository)
    assert reply.infer_response.model_name == request.model_name
    grpc_delta, stream_delta, rest_delta = (delta(a, b) for a, b in zip(counts, counts[1:]))
    assert grpc_delta == stream_delta == rest_delta, (grpc_delta, stream_delta, rest_delta)
    (series, added), = grpc_delta[0].items()  # one request, one outcome, under the code of its status
    assert dict(series[1])["code"] == code.name and added == 1
    # A request that reached a model version fails in its statistics; one refused before (decode, an
    # unready or unknown model) is counted only by outcome.
    assert grpc_delta[1] == ({(dict(series[1])["model"], "1"): 1} if dict(series[1])["version"] else {})


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
