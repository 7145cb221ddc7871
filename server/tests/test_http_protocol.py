"""The REST API against a real fleetserve: tritonclient.http unchanged (binary and JSON), raw JSON bodies, limits."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time
import zlib

import numpy as np
import pytest
import requests
import tritonclient.http as th

from model_store.datatypes import BY_NAME
from model_store.testing import (
    IDENTITY_DATATYPES,
    ModelSpec,
    reference_outputs,
    write_dense_model,
    write_model_repository,
)
from server.testing import ServerProcess, scrape_metrics


@pytest.fixture(scope="module")
def client(server):
    c = th.InferenceServerClient(server.http_address)
    yield c
    c.close()


def post(server, path, body, headers=None):
    return requests.post(server.http_url + path, data=body, headers=headers or {}, timeout=30)


def test_statistics_of_a_version_that_is_not_one_is_404(server):
    reply = requests.get(server.http_url + "/v2/models/dense/versions/abc/stats", timeout=30)
    assert reply.status_code == 404 and "no version 'abc'" in reply.json()["error"], reply.text
    reply = requests.get(server.http_url + "/v2/models/dense/versions/1/stats", timeout=30)
    assert reply.status_code == 200 and reply.json()["model_stats"][0]["version"] == "1"


def test_health_metadata_config_index_and_stats(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("dense") and not client.is_model_ready("corrupt")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "fleetserve" and {"binary_tensor_data", "classification", "system_shared_memory"} <= set(meta["extensions"])
    model = client.get_model_metadata("simple")
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
                               {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("add_one", model_version="2")["name"] == "add_one"
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [4]  # numbers, as Triton writes them
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    config = client.get_model_config("nobatch")  # fields at their default are written out, as Triton does
    assert config["max_batch_size"] == 0 and config["input"][0]["optional"] is False
    assert config["input"][0]["format"] == "FORMAT_NONE"
    # as Triton completes it: the kind the model runs on (no GPU here), the group named "<model>_<index>"
    assert [(g["name"], g["kind"], g["count"]) for g in config["instance_group"]] == [("nobatch_0", "KIND_CPU", 1)]
    assert [o["label_filename"] for o in client.get_model_config("labelled")["output"]] == ["labels.txt", "few.txt"]
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("dense", "1")]["state"] == "READY"
    assert any(m["state"] == "UNAVAILABLE" and "max_batch_sise" in m["reason"] for m in index.values())
    stats = client.get_inference_statistics("dense")["model_stats"]
    assert stats[0]["name"] == "dense" and set(stats[0]["inference_stats"]) >= {"success", "fail", "queue"}
    assert {s["name"] for s in client.get_inference_statistics()["model_stats"]} >= {"dense", "simple"}


def infer(client, model, arrays, binary=True, outputs=None, **kwargs):
    inputs = []
    for name, arr in arrays.items():
        dt = "BYTES" if arr.dtype == object else th.np_to_triton_dtype(arr.dtype)
        inp = th.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    requested = [th.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer(model, inputs, outputs=requested, **kwargs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model, arrays", [
    ("dense", {"INPUT0": np.random.default_rng(1).standard_normal((3, 16), dtype=np.float32)}),
    ("simple", {"INPUT0": np.arange(8, dtype=np.float32).reshape(2, 4), "INPUT1": np.ones((2, 4), np.float32)}),
    ("nobatch", {"INPUT0": np.random.default_rng(3).standard_normal((1, 16), dtype=np.float32)}),
])
def test_infer_matches_in_process_onnxruntime(client, repository, model, arrays, binary):
    outputs = ["OUTPUT0"] + (["OUTPUT1"] if model == "simple" else [])
    result = infer(client, model, arrays, binary=binary, outputs=outputs, request_id="r-1")
    expected = reference_outputs(repository / model / "1" / "model.onnx", arrays)
    for name, value in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_version"] == "1"
    assert all(("parameters" in o) == binary for o in response["outputs"])


@pytest.mark.parametrize("datatype", [d for d in IDENTITY_DATATYPES])
def test_every_datatype_round_trips_binary(client, datatype):
    rng = np.random.default_rng(4)
    if datatype == "BYTES":
        arr = np.array([[b"a", b"", "\u00e9t\u00e9".encode()], [b"x" * 100, b"\x00z", b"q"]], dtype=object)
    elif datatype == "BOOL":
        arr = rng.integers(0, 2, (2, 3)).astype(bool)
    else:
        dtype = BY_NAME[datatype].numpy
        arr = (rng.standard_normal((2, 3)) * 100).astype(dtype) if dtype.kind == "f" else \
            rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 3), dtype=dtype, endpoint=True)
    out = infer(client, f"identity_{datatype.lower()}", {"INPUT0": arr}).as_numpy("OUTPUT0")
    assert out.shape == arr.shape
    if datatype == "BYTES":
        assert out.tolist() == arr.tolist()
    else:
        assert out.dtype == arr.dtype
        np.testing.assert_array_equal(out, arr)


def test_json_data_flat_or_nested_and_json_outputs(server):
    for data in ([[1, 2, 3, 4]], [1, 2, 3, 4]):
        body = {"id": "j", "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": data},
                                      {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}],
                "outputs": [{"name": "OUTPUT1"}]}
        reply = post(server, "/v2/models/simple/infer", json.dumps(body))
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.json() == {"model_name": "simple", "model_version": "1", "id": "j", "outputs": [
            {"name": "OUTPUT1", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0, 3.0]}]}
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "", "\u00e9"]}]}
    reply = post(server, "/v2/models/identity_bytes/versions/1/infer", json.dumps(body))
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == ["a", "", "\u00e9"]


@pytest.mark.parametrize("model, data", [
    ("identity_bool", ["false", "no", "0"]),  # numpy reads any non-empty string as True
    ("identity_bool", [1, 0, 1]),
    ("identity_int32", [1.5, 2, 3]),  # numpy truncates to 1
    ("identity_int32", ["1", "2", "3"]),
    ("identity_fp32", [None, 1.0, 2.0]),  # numpy reads null as NaN
])
def test_json_data_of_the_wrong_json_type_is_refused_not_coerced(server, model, data):
    datatype = model.split("_")[1].upper()
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": datatype, "data": data}]}
    reply = post(server, f"/v2/models/{model}/infer", json.dumps(body))
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"input 'INPUT0': 'data' of {datatype} must hold "), reply.text
    assert server_still_serves(server)


def server_still_serves(server):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]}]}
    reply = post(server, "/v2/models/identity_bool/infer", json.dumps(body))
    return reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [True, False, True]


def json_infer(server, datatype, data, shape=(1, 3), model=None):
    body = {"inputs": [{"name": "INPUT0", "shape": list(shape), "datatype": datatype, "data": data}]}
    return post(server, f"/v2/models/{model or 'identity_' + datatype.lower()}/infer", json.dumps(body))


@pytest.mark.parametrize("datatype, data, says", [
    ("UINT8", [1, 300, 2], "300 is out of range for UINT8 (0 to 255)"),  # numpy 1.x wraps it to 44
    ("UINT8", [[1], [2], [300]], "300 is out of range for UINT8 (0 to 255)"),
    ("UINT32", [-1, 0, 1], "-1 is out of range for UINT32 (0 to 4294967295)"),
    ("INT8", [-129, 0, 1], "-129 is out of range for INT8 (-128 to 127)"),
    ("UINT64", [2**64, 0, 1], "18446744073709551616 is out of range for UINT64 (0 to 18446744073709551615)"),
    ("INT64", [0, 10**60, 1], "a 61-digit number is out of range for INT64 (-9223372036854775808 to "
                              "9223372036854775807)"),
    ("FP16", [1.0, 70000, 2.0], "70000 is out of range for FP16, whose largest magnitude is 65504: it would "
                                "become infinity (send Infinity or -Infinity if that is meant)"),
    ("FP32", [1e300, 1.0, 2.0], "1e+300 is out of range for FP32, whose largest magnitude is 3.40282e+38: it "
                                "would become infinity (send Infinity or -Infinity if that is meant)"),
    ("FP64", [1, 2**1100, 2], "a 332-digit number is out of range for FP64, whose largest magnitude is "
                              "1.79769e+308: it would become infinity (send Infinity or -Infinity if that is meant)"),
])
def test_json_values_out_of_their_datatypes_range_are_refused_never_wrapped_or_made_infinite(
        server, datatype, data, says):
    reply = json_infer(server, datatype, data)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == f"input 'INPUT0': {says}"
    assert server_still_serves(server)


@pytest.mark.parametrize("datatype, data", [
    ("INT64", [2**53 + 1, -(2**63), 2**63 - 1]),  # beyond a double's integers: exact both ways
    ("UINT64", [2**64 - 1, 2**53 + 1, 0]),
    ("UINT8", [[0], [255], [7]]),
    ("FP16", [65504.0, -65504.0, 0.0999755859375]),
    ("FP32", [3.4028234663852886e38, -1.401298464324817e-45, 0.1]),
    ("FP64", [1.7976931348623157e308, 5e-324, 0.1]),
    ("BOOL", [[True, False, True]]),
])
def test_json_values_at_the_edges_of_their_datatype_round_trip_exactly(server, datatype, data):
    reply = json_infer(server, datatype, data)
    assert reply.status_code == 200, reply.text
    flat = [v for row in data for v in (row if isinstance(row, list) else [row])]
    expected = flat if datatype != "FP32" else np.array(flat, np.float32).tolist()
    assert reply.json()["outputs"][0]["data"] == expected


def test_json_nan_and_infinities_are_read_and_written_as_their_tokens(server):
    for datatype in ("FP16", "FP32", "FP64"):
        body = ('{"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "%s", "data": [NaN, Infinity, '
                '-Infinity]}]}' % datatype)
        reply = post(server, f"/v2/models/identity_{datatype.lower()}/infer", body)
        assert reply.status_code == 200, reply.text
        assert b'"data":[NaN,Infinity,-Infinity]' in reply.content


@pytest.mark.parametrize("datatype, data, says", [
    ("BYTES", ["a", "\ud800", "b"], "element 1 is not text: it holds the lone surrogate '\\ud800', an escape that "
                                    "encodes no character. JSON strings carry Unicode text (sent as UTF-8); send "
                                    "bytes that are not UTF-8 as binary data (binary_data_size)"),
    ("BYTES", [["a", "b"], ["c"]], "'data' is not a regular array of BYTES: its nested lists differ in length"),
    ("INT16", [[1, 2], [3]], "'data' is not a regular array of INT16: its nested lists differ in length"),
])
def test_json_data_that_is_no_text_or_no_array_says_so(server, datatype, data, says):
    reply = json_infer(server, datatype, data)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == f"input 'INPUT0': {says}"


def test_binary_bytes_that_are_not_utf8_are_refused_naming_the_element(server):
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in [b"\x00", b"", b"\xff\xfe"])
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    reply = post(server, "/v2/models/identity_bytes/infer", head + raw,
                 {"Inference-Header-Content-Length": str(len(head))})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith("input 'INPUT0': element [0, 2] is not UTF-8 text (byte 0xff at offset 0)")
    assert server_still_serves(server)


def test_an_empty_outputs_list_asks_for_every_output_as_over_grpc(server):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                       {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}],
            "outputs": []}
    reply = post(server, "/v2/models/simple/infer", json.dumps(body))
    assert reply.status_code == 200, reply.text
    assert [o["name"] for o in reply.json()["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_binary_output_chosen_per_request(server):
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT32",
                                   "parameters": {"binary_data_size": 12}}],
                       "parameters": {"binary_data_output": True}}).encode()
    body = head + np.array([1, -2, 3], "<i4").tobytes()
    reply = post(server, "/v2/models/identity_int32/infer", body, {"Inference-Header-Content-Length": str(len(head))})
    assert reply.status_code == 200, reply.text
    n = int(reply.headers["Inference-Header-Content-Length"])
    out = json.loads(reply.content[:n])["outputs"][0]
    assert out["parameters"] == {"binary_data_size": 12}
    assert np.frombuffer(reply.content[n:], "<i4").tolist() == [1, -2, 3]


def bf16_counts(server):
    """The bf16 model's (success, fail, executions) statistics and (OK, INVALID_ARGUMENT) request metrics."""
    stats = requests.get(server.http_url + "/v2/models/bf16/stats", timeout=30).json()["model_stats"][0]
    inference = stats["inference_stats"]
    metrics = scrape_metrics(server.metrics_url)
    outcome = {code: metrics.get(("fleetserve_inference_requests_total",
                                  frozenset({"model": "bf16", "version": "1", "code": code}.items())), 0.0)
               for code in ("OK", "INVALID_ARGUMENT")}
    return (inference["success"]["count"], inference["fail"]["count"], stats["execution_count"],
            outcome["OK"], outcome["INVALID_ARGUMENT"])


