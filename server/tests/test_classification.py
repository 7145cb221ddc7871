"""Triton's classification extension (tritonclient's ``class_count=``) against a real fleetserve.

Every answer is checked against strings computed here: by hand for the protocol's own example,
else by sorting the values the model gave (onnxruntime in process, or an identity model's input)
with Python and formatting them with C's ``%f`` (libc, through ctypes), which is what Triton's
``std::to_string`` writes. Over gRPC, the stream and REST (JSON and binary), with and without
labels, for every datatype, and each request that is refused, with its status and message.
"""

from __future__ import annotations

import ctypes
import json
import queue
import struct
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc

from model_store.datatypes import BY_NAME
from model_store.testing import reference_outputs
from server.classification import CLASSIFIABLE, classify_outputs
from server.tests.conftest import FEW_LABELS, LABELS
from server.types import OutputTensor

_LIBC = ctypes.CDLL(None)
WHAT = "the 'classification' parameter (tritonclient's class_count: how many top classes to return)"


def c_text(value: float) -> bytes:
    """``value`` as C's printf("%f") writes it: what std::to_string gives Triton for FP32 and FP64."""
    buffer = ctypes.create_string_buffer(512)
    _LIBC.snprintf(buffer, len(buffer), b"%f", ctypes.c_double(value))
    return buffer.value


def expected(values: Any, k: int, labels: tuple[bytes, ...] = ()) -> list[bytes]:
    """One row's classes as Triton writes them: highest value first; where Triton leaves the order open,
    equal values lowest index first and NaN last."""
    row = np.asarray(values).reshape(-1)
    integer = row.dtype.kind in "iu"
    numbers = row.tolist()

    def rank(i: int) -> tuple:
        nan = numbers[i] != numbers[i]
        return nan, 0 if nan else -numbers[i], i

    out = []
    order = sorted(range(len(numbers)), key=rank)[:k]
    for i in order:
        text = (b"%d" % numbers[i] if integer else c_text(numbers[i])) + b":%d" % i
        out.append(text + b":" + labels[i] if i < len(labels) and labels[i] else text)
    return out


@pytest.fixture(scope="module")
def client(server):
    c = tc.InferenceServerClient(server.grpc_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def rest(server):
    c = th.InferenceServerClient(server.http_url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def grpc_inputs(arrays: dict[str, np.ndarray]) -> list[tc.InferInput]:
    inputs = []
    for name, arr in arrays.items():
        inp = tc.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else tc.np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def rest_inputs(arrays: dict[str, np.ndarray], binary: bool = True) -> list[th.InferInput]:
    inputs = []
    for name, arr in arrays.items():
        inp = th.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else th.np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def classes(result: Any, name: str) -> list:
    """An output's classes as nested lists of bytes (REST JSON gives str)."""
    return np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(
        result.as_numpy(name)).tolist()


# Triton's documented example: output [1.1, 3.3, 0.5, 2.4] with 2 classes is "3.3:1", "2.4:3", then the labels
# (its documentation shortens the values; its code writes six digits after the point).
LABELLED = {"INPUT0": np.array([[1.1, 3.3, 0.5, 2.4], [4, 3, 2, 1]], np.float32),
            "INPUT1": np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.float32)}
LABELLED_OUTPUT0 = [[b"3.300000:1:dog", b"2.400000:3:bird"], [b"5.000000:0:cat", b"4.000000:1:dog"]]
# OUTPUT1 (INPUT0 - INPUT1) has four classes, more asked: few.txt leaves class 1 unnamed and class 3 past its end.
LABELLED_OUTPUT1 = [[b"3.300000:1", b"2.400000:3", b"1.100000:0:zero", b"0.500000:2:two"],
                    [b"3.000000:0:zero", b"2.000000:1", b"1.000000:2:two", b"0.000000:3"]]


def test_grpc_answers_each_row_with_its_top_classes_and_labels(client):
    result = client.infer("labelled", grpc_inputs(LABELLED), outputs=[
        tc.InferRequestedOutput("OUTPUT0", class_count=2), tc.InferRequestedOutput("OUTPUT1", class_count=10)])
    assert classes(result, "OUTPUT0") == LABELLED_OUTPUT0
    assert classes(result, "OUTPUT1") == LABELLED_OUTPUT1
    for name, shape in (("OUTPUT0", [2, 2]), ("OUTPUT1", [2, 4])):
        output = result.get_output(name)
        assert (output.datatype, list(output.shape)) == ("BYTES", shape)
    assert [expected(row, 2, LABELS) for row in LABELLED["INPUT0"] + LABELLED["INPUT1"]] == LABELLED_OUTPUT0
    assert [expected(row, 10, FEW_LABELS) for row in LABELLED["INPUT0"] - LABELLED["INPUT1"]] == LABELLED_OUTPUT1


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rest_answers_the_same_as_json_strings_or_binary_data(rest, binary):
    result = rest.infer("labelled", rest_inputs(LABELLED), outputs=[
        th.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=2),
        th.InferRequestedOutput("OUTPUT1", binary_data=binary, class_count=10)])
    assert classes(result, "OUTPUT0") == LABELLED_OUTPUT0
    assert classes(result, "OUTPUT1") == LABELLED_OUTPUT1
    output = result.get_output("OUTPUT0")
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 2])
    assert ("data" in output) is not binary


