"""HTTP request bodies built once: the binary extension as tritonclient sends it, and plain JSON."""

import json

import numpy as np
import pytest
import tritonclient.http as triton_http

from loadtest.http_wire import HEADER_LENGTH, encode_request, model_path
from loadtest.stats import HTTP_BASE, count_errors
from loadtest.wire import InputTensor, encode_array

ARRAY = np.arange(6, dtype=np.float32).reshape(2, 3) / 4


def _triton_input(binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("INPUT0", list(ARRAY.shape), "FP32")
    tensor.set_data_from_numpy(ARRAY, binary_data=binary)
    return tensor


def test_the_binary_body_is_the_one_tritonclient_sends():
    request = encode_request("mlp", "", [InputTensor("INPUT0", "FP32", ARRAY.shape, encode_array(ARRAY, "FP32"))],
                             binary=True)
    expected, header_length = triton_http.InferenceServerClient.generate_request_body([_triton_input(True)])
    assert request.body == expected
    assert dict(request.headers)[HEADER_LENGTH] == str(header_length)
    assert request.path == "/v2/models/mlp/infer"


def test_the_json_body_carries_the_values_and_asks_for_json_outputs():
    request = encode_request("mlp", "3", [InputTensor("INPUT0", "FP32", ARRAY.shape, encode_array(ARRAY, "FP32"))],
                             binary=False)
    body = json.loads(request.body)
    expected, _ = triton_http.InferenceServerClient.generate_request_body([_triton_input(False)])
    assert body["inputs"] == json.loads(expected)["inputs"]  # the same tensor, values row-major
    assert "parameters" not in body  # JSON outputs: what every Open Inference Protocol server returns
    assert dict(request.headers) == {"Content-Type": "application/json"}
    assert request.path == "/v2/models/mlp/versions/3/infer"


def test_bytes_travel_as_text_in_json_and_other_bytes_are_refused():
    words = np.array([b"ab", "ç".encode()], dtype=object)
    body = json.loads(encode_request("m", "", [InputTensor("T", "BYTES", (2,), encode_array(words, "BYTES"))],
                                     binary=False).body)
    assert body["inputs"][0]["data"] == ["ab", "ç"]
    raw = encode_array(np.array([b"\xff"], dtype=object), "BYTES")
    with pytest.raises(ValueError, match="not UTF-8 text.*--transport http-binary"):
        encode_request("m", "", [InputTensor("T", "BYTES", (1,), raw)], binary=False)
    assert encode_request("m", "", [InputTensor("T", "BYTES", (1,), raw)], binary=True).body.endswith(raw)


def test_model_names_are_quoted_in_the_path():
    assert model_path("a b/c", "") == "/v2/models/a%20b%2Fc"
    assert model_path("m", "1") == "/v2/models/m/versions/1"


def test_http_statuses_are_named_by_status_beside_grpc_codes():
    codes = np.array([0, HTTP_BASE + 429, HTTP_BASE + 429, HTTP_BASE + 400, 8, 4], dtype=np.int16)
    assert count_errors(codes) == {"DEADLINE_EXCEEDED": 1, "HTTP 400": 1, "HTTP 429": 2, "RESOURCE_EXHAUSTED": 1}
