"""Request bytes built once: ids spliced in without re-encoding; inputs from metadata or a file."""

import re

import numpy as np
import pytest

from loadtest.wire import (
    Batch, InputTensor, add_batches, batch_delta, batch_inputs, describe_inputs, encode_request, encode_varint,
    SequenceBodies, file_inputs, file_rows, random_inputs, sequence_first_id, with_id,
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


def test_rows_need_a_batch_dimension():
    """A model whose inputs have fixed shapes takes one inference per request: --rows cannot be sent."""
    meta = pb.ModelMetadataResponse(name="m")
    meta.inputs.add(name="A", datatype="FP32", shape=[1, 16])
    with pytest.raises(ValueError, match=r"--rows 4: the model's inputs have no batch dimension .*A \[1, 16\]"):
        random_inputs(meta, rows=4, seed=0)
    [a] = random_inputs(meta, rows=1, seed=0)
    assert a.shape == (1, 16) and batch_inputs(meta) == set()


def test_the_inputs_sent_are_described():
    meta = pb.ModelMetadataResponse(name="m")
    meta.inputs.add(name="A", datatype="FP32", shape=[-1, -1, 3])
    meta.inputs.add(name="B", datatype="BYTES", shape=[-1])
    meta.inputs.add(name="C", datatype="INT32", shape=[2])
    tensors = random_inputs(meta, rows=2, seed=0)
    assert describe_inputs(meta, tensors) == [
        "A FP32 [2,1,3] random normal, open (-1) dimensions after the first sent as 1",
        "B BYTES [2] random 8-letter strings",
        "C INT32 [2] random integers 0-99",
    ]
    assert describe_inputs(meta, tensors[:1], "from x.npz") == ["A FP32 [2,1,3] from x.npz"]


def test_rows_of_inputs_from_a_file_count_only_a_batch_dimension():
    batched, fixed = pb.ModelMetadataResponse(name="m"), pb.ModelMetadataResponse(name="m")
    batched.inputs.add(name="A", datatype="FP32", shape=[-1, 4])
    fixed.inputs.add(name="A", datatype="FP32", shape=[4])
    tensors = [InputTensor("A", "FP32", (4,), bytes(16))]
    assert file_rows(batched, [InputTensor("A", "FP32", (3, 4), bytes(48))]) == 3
    assert file_rows(fixed, tensors) == 1  # one inference of shape [4], not 4 rows


@pytest.mark.parametrize("write, message", [
    (lambda p: np.save(p, np.ones((1, 16), np.float32)), "a .npy file holds one unnamed array"),
    (lambda p: p.write_text("INPUT0,1,2\n"), "not a .npz file of arrays"),
    (lambda p: np.savez(p, INPUT0=np.array([["a"]], dtype=object)), "array 'INPUT0': Object arrays cannot be loaded"),
    (lambda p: np.savez(p, INPUT0=np.ones((1, 16), np.complex64)), "array 'INPUT0': numpy dtype complex64"),
    (lambda p: np.savez(p), "no arrays"),
])
def test_a_file_that_cannot_be_sent_is_named_with_the_reason(tmp_path, write, message):
    path = tmp_path / "in.npz"
    write(path)
    if not path.exists():  # np.save adds .npy
        path = tmp_path / "in.npz.npy"
    with pytest.raises(ValueError, match=re.escape(f"--input-file {path}: {message}")):
        file_inputs(path)


def test_sequence_bodies_send_sequences_back_to_back_with_the_tensors_encoded_once():
    body = pb.ModelInferRequest(model_name="acc", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="INPUT0", datatype="FP32", shape=[1, 4])]).SerializeToString()
    first = sequence_first_id(point=0, process=1, slot=3)
    bodies = SequenceBodies(body, 3, first)

    sent = [pb.ModelInferRequest.FromString(bodies.next()) for _ in range(7)]

    assert all(r.model_name == "acc" and r.inputs[0].name == "INPUT0" for r in sent)  # the body merged in
    got = [(r.parameters["sequence_id"].int64_param - first, r.parameters["sequence_start"].bool_param,
            r.parameters["sequence_end"].bool_param) for r in sent]
    assert got == [(0, True, False), (0, False, False), (0, False, True), (1, True, False), (1, False, False),
                   (1, False, True), (2, True, False)]
    ids = {sequence_first_id(point, process, slot) for point in (0, 5) for process in (0, 3) for slot in (0, 1, 999)}
    assert len(ids) == 12 and max(ids) < 1 << 63  # distinct per point, process and slot; an int64_param