def test_the_rest_body_holds_the_strings_as_triton_writes_it(server):
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [2, 4], "data": a.tolist()} for n, a in LABELLED.items()],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}},
                        {"name": "OUTPUT1", "parameters": {"classification": 3, "binary_data": True}}]}
    reply = requests.post(server.http_url + "/v2/models/labelled/infer", data=json.dumps(body), timeout=30)
    assert reply.status_code == 200, reply.text
    length = int(reply.headers["Inference-Header-Content-Length"])
    head = json.loads(reply.content[:length])
    elements = [row[:3] for row in LABELLED_OUTPUT1]
    raw = b"".join(struct.pack("<I", len(e)) + e for row in elements for e in row)
    assert head["outputs"] == [
        {"name": "OUTPUT0", "datatype": "BYTES", "shape": [2, 2],
         "data": [e.decode() for row in LABELLED_OUTPUT0 for e in row]},
        {"name": "OUTPUT1", "datatype": "BYTES", "shape": [2, 3], "parameters": {"binary_data_size": len(raw)}}]
    assert reply.content[length:] == raw


def test_the_stream_answers_classes_and_tensors_side_by_side(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("labelled", grpc_inputs(LABELLED), request_id="classes",
                                  outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=2)])
        client.async_stream_infer("labelled", grpc_inputs(LABELLED), request_id="tensor",
                                  outputs=[tc.InferRequestedOutput("OUTPUT0")])
        got = {}
        for _ in range(2):
            result, error = responses.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = result
    finally:
        client.stop_stream()
    assert classes(got["classes"], "OUTPUT0") == LABELLED_OUTPUT0
    np.testing.assert_array_equal(got["tensor"].as_numpy("OUTPUT0"), LABELLED["INPUT0"] + LABELLED["INPUT1"])


def test_a_request_of_the_same_structure_decoded_from_its_template_is_classified_too(client):
    """The gRPC decoder reuses a request's structure for the next ones alike (RequestDecoder): a classification
    request must not be answered as the tensor the first time or any later one, nor a plain one as classes."""
    plain = [tc.InferRequestedOutput("OUTPUT0")]
    for k in (2, 2, 2, 3):
        result = client.infer("labelled", grpc_inputs(LABELLED), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=k)])
        assert classes(result, "OUTPUT0") == [expected(row, k, LABELS) for row in LABELLED["INPUT0"] + LABELLED["INPUT1"]]
        tensor = client.infer("labelled", grpc_inputs(LABELLED), outputs=plain).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(tensor, LABELLED["INPUT0"] + LABELLED["INPUT1"])


def test_a_model_without_batching_gets_one_row_of_classes_over_every_element(client, repository):
    """nobatch gives [1, 8] (Relu: zeros tie, lowest index first); Triton answers shape [min(k, 8)]."""
    x = {"INPUT0": np.random.default_rng(8).standard_normal((1, 16), dtype=np.float32)}
    values = reference_outputs(repository / "nobatch" / "1" / "model.onnx", x)["OUTPUT0"]
    assert (values == 0).sum() >= 2, values  # ties to order
    for k in (3, 8, 20):
        result = client.infer("nobatch", grpc_inputs(x), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=k)])
        assert classes(result, "OUTPUT0") == expected(values, k)
        assert list(result.get_output("OUTPUT0").shape) == [min(k, 8)]


