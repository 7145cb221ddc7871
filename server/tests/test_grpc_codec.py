"""RequestDecoder: a request decoded from a template is the request the full decoder makes.
ResponseEncoder: a response's bytes are the bytes protobuf writes for the same message."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ops.errors import InvalidInput, ServingError
from model_store.datatypes import BY_NAME
from server.codec import to_raw
from server.grpc_codec import RequestDecoder, ResponseEncoder, _split, decode_infer_request, parse_infer_request
from server.protos import grpc_service_pb2 as pb
from server.types import InferResponse, OutputTensor


def _request(rid: str, seed: int, *, inputs=(("INPUT0", "FP32", (1, 16)),), outputs=(), parameters=None,
             version: str = "", raw: bool = True) -> bytes:
    msg = pb.ModelInferRequest(model_name="m", model_version=version, id=rid)
    rng = np.random.default_rng(seed)
    for name, datatype, shape in inputs:
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=shape)
        if datatype == "BYTES":
            values = [f"v{seed}-{i}".encode() for i in range(int(np.prod(shape)))]
            if raw:
                msg.raw_input_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in values))
            else:
                tensor.contents.bytes_contents.extend(values)
            continue
        data = (rng.standard_normal(shape) * 100).astype({"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}[datatype])
        if raw:
            msg.raw_input_contents.append(data.tobytes())
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(data.reshape(-1).tolist())
        else:
            tensor.contents.int64_contents.extend(data.reshape(-1).tolist())
    for name in outputs:
        msg.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        param = msg.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        else:
            param.string_param = value
    return msg.SerializeToString()


def _full(data: bytes):
    return decode_infer_request(parse_infer_request(data), None)


def _same(a, b) -> None:
    assert (a.model_name, a.model_version, a.id, a.requested_outputs, a.parameters) == \
        (b.model_name, b.model_version, b.id, b.requested_outputs, b.parameters)
    assert [(t.name, t.datatype, t.shape, t.data.dtype) for t in a.inputs] == \
        [(t.name, t.datatype, t.shape, t.data.dtype) for t in b.inputs]
    for x, y in zip(a.inputs, b.inputs):
        np.testing.assert_array_equal(x.data, y.data)


@pytest.mark.parametrize("kind, reused", [
    (dict(), True),
    (dict(outputs=("OUTPUT0",), parameters={"triton_enable_empty_final_response": True, "priority": 2}), True),
    (dict(inputs=(("A", "FP32", (3, 4)), ("B", "INT64", (3, 1)), ("C", "UINT8", (3, 2))), version="2"), True),
    (dict(raw=False), False),  # typed contents are part of the structure: every request its own
    (dict(inputs=(("S", "BYTES", (1, 2)),)), False),  # BYTES: no fixed size to check
])
def test_a_request_like_an_earlier_one_decodes_from_its_template_as_in_full(kind, reused):
    decoder = RequestDecoder()
    first = decoder.decode(_request("a", 1, **kind), 5.0)
    _same(first, _full(_request("a", 1, **kind)))
    for i in range(2, 5):
        data = _request(f"request-{i}", i, **kind)
        _same(decoder.decode(data, None), _full(data))
    assert decoder.reused == (3 if reused else 0)
    assert first.deadline is not None and decoder.decode(_request("b", 9, **kind), None).deadline is None


def test_a_request_that_does_not_fit_its_template_gets_the_full_decoders_error():
    decoder = RequestDecoder()
    decoder.decode(_request("a", 1), None)
    msg = pb.ModelInferRequest.FromString(_request("b", 2))
    msg.raw_input_contents[0] = bytes(60)  # 15 floats for a [1, 16] input
    with pytest.raises(InvalidInput, match=r"raw contents hold 60 bytes, but shape \[1, 16\] of FP32 needs 64"):
        decoder.decode(msg.SerializeToString(), None)
    msg.raw_input_contents.append(bytes(64))  # a second raw content for one input
    with pytest.raises(InvalidInput, match="1 inputs but 2 raw_input_contents"):
        decoder.decode(msg.SerializeToString(), None)
    bad_id = _request("a", 1).replace(b"\x1a\x01a", b"\x1a\x01\xff")  # the id, not UTF-8
    with pytest.raises(InvalidInput, match="not a valid ModelInferRequest"):
        decoder.decode(bad_id, None)
    assert decoder.reused == 0
    with pytest.raises(InvalidInput, match="not a valid ModelInferRequest"):
        decoder.decode(b"\x0a\x05ab", None)  # the model name runs past the end


def test_each_request_gets_its_own_parameters_and_outputs():
    decoder = RequestDecoder()
    kind = dict(outputs=("OUTPUT0",), parameters={"priority": 1})
    first = decoder.decode(_request("a", 1, **kind), None)
    second = decoder.decode(_request("b", 2, **kind), None)
    second.parameters["priority"] = 7
    second.requested_outputs.append("X")
    third = decoder.decode(_request("c", 3, **kind), None)
    assert decoder.reused == 2 and first.parameters == third.parameters == {"priority": 1}
    assert third.requested_outputs == ["OUTPUT0"]


def test_the_template_table_starts_over_when_full():
    decoder = RequestDecoder(capacity=2)
    for model_version in ("1", "2", "3", "1"):
        decoder.decode(_request("a", 1, version=model_version), None)
    assert decoder.reused == 0  # "3" found the table full and emptied it, so "1" was decoded in full again
    decoder.decode(_request("b", 2, version="3"), None)
    assert decoder.reused == 1


def test_the_structure_key_leaves_out_the_id_and_raw_contents_only():
    a, b = _split(_request("a", 1, outputs=("O",))), _split(_request("bbbbbb", 2, outputs=("O",)))
    assert a is not None and b is not None
    assert a[0] == b[0] and (a[1], b[1]) == (b"a", b"bbbbbb")
    assert bytes(b[2][0]) == pb.ModelInferRequest.FromString(_request("bbbbbb", 2)).raw_input_contents[0]
    assert _split(_request("a", 1, outputs=("O", "P")))[0] != a[0]  # type: ignore[index]
    big = _request("a", 1, inputs=(("INPUT0", "FP32", (64, 256)),))  # a 64 KB raw content: a 3-byte length
    assert _split(big) is not None and len(_split(big)[2][0]) == 64 * 256 * 4  # type: ignore[index]
    unknown_field_16 = _request("a", 1) + b"\x82\x01\x00"
    assert _split(unknown_field_16) is None  # a two-byte tag: decoded in full
    assert RequestDecoder().decode(unknown_field_16, None).id == "a"


def _response(rid: str, rows: int, version: str = "1") -> InferResponse:
    rng = np.random.default_rng(rows)
    return InferResponse("model", version, rid, [
        OutputTensor("OUTPUT0", "FP32", (rows, 16), rng.standard_normal((rows, 16)).astype(np.float32)),
        OutputTensor("IDS", "INT64", (rows,), rng.integers(-5, 5, rows)),
        OutputTensor("BIG", "FP32", (rows, 300), np.ones((rows, 300), ">f4")),  # big-endian in, little-endian out
        OutputTensor("TEXT", "BYTES", (rows,), np.array([b"x" * i for i in range(rows)], dtype=object)),
        OutputTensor("NONE", "FP32", (0, 4), np.zeros((0, 4), np.float32)),  # an empty raw content
        OutputTensor("SCALAR", "INT32", (), np.array(7, np.int32)),  # no shape at all
    ])


def _protobuf(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for out in response.outputs:
        msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        msg.raw_output_contents.append(to_raw(out.data, BY_NAME[out.datatype]))
    return msg


@pytest.mark.parametrize("rid, rows, version", [
    ("r1", 1, "1"), ("", 3, "1"), ("a" * 200, 64, "12"), ("r2", 1, ""),  # a 200-byte id: a two-byte length
])
def test_a_response_is_written_as_protobuf_writes_it(rid, rows, version):
    encoder = ResponseEncoder()
    response = _response(rid, rows, version)
    for _ in range(2):  # the first serialises its parts, the second reuses them
        assert encoder.encode(response) == _protobuf(response).SerializeToString()
        stream = pb.ModelStreamInferResponse()
        stream.infer_response.CopyFrom(_protobuf(response))
        stream.infer_response.parameters["triton_final_response"].bool_param = True  # each is its request's last
        assert encoder.encode_stream(response) == stream.SerializeToString()
    decoded = pb.ModelInferResponse.FromString(encoder.encode(response))
    assert decoded.id == rid and list(decoded.outputs[0].shape) == [rows, 16]
    assert np.array_equal(np.frombuffer(decoded.raw_output_contents[2], "<f4"), np.ones(rows * 300))


def test_the_encoders_table_starts_over_when_full():
    encoder = ResponseEncoder(capacity=4)
    for rows in range(1, 20):  # a new shape per row count: the table fills and empties, the bytes stay right
        assert encoder.encode(_response("r", rows)) == _protobuf(_response("r", rows)).SerializeToString()
    assert len(encoder._parts) <= 4


def test_an_output_in_shared_memory_is_written_there_and_answered_without_data(tmp_path):
    """Its entry carries the region's parameters and an empty raw content, so the outputs after it keep
    theirs at their index; the bytes parse as the protobuf message they stand for."""
    from server.shared_memory import SharedObject, TensorRegion

    path = tmp_path / "object"
    path.write_bytes(bytes(24))
    file = SharedObject(os.open(path, os.O_RDWR))
    place = TensorRegion("out", 8, 16, file, 8)
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    response = InferResponse("m", "1", "r", [OutputTensor("A", "FP32", (1, 4), data),
                                             OutputTensor("B", "FP32", (1, 4), data + 1)],
                             output_regions={"A": place})
    decoded = pb.ModelInferResponse.FromString(ResponseEncoder().encode(response))
    assert path.read_bytes()[8:] == data.tobytes()
    params = {k: v.string_param or v.int64_param for k, v in decoded.outputs[0].parameters.items()}
    assert params == {"shared_memory_region": "out", "shared_memory_byte_size": 16, "shared_memory_offset": 8}
    assert list(decoded.outputs[0].shape) == [1, 4] and decoded.outputs[0].datatype == "FP32"
    assert decoded.raw_output_contents[0] == b"" and decoded.raw_output_contents[1] == (data + 1).tobytes()
    too_small = TensorRegion("out", 0, 8, file, 0)
    with pytest.raises(InvalidInput, match="output 'A': its 16 bytes do not fit in the 8 bytes given for it"):
        ResponseEncoder().encode(InferResponse("m", "1", "r", response.outputs, output_regions={"A": too_small}))


def test_a_request_with_an_output_in_shared_memory_is_never_a_template():
    """Each such request has its own place in shared memory: decoded in full, never from a template."""
    import uuid

    import tritonclient.utils.shared_memory as shm

    from server.shared_memory import SharedMemoryRegistry

    key = f"/fleetserve-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("codec", key, 16, create_only=True)
    regions = SharedMemoryRegistry()
    try:
        regions.register("codec", key, 0, 16)
        decoder = RequestDecoder(regions=regions)
        msg = pb.ModelInferRequest(model_name="m")
        msg.inputs.add(name="X", datatype="FP32", shape=[1, 2])
        msg.raw_input_contents.append(bytes(8))
        msg.outputs.add(name="Y").parameters["shared_memory_region"].string_param = "codec"
        msg.outputs[0].parameters["shared_memory_byte_size"].int64_param = 8
        for offset in (0, 0, 8):  # the second: the same bytes as the first
            msg.outputs[0].parameters["shared_memory_offset"].int64_param = offset
            request = decoder.decode(msg.SerializeToString(), None)
            assert request.output_regions is not None and request.output_regions["Y"].offset == offset
        assert decoder.reused == 0
        msg.outputs[0].parameters["shared_memory_offset"].int64_param = 12
        with pytest.raises(InvalidInput, match="shared_memory_offset 12 and shared_memory_byte_size 8 run past the end"):
            decoder.decode(msg.SerializeToString(), None)
        regions.unregister("codec")
        with pytest.raises(ServingError, match="no system shared-memory region named 'codec' is registered"):
            decoder.decode(msg.SerializeToString(), None)
    finally:
        regions.close()
        shm.destroy_shared_memory_region(handle)
