"""Response-cache keys and values: what makes two requests the same, and the round trip through bytes."""

from __future__ import annotations

import numpy as np

from model_store.config import ModelConfig, TensorSpec
from model_store.datatypes import BY_NAME
from server.cache_codec import (
    KEY_BYTES,
    config_digest,
    decode_outputs,
    encode_outputs,
    key_prefix,
    request_key,
    version_digest,
)
from server.types import InputTensor

PREFIX = key_prefix("m", "1", b"config", b"weights")


def tensor(name: str, datatype: str, shape: tuple[int, ...], data: bytes) -> InputTensor:
    return InputTensor(name, datatype, shape, np.frombuffer(data, BY_NAME[datatype].numpy).reshape(shape))


def key(*inputs: InputTensor, requested=None, prefix=PREFIX) -> bytes:
    return request_key(prefix, list(inputs), requested)


DATA = bytes(range(16))


def test_keys_are_256_bit_and_stable():
    k = key(tensor("INPUT0", "FP32", (1, 4), DATA))
    assert len(k) == KEY_BYTES == 32 and k == key(tensor("INPUT0", "FP32", (1, 4), DATA))


def test_same_bytes_with_another_shape_or_datatype_is_another_key():
    base = key(tensor("INPUT0", "FP32", (1, 4), DATA))
    assert key(tensor("INPUT0", "FP32", (2, 2), DATA)) != base  # shape
    assert key(tensor("INPUT0", "FP32", (4, 1), DATA)) != base
    assert key(tensor("INPUT0", "INT32", (1, 4), DATA)) != base  # datatype
    assert key(tensor("INPUT0", "UINT8", (1, 16), DATA)) != key(tensor("INPUT0", "INT8", (1, 16), DATA))
    assert key(tensor("INPUT1", "FP32", (1, 4), DATA)) != base  # name


def test_model_version_config_weights_and_requested_outputs_are_in_the_key():
    t = tensor("INPUT0", "FP32", (1, 4), DATA)
    base = key(t)
    for prefix in (key_prefix("n", "1", b"config", b"weights"), key_prefix("m", "2", b"config", b"weights"),
                   key_prefix("m", "1", b"config2", b"weights"), key_prefix("m", "1", b"config", b"weights2")):
        assert key(t, prefix=prefix) != base
    assert key(t, requested=["OUTPUT0"]) != base
    assert key(t, requested=["OUTPUT0", "OUTPUT1"]) != key(t, requested=["OUTPUT1", "OUTPUT0"])


def test_input_order_does_not_matter_and_fields_cannot_run_together():
    a, b = tensor("A", "UINT8", (1, 2), b"xy"), tensor("B", "UINT8", (1, 2), b"zw")
    assert key(a, b) == key(b, a)
    ab = InputTensor("AB", "BYTES", (1, 1), np.array([[b"c"]], dtype=object))
    a_bc = InputTensor("A", "BYTES", (1, 1), np.array([[b"Bc"]], dtype=object))
    assert key(ab) != key(a_bc)
    two = InputTensor("S", "BYTES", (1, 2), np.array([[b"ab", b"c"]], dtype=object))
    other = InputTensor("S", "BYTES", (1, 2), np.array([[b"a", b"bc"]], dtype=object))
    assert key(two) != key(other)


def test_a_noncontiguous_view_hashes_like_its_copy():
    array = np.arange(16, dtype=np.float32).reshape(4, 4)
    view = InputTensor("INPUT0", "FP32", (4, 2), array[:, ::2])
    copy = InputTensor("INPUT0", "FP32", (4, 2), np.ascontiguousarray(array[:, ::2]))
    assert key(view) == key(copy)


def test_values_round_trip_numbers_and_bytes():
    outputs = {"OUT": np.arange(6, dtype=np.float16).reshape(2, 3),
               "TEXT": np.array([[b"a", b""], [b"\xff", b"long" * 10]], dtype=object),
               "FLAG": np.array([True, False])}
    blob = encode_outputs(outputs, {"OUT": "FP16", "TEXT": "BYTES", "FLAG": "BOOL"})
    back = decode_outputs(blob)
    assert list(back) == ["OUT", "TEXT", "FLAG"]
    for name, array in outputs.items():
        assert back[name].shape == array.shape and back[name].tolist() == array.tolist()


def test_unreadable_values_are_refused():
    for blob in (b"", b"nope", encode_outputs({"X": np.zeros(2, np.float32)}, {"X": "FP32"})[:-1]):
        try:
            decode_outputs(blob)
        except ValueError:
            continue
        raise AssertionError(f"{blob!r} decoded")


def test_the_config_digest_follows_the_config():
    spec = (TensorSpec("INPUT0", BY_NAME["FP32"], (4,)),)
    a = ModelConfig("m", 8, spec, spec, response_cache=True)
    b = ModelConfig("m", 8, spec, spec, response_cache=True, response_cache_ttl_s=5.0, parameters={"x": "1"})
    assert config_digest(a) == config_digest(a) and config_digest(a) != config_digest(b)


def test_the_version_digest_covers_every_file_the_model_may_read(tmp_path):
    """ONNX external data lives beside (or below) model.onnx: new weights there, the same model.onnx."""
    version = tmp_path / "1"
    (version / "data").mkdir(parents=True)
    model = version / "model.onnx"
    model.write_bytes(b"graph")
    (version / "weights.bin").write_bytes(b"old")
    (version / "data" / "more.bin").write_bytes(b"old")
    first = version_digest(str(model))
    assert version_digest(str(model)) == first
    (version / ".model.onnx.swp").write_bytes(b"an editor's")  # hidden: not the model's
    assert version_digest(str(model)) == first
    digests = {first}
    for path in (version / "weights.bin", version / "data" / "more.bin", model):
        path.write_bytes(b"new")
        digests.add(version_digest(str(model)))
    assert len(digests) == 4
