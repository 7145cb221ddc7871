"""config.pbtxt parsing: Triton's configs parse unchanged; mistakes name the file, line, column and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from model_store.examples import REPOSITORY
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.protos import model_config_pb2 as pb
from ops.errors import Code, ConfigError

SOURCE = "models/dense/config.pbtxt"

# A Triton-format config of an ONNX model using every section fleetserve reads.
TRITON_CONFIG = """
name: "dense"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 32
version_policy: { specific: { versions: [ 1, 3 ] } }
default_model_filename: "model.onnx"
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    format: FORMAT_NONE
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 8 ]
    label_filename: "labels.txt"
  }
]
instance_group [
  { name: "dense_gpu" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }
]
# Comments are allowed, as in Triton.
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  default_queue_policy { max_queue_size: 256 }
}
optimization {
  graph: { level: 1 }
  execution_accelerators {
    gpu_execution_accelerator : [ { name : "tensorrt" } ]
    cpu_execution_accelerator : [ { name : "cpu" } ]
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
response_cache { enable: true }
"""


def test_a_full_triton_config_parses_unchanged() -> None:
    message = parse_config_text(TRITON_CONFIG, SOURCE)

    assert message == text_format.Parse(TRITON_CONFIG, pb.ModelConfig())
    assert message.max_batch_size == 32
    assert list(message.version_policy.specific.versions) == [1, 3]
    assert list(message.input[0].dims) == [16]
    assert message.output[0].label_filename == "labels.txt"
    assert (message.instance_group[0].count, list(message.instance_group[0].gpus)) == (2, [0, 1])
    assert list(message.dynamic_batching.preferred_batch_size) == [8, 16]
    assert message.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert message.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert message.parameters["intra_op_thread_count"].string_value == "2"
    assert message.response_cache.enable


@pytest.mark.parametrize("path", sorted(REPOSITORY.glob("*/config.pbtxt")), ids=lambda p: p.parent.name)
def test_the_example_repository_configs_parse(path: Path) -> None:
    parse_config_text(path.read_text(encoding="utf-8"), str(path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            'name: "dense"\nplatform: "onnxruntime_onnx"\nmax_batch_sise: 8\n',
            [
                f"{SOURCE}:3:1: ",
                'unknown field "max_batch_sise" in ModelConfig',
                'did you mean "max_batch_size"',
                "fleetserve reads these fields: name, platform, backend",
            ],
            id="misspelled-top-level-field",
        ),
        pytest.param(
            "dynamic_batching {\n  max_queue_delay_us: 100\n}\n",
            [f"{SOURCE}:2:3: ", 'unknown field "max_queue_delay_us" in dynamic_batching', "max_queue_delay_microseconds"],
            id="misspelled-nested-field-named-by-path",
        ),
        pytest.param(
            'parameters { key: "a" value: { string_valu: "1" } }',
            ['unknown field "string_valu" in parameters.value', 'did you mean "string_value"'],
            id="misspelled-map-value-field",
        ),
        pytest.param(
            "model_repository_agents { }",
            [f"{SOURCE}:1:1: ", '"model_repository_agents" of Triton\'s model configuration is not supported'],
            id="triton-field-fleetserve-leaves-out",
        ),
        pytest.param(
            "model_metrics { }",
            [f"{SOURCE}:1:1: ", '"model_metrics" of Triton\'s model configuration is not supported', "remove it"],
            id="triton-field-fleetserve-leaves-out-not-taken-for-a-typo",
        ),
        pytest.param(
            "instance_group [\n  { count: 1 rate_limiter { priority: 2 } }\n]",
            [f"{SOURCE}:2:14: ", "field instance_group.rate_limiter of Triton's model configuration is not supported"],
            id="nested-triton-field-fleetserve-leaves-out",
        ),
        pytest.param(
            'input [\n  { name: "x" data_type: TYPE_FP33 }\n]',
            [f"{SOURCE}:2:", 'unknown value TYPE_FP33 for field "data_type"', "expected one of", "TYPE_FP32"],
            id="bad-enum-value",
        ),
        pytest.param(
            'max_batch_size: "eight"',
            [f"{SOURCE}:1:", 'bad value for field "max_batch_size"', "integer"],
            id="bad-integer",
        ),
        pytest.param(
            "dynamic_batching { max_queue_delay_microseconds: -1 }",
            ['bad value for field "max_queue_delay_microseconds"', "out of range"],
            id="out-of-range",
        ),
        pytest.param(
            'input [ { name: "x" ',
            [f"{SOURCE}:1:", "syntax error", '"}"'],
            id="unclosed-brace",
        ),
        pytest.param('name: "a"\nname: "b"\n', [f"{SOURCE}:2:", 'field "name" is given more than once'], id="repeated"),
    ],
)
def test_parse_errors_name_the_file_line_and_field(text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, SOURCE)

    message = str(caught.value)
    for part in expected:
        assert part in message
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.details["source"] == SOURCE


def test_text_format_variants_parse_as_triton_reads_them() -> None:
    message = parse_config_text(
        'input [ { name: "a" data_type: 11 } ]\n'  # an enum by number
        'output [ { name: "y" } ]\n'
        'input { name: "b\\"c" }\n'  # a second input block, and an escaped quote
        'parameters { key: "k" value { string_value: "tab\\there\\u00e9" } }\n',
        SOURCE,
    )

    assert [(i.name, i.data_type) for i in message.input] == [("a", pb.TYPE_FP32), ('b"c', pb.TYPE_INVALID)]
    assert message.parameters["k"].string_value == "tab\there\u00e9"
    assert parse_config_text("", SOURCE) == pb.ModelConfig()  # an empty file: a config completed from the model


def test_stated_fields_sees_an_explicit_zero_and_ignores_comments_strings_and_nested_fields() -> None:
    text = """
    name: "x"  # max_batch_size: 3 in a comment
    max_batch_size: 0
    input [ { name: "platform" dims: [ 4 ] } ]
    dynamic_batching { }
    parameters { key: "backend" value { string_value: "default_model_filename: 1" } }
    """
    assert stated_fields(text) == {"name", "max_batch_size", "input", "dynamic_batching", "parameters"}
    assert "max_batch_size" not in stated_fields('name: "x"')