@pytest.mark.parametrize("outputs, parameters", [
    (None, {}),  # every output, as JSON
    ([{"name": "OUTPUT0"}], {}),
    ([{"name": "OUTPUT0", "parameters": {"binary_data": False}}], {"binary_data_output": True}),
], ids=["all-outputs", "named", "binary-by-default-but-not-this-one"])
def test_a_bf16_output_asked_for_as_json_is_refused_before_it_runs_and_counted_as_a_failure(
        server, outputs, parameters):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "UINT16", "data": [0x3F80, 0xBF80, 0]}],
            "parameters": parameters}
    if outputs is not None:
        body["outputs"] = outputs
    before = bf16_counts(server)
    reply = post(server, "/v2/models/bf16/infer", json.dumps(body))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error.startswith("output 'OUTPUT0': BF16 has no JSON form; ask for it as binary data"), error
    assert '"parameters": {"binary_data": true}' in error and "binary_data_output" in error, error
    success, fail, executions, ok, invalid = bf16_counts(server)
    assert (success, executions, ok) == (before[0], before[2], before[3])  # the model did not run
    assert (fail, invalid) == (before[1] + 1, before[4] + 1)


def test_a_bf16_output_is_answered_as_binary_data_beside_json_outputs(server):
    words = [0x3F80, 0xBF80, 0]  # bfloat16 1, -1, 0
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "UINT16", "data": words}],
                       "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}},
                                   {"name": "OUTPUT1"}]}).encode()
    reply = post(server, "/v2/models/bf16/infer", head)
    assert reply.status_code == 200, reply.text
    n = int(reply.headers["Inference-Header-Content-Length"])
    out0, out1 = json.loads(reply.content[:n])["outputs"]
    assert out0 == {"name": "OUTPUT0", "datatype": "BF16", "shape": [1, 3], "parameters": {"binary_data_size": 6}}
    assert np.frombuffer(reply.content[n:], "<u2").tolist() == words
    assert out1["datatype"] == "FP32" and out1["data"] == [float(w) for w in words]
    # a request that leaves the BF16 output out needs no binary data at all
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "UINT16", "data": words}],
            "outputs": [{"name": "OUTPUT1"}]}
    reply = post(server, "/v2/models/bf16/infer", json.dumps(body))
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [float(w) for w in words], reply.text


