"""Warm-up samples (Triton's model_warmup): checked against the model's inputs, and made into a run's inputs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from model_store.complete import ModelTensor, build_config
from model_store.config import ModelConfig
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.warmup import feeds
from ops.errors import ConfigError

INPUTS = [ModelTensor("TOKENS", np.dtype(np.int64), (None, None)), ModelTensor("SCALE", np.dtype(np.float32), (None, 2))]
OUTPUTS = [ModelTensor("OUT", np.dtype(np.float32), (None, 2))]
SAMPLE = """max_batch_size: 8
model_warmup [ {
  name: "typical"
  batch_size: 4
  count: 3
  inputs { key: "TOKENS" value: { data_type: TYPE_INT64 dims: [ 3 ] input_data_file: "tokens.bin" } }
  inputs { key: "SCALE" value: { data_type: TYPE_FP32 dims: [ 2 ] random_data: true } }
} ]
"""


def config_of(text: str) -> ModelConfig:
    return build_config("m", parse_config_text(text, "config.pbtxt"), INPUTS, OUTPUTS, "config.pbtxt",
                        stated=stated_fields(text))


def test_a_sample_is_read_and_reported_as_written():
    config = config_of(SAMPLE)
    (sample,) = config.model_warmup
    assert (sample.name, sample.batch_size, sample.count) == ("typical", 4, 3)
    assert (sample.inputs["TOKENS"].dims, sample.inputs["TOKENS"].data, sample.inputs["TOKENS"].file) == (
        (3,), "input_data_file", "tokens.bin")
    assert sample.inputs["SCALE"].data == "random_data"
    again = config_of("max_batch_size: 8\n" + str(config.to_proto().model_warmup[0]).join(["model_warmup [ {", "} ]"]))
    assert again.model_warmup == config.model_warmup
    assert config_of(SAMPLE.replace("count: 3", "count: 0")).model_warmup[0].count == 1  # Triton: 0 means once


def sample_with(replace: str, by: str, text: str = SAMPLE) -> str:
    assert replace in text
    return text.replace(replace, by)


@pytest.mark.parametrize(("text", "expected"), [
    (sample_with("batch_size: 4", "batch_size: 0"), ["model_warmup[0].batch_size:", "is 0; give 1 or more rows"]),
    (sample_with("batch_size: 4", "batch_size: 9"), ["model_warmup[0].batch_size:", "over max_batch_size 8"]),
    (sample_with('key: "SCALE"', 'key: "SCALES"'), ["model_warmup[0].inputs:", "'SCALES', which the model does not"]),
    (sample_with('  inputs { key: "SCALE" value: { data_type: TYPE_FP32 dims: [ 2 ] random_data: true } }\n', ""),
     ["model_warmup[0].inputs:", "leave out 'SCALE'", "every input"]),
    (sample_with("TYPE_FP32 dims", "TYPE_FP64 dims"),
     ['model_warmup[0].inputs["SCALE"].data_type:', "is TYPE_FP64, but the input is TYPE_FP32"]),
    (sample_with("dims: [ 2 ]", "dims: [ 3 ]"), ['inputs["SCALE"].dims:', "are [3]; the input takes [2]"]),
    (sample_with("dims: [ 3 ]", "dims: [ -1 ]"), ['inputs["TOKENS"].dims:', "are [-1]; the input takes [-1]",
                                                  "give each -1 a size"]),
    (sample_with("dims: [ 3 ]", "dims: [ 3, 1 ]"), ['inputs["TOKENS"].dims:', "are [3, 1]"]),
    (sample_with(" random_data: true", ""), ['model_warmup[0].inputs["SCALE"]:', "gives no data", "zero_data: true"]),
    (sample_with('"tokens.bin"', '"../tokens.bin"'), ['inputs["TOKENS"].input_data_file:', "without path separators"]),
])
def test_a_sample_that_could_never_run_is_a_config_error_naming_the_field(text, expected):
    with pytest.raises(ConfigError) as caught:
        config_of(text)
    for part in expected:
        assert part in str(caught.value), str(caught.value)


def test_a_model_that_does_not_batch_takes_samples_of_one_row():
    inputs = [ModelTensor("X", np.dtype(np.float32), (2,))]
    text = ('max_batch_size: 0\nmodel_warmup [ { name: "one" batch_size: %d inputs { key: "X" value: '
            '{ data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } } ]')
    config = build_config("m", parse_config_text(text % 1, "c"), inputs, inputs, "c", stated=stated_fields(text % 1))
    assert feeds(config.model_warmup[0], Path("."), batching=False)["X"].shape == (2,)
    with pytest.raises(ConfigError, match="does not batch .max_batch_size 0. takes a batch_size of 1"):
        build_config("m", parse_config_text(text % 2, "c"), inputs, inputs, "c", stated=stated_fields(text % 2))


def test_each_row_repeats_the_files_data_and_random_data_stays_in_range(tmp_path: Path):
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "tokens.bin").write_bytes(np.array([5, 6, 7], "<i8").tobytes())
    runs = feeds(config_of(SAMPLE).model_warmup[0], tmp_path, batching=True)
    np.testing.assert_array_equal(runs["TOKENS"], np.tile([5, 6, 7], (4, 1)))
    assert runs["SCALE"].shape == (4, 2) and runs["SCALE"].dtype == np.float32
    assert ((runs["SCALE"] >= 0) & (runs["SCALE"] < 1)).all()
    zeros = config_of(sample_with('input_data_file: "tokens.bin"', "zero_data: true")).model_warmup[0]
    np.testing.assert_array_equal(feeds(zeros, tmp_path, batching=True)["TOKENS"], np.zeros((4, 3), np.int64))


def test_a_data_file_that_is_missing_or_the_wrong_size_is_an_error(tmp_path: Path):
    sample = config_of(SAMPLE).model_warmup[0]
    with pytest.raises(ConfigError, match="cannot read its warm-up data .*tokens.bin"):
        feeds(sample, tmp_path, batching=True)
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "tokens.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match=r"holds 16 bytes; dims \[3\] of INT64 take 24"):
        feeds(sample, tmp_path, batching=True)


def test_bytes_data_is_length_prefixed_elements(tmp_path: Path):
    inputs = [ModelTensor("TEXT", np.dtype(object), (None, 2))]
    text = ('max_batch_size: 4\nmodel_warmup [ { name: "s" batch_size: 2 inputs { key: "TEXT" value: '
            '{ data_type: TYPE_STRING dims: [ 2 ] %s } } } ]')
    def sample(data: str):
        return build_config("m", parse_config_text(text % data, "c"), inputs, inputs, "c").model_warmup[0]

    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "text").write_bytes(struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0))
    got = feeds(sample('input_data_file: "text"'), tmp_path, batching=True)["TEXT"]
    assert got.tolist() == [[b"hi", b""], [b"hi", b""]]
    assert feeds(sample("random_data: true"), tmp_path, batching=True)["TEXT"].tolist() == [[b"", b""]] * 2
    (tmp_path / "warmup" / "text").write_bytes(struct.pack("<I", 9) + b"hi")
    with pytest.raises(ConfigError, match="ends inside an element .9 bytes announced."):
        feeds(sample('input_data_file: "text"'), tmp_path, batching=True)