def test_the_dims_after_the_batch_are_flattened_and_ties_go_lowest_index_first(client):
    x = np.array([[[1, 7, 7], [0, 7, -1]], [[2, 2, 2], [2, 2, 2]]], np.float32)  # grid: rows of 2 x 3
    result = client.infer("grid", grpc_inputs({"INPUT0": x}), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=4)])
    assert classes(result, "OUTPUT0") == [
        [b"7.000000:1", b"7.000000:2", b"7.000000:4", b"1.000000:0"],
        [b"2.000000:0", b"2.000000:1", b"2.000000:2", b"2.000000:3"]]
    assert list(result.get_output("OUTPUT0").shape) == [2, 4]


def bits32(word: int) -> float:
    return float(np.array([word], "<u4").view("<f4")[0])


# Per datatype, two rows of three values: each type's extremes, ties, and the float formats' odd corners.
VALUES: dict[str, list[list[Any]]] = {
    "UINT8": [[0, 255, 3], [7, 7, 7]],
    "UINT16": [[65535, 1, 1], [0, 2, 1]],
    "UINT32": [[7, 4294967295, 0], [1, 3, 2]],
    "UINT64": [[(1 << 64) - 1, 1, 1 << 63], [5, 5, 6]],
    "INT8": [[-128, 127, -1], [-128, -128, -127]],
    "INT16": [[-32768, 5, -5], [0, 0, 0]],
    "INT32": [[-(1 << 31), (1 << 31) - 1, 0], [-1, -2, -3]],
    "INT64": [[-(1 << 63), (1 << 63) - 1, -(1 << 63)], [9, 8, 10]],
    "FP32": [[0.1, float("-inf"), 3.4e38], [0.0078125, -0.0, bits32(0xFFC00000)]],  # a tie to round; -nan
    "FP64": [[1 / 3, -2.5e-7, 1e20], [float("inf"), float("nan"), 123456.7890125]],
}


@pytest.mark.parametrize("datatype", CLASSIFIABLE)
@pytest.mark.parametrize("transport", ["grpc", "json", "binary"])
def test_every_numeric_datatype_is_classified_as_triton_writes_its_values(client, rest, datatype, transport):
    x = np.array(VALUES[datatype], BY_NAME[datatype].numpy)
    model = f"identity_{datatype.lower()}"
    if transport == "grpc":
        result = client.infer(model, grpc_inputs({"INPUT0": x}), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=3)])
    else:
        result = rest.infer(model, rest_inputs({"INPUT0": x}), outputs=[
            th.InferRequestedOutput("OUTPUT0", binary_data=transport == "binary", class_count=3)])
    assert classes(result, "OUTPUT0") == [expected(row, 3) for row in x]


def test_nan_ranks_last_and_keeps_its_sign_as_c_writes_it(client):
    x = np.array(VALUES["FP32"], np.float32)
    result = client.infer("identity_fp32", grpc_inputs({"INPUT0": x}),
                          outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=3)])
    assert classes(result, "OUTPUT0")[1] == [b"0.007812:0", b"-0.000000:1", b"-nan:2"]


def test_values_are_written_as_c_writes_them():
    """The formatting alone, through the dataplane's seam, against libc's printf for awkward FP32 values."""
    words = [0x3F8CCCCD, 0x7F7FFFFF, 0x00000001, 0x80000000, 0x7FC00000, 0xFFC00000, 0x7F800000, 0x3C000000,
             0x4B3C614F, 0xBE4CCCCD]
    row = np.array([words], "<u4").view("<f4")
    out = classify_outputs([OutputTensor("OUTPUT0", "FP32", row.shape, row)], {"OUTPUT0": 10}, True, {})[0]
    written = {int(e.rsplit(b":", 1)[1]): e.rsplit(b":", 1)[0] for e in out.data.reshape(-1)}
    assert written == {i: c_text(float(v)) for i, v in enumerate(row[0])}


def test_a_tensor_and_its_classes_in_one_request(client):
    result = client.infer("labelled", grpc_inputs(LABELLED), outputs=[
        tc.InferRequestedOutput("OUTPUT0"), tc.InferRequestedOutput("OUTPUT1", class_count=1)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), LABELLED["INPUT0"] + LABELLED["INPUT1"])
    assert classes(result, "OUTPUT1") == [[b"3.300000:1"], [b"3.000000:0:zero"]]