@pytest.mark.parametrize("body, header, status, fragment", [
    (b"{not json", None, 400, "not valid JSON"),
    (b"[]", None, 400, "must be a JSON object"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1, 2]}]}).encode(),
     None, 400, "needs 16 elements"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]}).encode(), None, 400, "no data"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": "x", "datatype": "FP32", "data": []}]}).encode(),
     None, 400, "list of integers"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                             "parameters": {"binary_data_size": 64}}]}).encode() + bytes(60), "@", 400, "runs past"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                             "parameters": {"binary_data_size": 64}}]}).encode() + bytes(70), "@", 400, "6 bytes"),
    (b"{}", "999", 400, "Inference-Header-Content-Length is 999"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": ["FP32"], "data": [0] * 16}]}).encode(),
     None, 400, "'datatype' must be a string"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [None] * 16}]}).encode(),
     None, 400, "'data' of FP32 must hold numbers, got null"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [[True] * 16]}]}).encode(),
     None, 400, "'data' of FP32 must hold numbers, got true"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
                 "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": "false"}}]}).encode(),
     None, 400, "parameter 'binary_data' must be true or false, got \"false\""),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
                 "parameters": {"binary_data_output": 1}}).encode(), None, 400, "'binary_data_output' must be true"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
                 "parameters": 0}).encode(), None, 400, "parameters must be a JSON object"),
    (json.dumps({"id": None, "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
                ).encode(), None, 400, "'id' must be a string, got null"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
                 "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]}).encode(), None, 400, "more than once"),
    # json.loads raised RecursionError (a 500), and read UTF-16 and UTF-32 as readily as UTF-8
    pytest.param(b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, 400,
                 "not valid JSON: it is nested too deeply", id="nested-5000-deep"),
    pytest.param(json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
                            ).encode("utf-16"), None, 400,
                 "not valid JSON: it is not UTF-8 text (byte 0xff at offset 0)", id="utf-16"),
    # int() refused the 5000 digits with a ValueError the codec did not expect (a 500)
    pytest.param(b"{}", "9" * 5000, 400,
                 "Inference-Header-Content-Length is 99999999999999999999... but the request body holds 2",
                 id="header-length-of-5000-digits"),
    # binary_data_size: null was taken for no binary data, and 'data' read instead
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16,
                             "parameters": {"binary_data_size": None}}]}).encode(), None, 400,
     "input 'INPUT0' has both 'data' and a binary_data_size parameter"),
    (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                             "parameters": {"binary_data_size": True}}]}).encode(), None, 400,
     "binary_data_size must be a non-negative integer, got true"),
])
def test_malformed_bodies_are_400_with_a_reason(server, body, header, status, fragment):
    headers = {}
    if header == "@":
        headers["Inference-Header-Content-Length"] = str(body.index(b"}]}") + 3)
    elif header is not None:
        headers["Inference-Header-Content-Length"] = header
    reply = post(server, "/v2/models/dense/infer", body, headers)
    assert reply.status_code == status and fragment in reply.json()["error"], reply.text


