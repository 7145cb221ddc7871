"""Request bytes built once: ids spliced in without re-encoding; inputs from metadata or a file."""

import numpy as np
import pytest

from loadtest.wire import (
    Batch, InputTensor, add_batches, batch_delta, encode_request, encode_varint, file_inputs, random_inputs, with_id,
)
from server.protos import grpc_service_pb2 as pb


@pytest.mark.parametrize("request_id", ["7", "s63", "x" * 200])
def test_with_id_sets_the_id_of_an_encoded_request(request_id):
    body = encode_request("mlp", "2", [InputTensor("INPUT0", "FP32", (1, 2), np.ones(2, np.float32).tobytes())])
    request = pb.ModelInferRequest.FromString(with_id(body, request_id.encode()))
    assert request.id == request_id and request.model_name == "mlp" and request.model_version == "2"
    assert list(request.inputs[0].shape) == [1, 2]
    assert np.frombuffer(request.raw_input_contents[0], np.float32).tolist() == [1, 1]


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32])
def test_varint(n):
    from google.protobuf.internal.encoder import _VarintBytes

    assert encode_varint(n) == _VarintBytes(n)


def test_random_inputs_follow_the_metadata():
    meta = pb.ModelMetadataResponse(name="m")
    meta.inputs.add(name="A", datatype="FP32", shape=[-1, 16])
    meta.inputs.add(name="B", datatype="INT64", shape=[-1, -1])
    meta.inputs.add(name="C", datatype="BYTES", shape=[2])
    a, b, c = random_inputs(meta, rows=4, seed=1)
    assert (a.shape, b.shape, c.shape) == ((4, 16), (4, 1), (2,))
    assert len(a.raw) == 4 * 16 * 4 and len(b.raw) == 4 * 8
    assert c.raw[:4] == (8).to_bytes(4, "little") and len(c.raw) == 2 * 12
    assert random_inputs(meta, rows=4, seed=1) == [a, b, c]  # seeded
    assert random_inputs(meta, rows=4, seed=2)[0] != a


def test_inputs_from_a_npz_file(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, INPUT0=np.arange(6, dtype=np.float32).reshape(3, 2), IDS=np.array([[1], [2], [3]], np.int32))
    tensors = {t.name: t for t in file_inputs(path)}
    assert tensors["INPUT0"].datatype == "FP32" and tensors["INPUT0"].shape == (3, 2)
    assert np.frombuffer(tensors["INPUT0"].raw, np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    assert tensors["IDS"].datatype == "INT32"


def test_batch_statistics_delta():
    before = Batch(100, 50, ((1, 20), (2, 30)))
    after = Batch(400, 80, ((1, 20), (2, 40), (16, 20)))
    assert batch_delta(before, after) == ({2: 10, 16: 20}, 300 / 30)
    assert batch_delta(after, after) == ({}, None)
    assert add_batches(before, Batch(1, 1, ((1, 1), (8, 1)))) == Batch(101, 51, ((1, 21), (2, 30), (8, 1)))