def test_rest_classification_0_asks_for_the_tensor_as_triton_reads_it(server):
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [2, 4], "data": a.tolist()} for n, a in LABELLED.items()],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 0}}]}
    reply = requests.post(server.http_url + "/v2/models/labelled/infer", data=json.dumps(body), timeout=30)
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("FP32", [2, 4])
    assert output["data"] == (LABELLED["INPUT0"] + LABELLED["INPUT1"]).reshape(-1).tolist()


REFUSED_DATATYPES = {
    "identity_bool": ("BOOL", np.array([[True, False, True]])),
    "identity_fp16": ("FP16", np.array([[1, 2, 3]], np.float16)),
    "identity_bytes": ("BYTES", np.array([[b"a", b"b", b"c"]], object)),
    "bf16": ("BF16", np.array([[1, 2, 3]], np.uint16)),
}


@pytest.mark.parametrize("model", sorted(REFUSED_DATATYPES))
def test_an_output_without_numeric_values_is_refused_on_both_transports(client, rest, model):
    datatype, x = REFUSED_DATATYPES[model]
    message = (f"model '{model}' output 'OUTPUT0' is {datatype}: {WHAT} needs a numeric output "
               f"({', '.join(CLASSIFIABLE)}); request the output without it")
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer(model, grpc_inputs({"INPUT0": x}), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=2)])
    assert (err.value.status(), err.value.message()) == ("StatusCode.INVALID_ARGUMENT", message)
    with pytest.raises(th.InferenceServerException) as rest_err:
        rest.infer(model, rest_inputs({"INPUT0": x}), outputs=[th.InferRequestedOutput("OUTPUT0", class_count=2)])
    assert (rest_err.value.status(), rest_err.value.message()) == ("400", message)


def grpc_request(parameter: service_pb2.InferParameter) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name="labelled")
    for name, arr in LABELLED.items():
        msg.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        msg.raw_input_contents.append(arr.tobytes())
    msg.outputs.add(name="OUTPUT0").parameters["classification"].CopyFrom(parameter)
    return msg


@pytest.mark.parametrize("parameter, said", [
    (service_pb2.InferParameter(int64_param=0), "must be at least 1, got 0"),
    (service_pb2.InferParameter(int64_param=-3), "must be at least 1, got -3"),
    (service_pb2.InferParameter(string_param="3"), "must be an int64_param, got string_param '3'"),
    (service_pb2.InferParameter(uint64_param=3), "must be an int64_param, got uint64_param 3"),
    (service_pb2.InferParameter(), "must be an int64_param, got no value"),
], ids=["zero", "negative", "string", "uint64", "unset"])
def test_grpc_refuses_a_count_that_is_not_an_int64_of_at_least_1(stub, parameter, said):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(grpc_request(parameter))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"output 'OUTPUT0': {WHAT} {said}"


def test_tritonclient_grpc_with_a_negative_class_count_is_refused(client):
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer("labelled", grpc_inputs(LABELLED), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=-1)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.value.message() == f"output 'OUTPUT0': {WHAT} must be at least 1, got -1"


@pytest.mark.parametrize("value, shown", [
    (-1, "-1"), ("3", '"3"'), (True, "true"), (2.0, "2.0"), (None, "null"), (1 << 64, str(1 << 64)), ([3], "[3]"),
], ids=["negative", "string", "bool", "float", "null", "past-uint64", "list"])
def test_rest_refuses_a_count_that_is_not_a_whole_number(server, value, shown):
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [2, 4], "data": a.tolist()} for n, a in LABELLED.items()],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": value}}]}
    reply = requests.post(server.http_url + "/v2/models/labelled/infer", data=json.dumps(body), timeout=30)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == (f"output 'OUTPUT0': {WHAT} must be a whole number from 0 to 2**64 - 1 (0 returns "
                                     f"the output as a tensor), got {shown}")


def test_tritonclient_http_with_a_negative_class_count_is_refused(rest):
    with pytest.raises(th.InferenceServerException) as err:
        rest.infer("labelled", rest_inputs(LABELLED), outputs=[th.InferRequestedOutput("OUTPUT0", class_count=-1)])
    assert err.value.status() == "400" and "must be a whole number from 0 to 2**64 - 1" in err.value.message()


def test_an_unknown_model_is_said_before_a_bad_count(client):
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer("nope", grpc_inputs(LABELLED), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=-1)])
    assert err.value.status() == "StatusCode.NOT_FOUND"