# ---- the binary tensor data extension's framing -------------------------------------------------
def int32_request(values=(1, -2, 3), **input_fields):
    """An identity_int32 request with its input as binary data: (JSON part, body)."""
    tensor = {"name": "INPUT0", "shape": [1, len(values)], "datatype": "INT32",
              "parameters": {"binary_data_size": 4 * len(values)}, **input_fields}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return head, head + np.array(values, "<i4").tobytes()


def post_raw(server, path, body, headers):
    """POST with headers as given, repeats and non-Latin-1 bytes included (requests would merge or refuse them)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(len(body)))
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def int32_outputs(headers, body):
    n = int(headers["Inference-Header-Content-Length"])
    return np.frombuffer(body[n:], "<i4").tolist()


@pytest.mark.parametrize("value", [
    lambda n: f"+{n}",  # int() read these three as n, Triton's atoi reads "1_0" as 1: neither is a length
    lambda n: f"{n // 10}_{n % 10}",
    lambda n: "".join(chr(0x660 + int(d)) for d in str(n)).encode(),  # ARABIC-INDIC digits, sent as UTF-8
    lambda n: f"0x{n:x}",
], ids=["plus", "underscore", "arabic-indic", "hex"])
def test_the_inference_header_length_is_ascii_digits_only(server, value):
    head, body = int32_request()
    status, _, reply = post_raw(server, "/v2/models/identity_int32/infer", body,
                                [("Inference-Header-Content-Length", value(len(head)))])
    assert status == 400, reply
    assert "Inference-Header-Content-Length must be the JSON's length in bytes, as digits only" in \
        json.loads(reply)["error"]
    # digits, with the spaces HTTP allows around a header value, are read
    status, headers, reply = post_raw(server, "/v2/models/identity_int32/infer", body,
                                      [("Inference-Header-Content-Length", f"  {len(head)} ")])
    assert status == 200 and int32_outputs(headers, reply) == [1, -2, 3], reply


def test_an_inference_header_length_given_twice_must_agree(server):
    head, body = int32_request()
    status, _, reply = post_raw(server, "/v2/models/identity_int32/infer", body,
                                [("Inference-Header-Content-Length", str(len(head))),
                                 ("Inference-Header-Content-Length", str(len(head) - 1))])
    assert status == 400, reply  # the first was used, the second ignored
    assert json.loads(reply)["error"] == (
        f"Inference-Header-Content-Length is given more than once with different values ('{len(head) - 1}', "
        f"'{len(head)}'); send it once")
    status, headers, reply = post_raw(server, "/v2/models/identity_int32/infer", body,
                                      [("Inference-Header-Content-Length", str(len(head)))] * 2)
    assert status == 200 and int32_outputs(headers, reply) == [1, -2, 3], reply


def test_a_raw_binary_request_is_refused_as_unsupported_not_parsed_as_json(server):
    """Triton's raw binary request: header length 0, the body one input's bytes with no JSON."""
    body = np.array([1, -2, 3], "<i4").tobytes()
    reply = post(server, "/v2/models/identity_int32/infer", body, {"Inference-Header-Content-Length": "0"})
    assert reply.status_code == 501, reply.text  # was 400 "the inference request is not valid JSON"
    assert reply.json()["error"].startswith("Inference-Header-Content-Length: 0 (Triton's raw binary request")


def test_binary_data_sent_without_the_header_length_is_400_saying_what_is_missing(server):
    _, body = int32_request()
    reply = post(server, "/v2/models/identity_int32/infer", body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].endswith(
        "; 12 bytes follow the JSON object: binary tensor data needs the Inference-Header-Content-Length header "
        "giving the JSON's length in bytes"), reply.text


@pytest.mark.parametrize("data", [[7, 8, 9], []], ids=["data", "empty-data"])
def test_an_input_with_both_data_and_binary_data_size_is_refused_not_read_one_way(server, data):
    head, body = int32_request(data=data)  # the binary bytes were read and 'data' ignored
    reply = post(server, "/v2/models/identity_int32/infer", body, {"Inference-Header-Content-Length": str(len(head))})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == (
        "input 'INPUT0' has both 'data' and a binary_data_size parameter; give one: 'data' for JSON values, or "
        "binary_data_size for that many bytes after the JSON")


def test_a_tensor_in_an_unregistered_region_is_not_found_never_answered_in_the_body(client):
    x = th.InferInput("INPUT0", [1, 3], "INT32")
    x.set_data_from_numpy(np.array([[1, -2, 3]], np.int32))
    out = th.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("region", 12)  # never answered in the body while the caller reads the region
    with pytest.raises(th.InferenceServerException) as err:
        client.infer("identity_int32", [x], outputs=[out])
    assert err.value.status() == "404", err.value.message()
    assert err.value.message().startswith("no system shared-memory region named 'region' is registered")
    x.set_shared_memory("region", 12)
    with pytest.raises(th.InferenceServerException) as err:
        client.infer("identity_int32", [x])
    assert err.value.status() == "404", err.value.message()


# ---- Content-Encoding ----------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_with_binary_data_round_trip(client, algorithm):
    arr = np.array([[b"a", b"", "\u00e9t\u00e9".encode()], [b"x" * 100, b"\x00z", b"q"]], dtype=object)
    x = th.InferInput("INPUT0", list(arr.shape), "BYTES")
    x.set_data_from_numpy(arr)
    result = client.infer("identity_bytes", [x], request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)  # answered uncompressed: allowed, and read
    assert result.as_numpy("OUTPUT0").tolist() == arr.tolist()


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "bogus"])
def test_a_content_encoding_the_server_does_not_decode_is_415_naming_those_it_does(server, encoding):
    head, body = int32_request()  # an unknown coding was read as if the body were not encoded
    reply = post(server, "/v2/models/identity_int32/infer", body,
                 {"Inference-Header-Content-Length": str(len(head)), "Content-Encoding": encoding})
    assert reply.status_code == 415, reply.text  # br and zstd were a 500 or a plain-text 400
    assert reply.headers["Accept-Encoding"] == "gzip, deflate"
    assert reply.json()["error"] == (f"Content-Encoding '{encoding}' is not supported; send the body uncompressed, "
                                     "or compressed once with one of: gzip, deflate")
    assert server_still_serves(server)


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZIP", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send it
    ("gzip, identity", gzip.compress), ("gzip", lambda b: gzip.compress(b[:50]) + gzip.compress(b[50:])),
], ids=["gzip", "x-gzip", "GZIP", "deflate", "raw-deflate", "identity-too", "two-members"])
def test_a_compressed_binary_request_is_inflated_before_its_framing_is_read(server, encoding, compress):
    head, body = int32_request()
    reply = post(server, "/v2/models/identity_int32/infer", compress(body),
                 {"Inference-Header-Content-Length": str(len(head)), "Content-Encoding": encoding})
    assert reply.status_code == 200, reply.text
    assert int32_outputs(reply.headers, reply.content) == [1, -2, 3]


@pytest.mark.parametrize("encoding, compressed, error", [
    # aiohttp answered these with a 500 (and logged a traceback twice)
    ("gzip", b"not gzip at all", "the request body is not valid gzip data (Content-Encoding: gzip): Error -3 "
                                 "while decompressing data: incorrect header check"),
    ("deflate", b"\x78\x9c" + b"\xff" * 20, "the request body is not valid deflate data (Content-Encoding: deflate)"),
    # aiohttp read these as a shorter body, or as none
    ("gzip", gzip.compress(b"x" * 1000)[:-9], "the request body ends before the end of its gzip data"),
    ("gzip", b"\x1f\x8b\x08\x00garbage", "the request body ends before the end of its gzip data"),
    ("deflate", zlib.compress(b"x" * 1000)[:-5], "the request body ends before the end of its deflate data"),
    ("deflate", zlib.compress(b"{}") + b"tail", "4 bytes follow the end of the request body's deflate data"),
], ids=["not-gzip", "bad-deflate", "truncated-gzip", "gzip-header-only", "truncated-deflate", "deflate-tail"])
def test_corrupt_or_truncated_compressed_bodies_are_400_never_read_short(server, encoding, compressed, error):
    reply = post(server, "/v2/models/identity_int32/infer", compressed, {"Content-Encoding": encoding})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(error), reply.text
    assert server_still_serves(server)


def test_unknown_endpoint_and_wrong_method_get_json_errors(server):
    reply = requests.get(server.http_url + "/v2/nothing", timeout=10)
    assert reply.status_code == 404 and "no such endpoint" in reply.json()["error"]
    reply = requests.get(server.http_url + "/v2/models/dense/infer", timeout=10)
    assert reply.status_code == 405 and "POST" in reply.json()["error"]


@pytest.mark.parametrize("method, path, allowed", [
    ("POST", "/v2/health/live", "GET, HEAD"),
    ("GET", "/v2/repository/models/dense/load", "POST"),
    ("HEAD", "/v2/repository/models/dense/unload", "POST"),
    ("PUT", "/v2/repository/index", "GET, HEAD, POST"),
    ("DELETE", "/v2/models/dense/versions/1/stats", "GET, HEAD"),
])
def test_a_wrong_method_is_405_with_an_allow_header(server, method, path, allowed):
    reply = requests.request(method, server.http_url + path, timeout=10)
    assert reply.status_code == 405 and reply.headers.get("Allow") == allowed, reply.headers  # was: no Allow
    if method != "HEAD":
        assert reply.json()["error"] == f"{method} is not allowed on {path}; allowed: {allowed}"


def test_the_index_ready_flag_is_a_json_boolean_never_read_by_truthiness(server):
    every = post(server, "/v2/repository/index", "").json()
    assert any(m["state"] == "UNAVAILABLE" for m in every)
    assert post(server, "/v2/repository/index", '{"ready": false}').json() == every
    ready = post(server, "/v2/repository/index", '{"ready": true}').json()
    assert ready == [m for m in every if m["state"] == "READY"]
    for value in ('"false"', "0", "1", "null", "[]"):  # "false" was read as true: only the ready ones came back
        reply = post(server, "/v2/repository/index", f'{{"ready": {value}}}')
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"] == f"the index request's 'ready' must be true or false, got {value}"


@pytest.mark.parametrize("action, body, error", [
    ("load", '{"parameters": []}', "the load request's 'parameters' must be a JSON object, got []"),
    ("load", '{"parameters": ""}', "the load request's 'parameters' must be a JSON object, got \"\""),
    ("unload", '{"parameters": 5}', "the unload request's 'parameters' must be a JSON object, got 5"),
    ("unload", '{"parameters": {"unload_dependents": "yes"}}',
     "the unload request's parameter 'unload_dependents' must be true or false, got \"yes\""),
    ("unload", "[]", "the request body must be a JSON object"),
    ("load", "{", "the request body is not valid JSON"),
])
def test_load_and_unload_bodies_are_read_strictly_before_anything_is_done(server, action, body, error):
    reply = post(server, f"/v2/repository/models/dense/{action}", body)  # was: read loosely, then 501 here
    assert reply.status_code == 400 and reply.json()["error"].startswith(error), reply.text


@pytest.mark.parametrize("action, body", [
    ("load", ""), ("load", "{}"), ("load", '{"parameters": null}'), ("load", '{"parameters": {}}'),
    ("unload", ""), ("unload", '{"parameters": {"unload_dependents": false}}'),
    ("unload", '{"parameters": {"unload_dependents": true}}'),
])
def test_well_formed_load_and_unload_bodies_reach_the_model_control_check(server, action, body):
    reply = post(server, f"/v2/repository/models/dense/{action}", body)
    assert reply.status_code == 501 and "--model-control-mode none" in reply.json()["error"], reply.text


def test_a_model_whose_name_holds_braces_is_served_over_rest_as_over_grpc(tmp_path):
    """A folder name may hold '{' and '}'; aiohttp's default route pattern refused them: "no such endpoint"."""
    repo = write_model_repository(tmp_path, {"a{b}": ModelSpec(write_dense_model)})
    with ServerProcess(repo, "--model-control-mode", "explicit") as server:
        client = th.InferenceServerClient(server.http_address)
        client.load_model("a{b}")
        assert client.is_model_ready("a{b}") and client.is_model_ready("a{b}", "1")
        assert client.get_model_metadata("a{b}", "1")["versions"] == ["1"]
        assert client.get_model_config("a{b}")["name"] == "a{b}"
        result = infer(client, "a{b}", {"INPUT0": np.ones((1, 16), np.float32)})
        assert result.as_numpy("OUTPUT0").shape == (1, 8)
        assert client.get_inference_statistics("a{b}", "1")["model_stats"][0]["inference_count"] == 1
        reply = requests.get(server.http_url + "/v2/models/a%7Bb%7D/versions/%7B1%7D", timeout=10)
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"] == "model 'a{b}' has no version '{1}': versions are whole numbers such as '1'"
        client.unload_model("a{b}")
        assert not client.is_model_ready("a{b}")
        client.close()


def test_body_over_the_limit_is_refused_with_413_before_it_is_read(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    conn.putrequest("POST", "/v2/models/dense/infer")
    conn.putheader("Content-Length", str(1 << 30))  # 1 GiB announced, nothing sent
    conn.endheaders()
    try:
        reply = conn.getresponse()
        assert reply.status == 413
        error = json.loads(reply.read())["error"]
    finally:
        conn.close()
    assert error == (f"the request body of {1 << 30} bytes is over this server's limit of {64 << 20} bytes "
                     "(--http-max-body-bytes)")


def test_an_oversize_body_announced_with_expect_100_continue_gets_413_not_an_invitation_to_send_it(server):
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % (1 << 30))
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413 "), reply
    # a body within the limit is still invited, and answered
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("POST", "/v2/repository/index", body=b"{}", headers={"Expect": "100-continue"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_compressed_body_is_held_to_the_limit_once_inflated_and_the_413_says_so(server):
    bomb = gzip.compress(b" " * (65 << 20))  # 64 KiB that inflate past the 64 MiB limit
    reply = post(server, "/v2/models/dense/infer", bomb, {"Content-Encoding": "gzip"})
    assert reply.status_code == 413
    assert reply.json()["error"] == ("the request body, decompressed (Content-Encoding: gzip), is over this "
                                     f"server's limit of {64 << 20} bytes (--http-max-body-bytes)")
    assert server_still_serves(server)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_classification_output_is_answered_with_its_top_classes(client, binary):
    """tritonclient's class_count (Triton's classification extension); server/tests/test_classification.py has the rest."""
    x = {"INPUT0": np.arange(16, dtype=np.float32).reshape(1, 16) / 4}  # add_one: x + 1
    inp = th.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x["INPUT0"])
    result = client.infer("add_one", [inp], outputs=[th.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=3)])
    top = [e.decode() if isinstance(e, bytes) else e for e in result.as_numpy("OUTPUT0").reshape(-1)]
    assert top == ["4.750000:15", "4.500000:14", "4.250000:13"]
    assert result.get_output("OUTPUT0")["shape"] == [1, 3]
    assert infer(client, "add_one", x, outputs=["OUTPUT0"]).as_numpy("OUTPUT0").shape == (1, 16)


@pytest.mark.parametrize("sequence", [
    {"sequence_id": 7, "sequence_start": True},
    {"sequence_id": "session-a", "sequence_end": True},
], ids=["int-id-start", "string-id-end"])
def test_a_sequence_request_is_501_not_run_as_if_it_had_no_sequence(client, server, sequence):
    """tritonclient's sequence_id / sequence_start / sequence_end were ignored, as over gRPC (UNIMPLEMENTED there)."""
    refused = "model 'add_one' runs no sequences (its config has no sequence_batching)"
    inp = th.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    for call in (lambda: client.infer("add_one", [inp], **sequence),
                 lambda: client.async_infer("add_one", [inp], **sequence).get_result()):
        with pytest.raises(th.InferenceServerException) as err:
            call()
        assert err.value.status() == "501" and refused in err.value.message(), err.value.message()
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}],
            "parameters": {"sequence_start": True}}  # any one of the three, even without an id
    reply = post(server, "/v2/models/add_one/infer", json.dumps(body).encode())
    assert reply.status_code == 501 and "runs no sequences" in reply.json()["error"]
    assert client.infer("add_one", [inp]).as_numpy("OUTPUT0").shape == (1, 16)


def test_trace_settings_are_served_on_both_paths_and_other_methods_are_not_allowed(server, client):
    """Triton's trace extension (server/tests/test_trace_settings_api.py has the rest): this server runs without
    --trace, so both paths read OFF; a method other than GET and POST is 405, as for any endpoint."""
    assert client.get_trace_settings()["trace_level"] == ["OFF"]
    assert client.get_trace_settings(model_name="add_one")["trace_mode"] == "opentelemetry"
    for path in ("/v2/trace/setting", "/v2/models/add_one/trace/setting"):
        assert requests.put(f"{server.http_url}{path}", timeout=10).status_code == 405


# ---- a body that stops arriving ----------------------------------------------------------------
IDLE_S = 0.5


@pytest.fixture(scope="module")
def impatient_server(repository):
    """A body idle timeout short enough to test, and a limit small enough to cross by streaming."""
    with ServerProcess(repository, "--http-body-idle-timeout", str(IDLE_S), "--http-max-body-bytes", str(4 << 20)) as s:
        yield s


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a reply: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the reply's body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def identity_body(request_id: str) -> bytes:
    return json.dumps({"id": request_id, "inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BOOL",
                                                     "data": [True, False, True]}]}).encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_body_that_stops_arriving_is_answered_408_and_released_while_others_are_served(
        impatient_server, chunked):
    sent = bytes(100_000)
    with socket.create_connection(("127.0.0.1", impatient_server.http_port), timeout=10) as sock:
        head = b"POST /v2/models/identity_bool/infer HTTP/1.1\r\nHost: x\r\n"
        if chunked:
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(sent) + sent + b"\r\n")
        else:
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % (2 << 20) + sent)
        stalled_at = time.monotonic()
        assert server_still_serves(impatient_server)  # another connection, while this one stalls
        status, headers, body = read_reply(sock)
        waited = time.monotonic() - stalled_at
        assert status == 408, (status, body)
        assert headers["connection"].lower() == "close" and headers["content-type"].startswith("application/json")
        got = "100000 bytes of it" if chunked else f"100000 of its {2 << 20} bytes"
        assert json.loads(body) == {"error": f"the request body stopped arriving: nothing came for {IDLE_S:g} s "
                                             f"after {got} (--http-body-idle-timeout); send the whole body "
                                             "without pausing"}
        assert IDLE_S <= waited < IDLE_S + 5
    assert server_still_serves(impatient_server)


def test_large_bodies_sent_without_pausing_are_read_whole_and_held_to_the_limit(impatient_server):
    request_id = "x" * (2 << 20)  # the id comes back: the body was read whole
    body = identity_body(request_id)
    reply = post(impatient_server, "/v2/models/identity_bool/infer", body)  # Content-Length, at once
    assert reply.status_code == 200 and reply.json()["id"] == request_id, reply.text[:200]
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    reply = post(impatient_server, "/v2/models/identity_bool/infer", chunks)  # chunked
    assert reply.status_code == 200 and reply.json()["id"] == request_id, reply.text[:200]
    oversize = (bytes(1 << 20) for _ in range(5))  # 5 MiB chunked, over the 4 MiB limit
    reply = post(impatient_server, "/v2/models/identity_bool/infer", oversize)
    assert reply.status_code == 413
    assert reply.json() == {"error": f"the request body is over this server's limit of {4 << 20} bytes "
                                     "(--http-max-body-bytes)"}
    assert server_still_serves(impatient_server)


BAD_FRAMING = [
    b"POST /v2/models/identity_bool/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /v2/models/identity_bool/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),  # TLS sent to the plain port
]


def send_raw(server, raw: bytes) -> bytes:
    host, port = server.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        return sock.recv(64)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_requests_the_http_parser_refuses_are_400_and_one_debug_line_not_an_error(repository, level):
    """A client's malformed HTTP is its own mistake: aiohttp's 400, no ERROR with a traceback in the server's log."""
    with ServerProcess(repository, "--log-level", level) as server:
        assert server_still_serves(server)
        started = len(server.log)  # (the shared repository's broken models log their own errors at start-up)
        for raw in BAD_FRAMING:
            assert send_raw(server, raw).startswith(b"HTTP/1.0 400"), raw
        assert server_still_serves(server)
        time.sleep(0.2)
        log = server.log[started:]
    assert "ERROR" not in log and "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "aiohttp.server" in line]
    if level == "DEBUG":
        assert len(lines) == len(BAD_FRAMING) and all(" DEBUG " in line and ": 400 " in line for line in lines), lines
        assert any("Invalid character in chunk size" in line for line in lines), lines
    else:
        assert lines == []


@pytest.mark.parametrize("body", [b"{}", b'{"inputs": "nope"}', b'{"inputs": [{"name": "X"}]}'])
def test_an_unknown_model_is_404_before_what_is_wrong_with_the_body(server, body):
    """The path names the model: as Triton, and as gRPC (whose body names it), an unknown model is said first."""
    reply = post(server, "/v2/models/no_such_model/infer", body, {"Content-Type": "application/json"})
    assert reply.status_code == 404 and "no_such_model" in reply.json()["error"], reply.text
    known = post(server, "/v2/models/simple/infer", b"{}", {"Content-Type": "application/json"})
    assert known.status_code == 400, known.text  # a known model: the body's fault, as before
