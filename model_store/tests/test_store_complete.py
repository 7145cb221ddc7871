"""build_config: completion from the model's signature (read by onnxruntime) and every cross-check."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from kernels.ort import GRAPH_LEVELS
from model_store.complete import ModelTensor, build_config
from model_store.config import (
    DEFAULT_MAX_BATCH_SIZE,
    DynamicBatching,
    InstanceGroup,
    InstanceKind,
    ModelConfig,
    ModelQueuePolicy,
    VersionPolicy,
)
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.protos import model_config_pb2
from model_store.testing import write_dense_model, write_identity_model, write_two_io_model
from ops.errors import ConfigError

SOURCE = "repo/m/config.pbtxt"
Signature = tuple[list[ModelTensor], list[ModelTensor]]  # as the ort_signature fixture returns it


def write_partly_batching_model(folder: Path) -> Path:
    """INPUT0 [batch, 4] -> OUTPUT0 [1, 4], the column sums: the output has no batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["INPUT0", "AXES"], ["OUTPUT0"], keepdims=1)],
        "column_sums",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "AXES")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


WRITERS: dict[str, Callable[[Path], Path]] = {
    "dense": functools.partial(write_dense_model, in_features=16, out_features=8),  # [batch, 16] -> [batch, 8]
    "fixed": functools.partial(write_dense_model, in_features=16, out_features=8, batch_dim=None),  # [1, 16]
    "two_io": functools.partial(write_two_io_model, features=4),  # 2 x [batch, 4] -> 2 x [batch, 4]
    "strings": functools.partial(write_identity_model, datatype="BYTES", dims=(3,)),  # [batch, 3] strings
    "sequence": functools.partial(write_identity_model, datatype="FP32", dims=(-1, 4), batch=False),  # [d0, 4]
    "partly": write_partly_batching_model,
    "image": functools.partial(write_identity_model, datatype="FP32", dims=(3, 8, 8)),  # [batch, 3, 8, 8]
}


@pytest.fixture(scope="module")
def signatures(
    tmp_path_factory: pytest.TempPathFactory, ort_signature: Callable[[Path], Signature]
) -> dict[str, Signature]:
    root = tmp_path_factory.mktemp("models")
    return {name: ort_signature(write(root / name)) for name, write in WRITERS.items()}


def build(signatures: dict[str, Signature], model: str, text: str | None) -> ModelConfig:
    """What the loader does: parse the text (if any), then complete it against the model."""
    message = parse_config_text(text, SOURCE) if text is not None else None
    stated = stated_fields(text) if text is not None else frozenset()
    inputs, outputs = signatures[model]
    return build_config("m", message, inputs, outputs, SOURCE, stated=stated)


def io(specs: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(s.name, s.datatype.name, s.dims) for s in specs]


FP32 = "FP32"

COMPLETIONS = [
    pytest.param(
        "dense",
        None,
        {
            "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
            "inputs": [("INPUT0", FP32, (16,))],
            "outputs": [("OUTPUT0", FP32, (8,))],
            "dynamic_batching": DynamicBatching(),
            "instance_count": 1,
            "instance_kind": InstanceKind.AUTO,
            "version_policy": VersionPolicy(),
            "default_model_filename": "model.onnx",
            "execution_accelerators": (),
        },
        id="no-config-batching-model",
    ),
    pytest.param(
        "dense",
        "max_batch_size: 0",
        {"max_batch_size": 0, "inputs": [("INPUT0", FP32, (-1, 16))], "dynamic_batching": None},
        id="explicit-zero-turns-batching-off",
    ),
    pytest.param(
        "dense",
        "max_batch_size: 8",
        {"max_batch_size": 8, "inputs": [("INPUT0", FP32, (16,))], "dynamic_batching": None},
        id="stated-size-without-dynamic-batching",
    ),
    pytest.param(
        "fixed", None, {"max_batch_size": 0, "inputs": [("INPUT0", FP32, (1, 16))], "dynamic_batching": None},
        id="fixed-first-dim-does-not-batch",
    ),
    pytest.param(
        "partly", None, {"max_batch_size": 0, "outputs": [("OUTPUT0", FP32, (1, 4))]}, id="one-fixed-output-no-batch"
    ),
    pytest.param(
        "strings", None, {"max_batch_size": DEFAULT_MAX_BATCH_SIZE, "inputs": [("INPUT0", "BYTES", (3,))]},
        id="string-tensors-are-bytes",
    ),
    pytest.param(
        "sequence", "max_batch_size: 0", {"max_batch_size": 0, "inputs": [("INPUT0", FP32, (-1, 4))]},
        id="variable-non-batch-dims-are-minus-one",
    ),
    pytest.param(
        "sequence",
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]',
        {"max_batch_size": 0, "inputs": [("INPUT0", FP32, (-1, 4))], "outputs": [("OUTPUT0", FP32, (-1, 4))]},
        id="listed-dims-with-the-first-dim-mean-no-batching",
    ),
    pytest.param(
        "dense",
        'input [ { name: "INPUT0" dims: [ -1 ] } ]',
        {"max_batch_size": DEFAULT_MAX_BATCH_SIZE, "inputs": [("INPUT0", FP32, (16,))]},
        id="missing-type-completed-and-fixed-size-wins-over-minus-one",
    ),
    pytest.param(
        "two_io",
        'max_batch_size: 4\noutput [ { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]',
        {"inputs": [("INPUT0", FP32, (4,)), ("INPUT1", FP32, (4,))], "outputs": [("OUTPUT1", FP32, (4,))]},
        id="a-subset-of-outputs-may-be-listed",
    ),
    pytest.param(
        "dense",
        'name: "m"\nplatform: "onnxruntime_onnx"\nbackend: "onnxruntime"',
        {"name": "m", "max_batch_size": DEFAULT_MAX_BATCH_SIZE},
        id="matching-name-platform-backend",
    ),
]


@pytest.mark.parametrize(("model", "text", "expected"), COMPLETIONS)
def test_completion(signatures: dict[str, Signature], model: str, text: str | None, expected: dict[str, Any]) -> None:
    config = build(signatures, model, text)

    for field, value in expected.items():
        actual = getattr(config, field)
        assert (io(actual) if field in ("inputs", "outputs") else actual) == value, field
    assert config.to_proto().name == "m"  # what the ModelConfig RPC returns builds from it


def test_without_stated_fields_a_zero_max_batch_size_counts_as_absent(signatures: dict[str, Signature]) -> None:
    inputs, outputs = signatures["dense"]
    message = parse_config_text("max_batch_size: 0", SOURCE)

    assert build_config("m", message, inputs, outputs, SOURCE).max_batch_size == DEFAULT_MAX_BATCH_SIZE


def test_serving_options_are_read_from_a_full_config(signatures: dict[str, Signature]) -> None:
    config = build(
        signatures,
        "dense",
        """
        max_batch_size: 16
        version_policy { latest { num_versions: 2 } }
        dynamic_batching {
          preferred_batch_size: [ 8, 4, 8 ]
          max_queue_delay_microseconds: 250
          preserve_ordering: true
          default_queue_policy { max_queue_size: 100 }
        }
        instance_group [
          { count: 2 kind: KIND_GPU gpus: [ 1, 0 ] },
          { count: 0 kind: KIND_GPU }
        ]
        optimization {
          graph { level: -1 }
          execution_accelerators {
            gpu_execution_accelerator: [ { name: "TensorRT" }, { name: "cuda" } ]
            cpu_execution_accelerator: [ { name: "cpu" } ]
          }
        }
        default_model_filename: "dense.onnx"
        parameters [
          { key: "b" value { string_value: "2" } },
          { key: "a" value { string_value: "1" } }
        ]
        response_cache { enable: true }
        """,
    )

    assert config.version_policy == VersionPolicy(kind="latest", num_versions=2)
    assert config.dynamic_batching == DynamicBatching(
        max_queue_delay_us=250, preferred_batch_size=(4, 8), preserve_ordering=True,
        default_queue_policy=ModelQueuePolicy(max_queue_size=100),
    )
    assert (config.instance_count, config.instance_kind, config.gpus) == (5, InstanceKind.GPU, (0, 1))
    assert config.execution_accelerators == ("tensorrt", "cuda", "cpu")
    assert config.graph_optimization_level == -1
    assert config.default_model_filename == "dense.onnx"
    assert dict(config.parameters) == {"a": "1", "b": "2"}
    assert config.response_cache is True
    proto = config.to_proto()
    assert [a.name for a in proto.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt", "cuda"]
    assert [a.name for a in proto.optimization.execution_accelerators.cpu_execution_accelerator] == ["cpu"]


def test_accelerator_parameters_have_tritons_meaning_and_are_reported_as_written(
    signatures: dict[str, Signature],
) -> None:
    """A Triton config's TensorRT and CUDA parameters load; the ModelConfig RPC reports them as written."""
    config = build(signatures, "dense", """
        optimization { execution_accelerators { gpu_execution_accelerator: [
          { name: "tensorrt"
            parameters { key: "precision_mode" value: "FP16" }
            parameters { key: "max_workspace_size_bytes" value: "1073741824" }
            parameters { key: "trt_engine_cache_enable" value: "true" } },
          { name: "cuda" parameters { key: "cudnn_conv_use_max_workspace" value: "0" } }
        ] } }
        model_transaction_policy { decoupled: false }
        parameters { key: "gpu_mem_limit" value { string_value: "4294967200" } }
        """)
    assert config.execution_accelerators == ("tensorrt", "cuda")
    assert config.accelerator_parameters == {
        "tensorrt": {"max_workspace_size_bytes": "1073741824", "precision_mode": "FP16", "trt_engine_cache_enable": "true"},
        "cuda": {"cudnn_conv_use_max_workspace": "0"},
    }
    assert config.unread_parameters == ()  # gpu_mem_limit is read: Triton's deprecated CUDA option
    accelerators = config.to_proto().optimization.execution_accelerators.gpu_execution_accelerator
    assert [(a.name, dict(a.parameters)) for a in accelerators] == list(config.accelerator_parameters.items())


def test_reshape_has_tritons_meaning_clients_see_dims_and_the_model_its_shape(signatures: dict[str, Signature]) -> None:
    config = build(signatures, "dense", 'max_batch_size: 8\n'
                   'input [ { name: "INPUT0" dims: [ 4, 4 ] reshape { shape: [ 16 ] } } ]\n'
                   'output [ { name: "OUTPUT0" dims: [ 2, 4 ] reshape { shape: [ -1 ] } } ]')
    (spec,), (out,) = config.inputs, config.outputs
    assert (spec.dims, spec.reshape, spec.model_dims) == ((4, 4), (16,), (16,))
    assert (out.dims, out.reshape) == ((2, 4), (8,))  # the model's fixed size fills the reshape's -1
    assert spec.shape_with_batch(8) == (-1, 4, 4)  # metadata: what clients send
    sent = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    assert spec.to_model(sent).shape == (2, 16) and np.shares_memory(spec.to_model(sent), sent)
    assert out.to_client(np.zeros((3, 8), np.float32)).shape == (3, 2, 4)
    proto = config.to_proto()
    assert list(proto.input[0].reshape.shape) == [16] and list(proto.output[0].reshape.shape) == [8]
    plain = build(signatures, "dense", None).inputs[0]
    assert plain.reshape is None and plain.to_model(sent) is sent


@pytest.mark.parametrize(("groups", "expected"), [
    # Triton: a group's count is per listed GPU, so 2 x [0, 1] is four instances, two on each GPU. A group that
    # lists none counts once here (the CPU's count); kernels/placement.py spreads it over the visible GPUs.
    ("{ count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }", ((InstanceGroup(2, (0, 1), "m_0"),), 4)),
    ("{ count: 1 kind: KIND_GPU gpus: [ 0 ] }, { name: \"second\" count: 2 kind: KIND_GPU gpus: [ 1 ] }",
     ((InstanceGroup(1, (0,), "m_0"), InstanceGroup(2, (1,), "second")), 3)),
    ("{ count: 2 kind: KIND_GPU gpus: [ 1, 0 ] }, { count: 0 kind: KIND_GPU }",
     ((InstanceGroup(2, (1, 0), "m_0"), InstanceGroup(1, (), "m_1")), 5)),
    ("{ count: 3 kind: KIND_CPU }", ((InstanceGroup(3, (), "m_0"),), 3)),
], ids=["count-per-gpu", "uneven-groups", "gpus-then-none", "cpu"])
def test_instance_groups_count_instances_on_each_listed_gpu(
    signatures: dict[str, Signature], groups: str, expected: tuple
) -> None:
    config = build(signatures, "dense", f"instance_group [ {groups} ]")

    assert (config.instance_groups, config.instance_count) == expected
    reported = [(g.name, g.count, list(g.gpus)) for g in config.to_proto().instance_group]
    # as written, not re-split over the GPUs; a group without a name gets Triton's "<model>_<index>"
    assert reported == [(g.name, g.count, list(g.gpus)) for g in expected[0]]


READ_BACK = [
    pytest.param("dense", None, id="completed"),
    pytest.param("dense", "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]", id="count-per-gpu"),
    pytest.param(
        "dense",
        "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] }, { count: 2 kind: KIND_GPU gpus: [ 1 ] } ]",
        id="uneven-gpu-groups",
    ),
    pytest.param("image", 'input [ { name: "INPUT0" format: FORMAT_NCHW } ]', id="format"),
    pytest.param("two_io", 'output [ { name: "OUTPUT1" label_filename: "labels.txt" } ]', id="label_filename"),
]


@pytest.mark.parametrize(("model", "text"), READ_BACK)
def test_reported_config_written_as_config_pbtxt_gives_the_same_config(
    signatures: dict[str, Signature], model: str, text: str | None
) -> None:
    config = build(signatures, model, text)

    reported = text_format.MessageToString(config.to_proto())

    assert build(signatures, model, reported) == config
    if text and "format" in text:
        assert config.to_proto().input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW  # as image clients read it
    if text and "label_filename" in text:
        assert config.to_proto().output[0].label_filename == "labels.txt"


# What Triton's GET /v2/models/m/config returns for the dense model (its auto-complete of an ONNX model),
# written as config.pbtxt: every field it fills in at its default, which users copy into their configs.
TRITON_COMPLETE = """
name: "m"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
runtime: ""
version_policy: { latest: { num_versions: 1 } }
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NONE dims: [ 16 ]
          is_shape_tensor: false allow_ragged_batch: false optional: false is_non_linear_format_io: false } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] label_filename: ""
           is_shape_tensor: false is_non_linear_format_io: false } ]
batch_input: []
batch_output: []
optimization {
  priority: PRIORITY_DEFAULT
  input_pinned_memory { enable: true }
  output_pinned_memory { enable: true }
  gather_kernel_buffer_threshold: 0
  eager_batching: false
  cuda { graphs: false busy_wait_events: false output_copy_stream: false }
}
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 0
  preserve_ordering: false
  priority_levels: 0
  default_priority_level: 0
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 0 allow_timeout_override: false
                         max_queue_size: 0 }
}
instance_group [ { name: "m_0" kind: KIND_CPU count: 2 gpus: [] secondary_devices: [] profile: []
                   passive: false host_policy: "" } ]
default_model_filename: "model.onnx"
cc_model_filenames: []
metric_tags: []
model_transaction_policy { decoupled: false }
model_warmup: []
"""

# The same configuration as a person writes it: the fields above that are at Triton's defaults left out.
TRITON_WRITTEN = """
max_batch_size: 4
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 0 }
instance_group [ { kind: KIND_CPU count: 2 } ]
"""


@pytest.mark.parametrize(("written", "instead"), [
    ("", ""),
    ('runtime: ""', 'runtime: "libtriton_onnxruntime.so"'),
    ("input_pinned_memory { enable: true }", "input_pinned_memory { enable: false }"),
    ("output_pinned_memory { enable: true }", "output_pinned_memory { }"),
    ("cc_model_filenames: []", "cc_model_filenames { }"),  # one entry, empty key and value
], ids=["complete", "runtime-library", "input-pinned-off", "output-pinned-off", "empty-map-entry"])
def test_tritons_complete_config_loads_and_its_defaults_change_nothing(
    signatures: dict[str, Signature], written: str, instead: str
) -> None:
    """Triton's auto-completed config parses and loads as the short one does (each field at Triton's default has
    no effect, nor does pinned memory, which only speeds up Triton's own host-GPU copies)."""
    assert written in TRITON_COMPLETE
    config = build(signatures, "dense", TRITON_COMPLETE.replace(written, instead))

    assert config == build(signatures, "dense", TRITON_WRITTEN)
    assert config.instance_count == 2 and config.dynamic_batching is not None


def test_parameters_fleetserve_does_not_read_are_kept_and_listed(signatures: dict[str, Signature]) -> None:
    config = build(
        signatures,
        "dense",
        """
        parameters { key: "execution_mode" value { string_value: "1" } }
        parameters { key: "inter_op_thread_count" value { string_value: "2" } }
        parameters { key: "intra_op_thread_count" value { string_value: "2" } }
        """,
    )

    assert config.unread_parameters == ("execution_mode", "inter_op_thread_count")  # Triton's onnxruntime backend's
    assert sorted(config.to_proto().parameters) == ["execution_mode", "inter_op_thread_count", "intra_op_thread_count"]


def test_signature_may_be_built_by_hand_with_symbolic_dims() -> None:
    inputs = [ModelTensor("x", np.dtype(np.int64), (None, 3))]
    outputs = [ModelTensor("y", np.dtype(np.float32), (None,))]

    config = build_config("m", None, inputs, outputs, SOURCE)

    assert io(config.inputs) == [("x", "INT64", (3,))]
    assert io(config.outputs) == [("y", FP32, ())]


TRT = 'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" %s } ] } }'
CUDA = 'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" %s } ] } }'

ERRORS = [
    pytest.param("dense", 'name: "other"', ["name:", '"other"', 'model folder is "m"'], id="name-differs-from-folder"),
    pytest.param(
        "dense", 'platform: "tensorflow_savedmodel"', ["platform:", "only ONNX models", "onnxruntime_onnx"],
        id="other-platform",
    ),
    pytest.param("dense", 'backend: "pytorch"', ["backend:", "only ONNX models"], id="other-backend"),
    pytest.param("dense", "max_batch_size: -2", ["max_batch_size:", "0 (no batching) or a positive"], id="negative"),
    pytest.param(
        "fixed", "max_batch_size: 8",
        ["max_batch_size:", "variable first (batch) dimension", "INPUT0 (TYPE_FP32 [1, 16])", "max_batch_size: 0"],
        id="batching-a-model-with-a-fixed-first-dim",
    ),
    pytest.param(
        "dense", 'input [ { name: "input" data_type: TYPE_FP32 dims: [ 16 ] } ]',
        ['input "input":', "no input of that name", "INPUT0 (TYPE_FP32 [-1, 16])"],
        id="unknown-input",
    ),
    pytest.param(
        "dense", 'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 8 ] } ]',
        ['output "OUT":', "its outputs are: OUTPUT0"],
        id="unknown-output",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]',
        ['input "INPUT0".data_type:', "is TYPE_INT32", "model's input is TYPE_FP32"],
        id="data-type-differs",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 15 ] } ]',
        ['input "INPUT0".dims:', "are [15]", "should be [16]", "leave out the batch dimension"],
        id="dim-differs",
    ),
    pytest.param(
        "dense", 'max_batch_size: 4 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]',
        ['input "INPUT0".dims:', "shape [-1, 16]", "should be [16]"],
        id="batch-dim-listed-while-batching",
    ),
    pytest.param(
        "dense", 'max_batch_size: 0 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]',
        ["should be [-1, 16]", "max_batch_size 0: dims are the whole shape"],
        id="batch-dim-left-out-without-batching",
    ),
    pytest.param(
        "sequence", 'max_batch_size: 0 input [ { name: "INPUT0" dims: [ 0, 4 ] } ]',
        ['input "INPUT0".dims:', "are [0, 4]; each dim is a size >= 1, or -1 for a variable size", "should be [-1, 4]"],
        id="zero-dim-where-the-model-has-a-variable-one",
    ),
    pytest.param(
        "sequence", 'max_batch_size: 0 output [ { name: "OUTPUT0" dims: [ 0, 4 ] } ]',
        ['output "OUTPUT0".dims:', "are [0, 4]; each dim is a size >= 1"],
        id="zero-output-dim",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" format: 7 } ]',
        ['input "INPUT0".format:', "7 is not a known format", "FORMAT_NONE, FORMAT_NHWC, FORMAT_NCHW"],
        id="unknown-format-number",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" format: FORMAT_NHWC } ]',
        ['input "INPUT0".format:', "is FORMAT_NHWC, an image layout, which needs 3 dims", "dims are [16]"],
        id="image-format-without-3-dims",
    ),
    pytest.param(
        "image", 'max_batch_size: 0 input [ { name: "INPUT0" format: FORMAT_NCHW } ]',
        ['input "INPUT0".format:', "needs 3 dims (the batch dimension not counted)", "dims are [-1, 3, 8, 8]"],
        id="image-format-with-the-batch-dim-in-dims",
    ),
    pytest.param(
        "two_io", 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
        ["input:", "INPUT1 (TYPE_FP32 [-1, 4]) are not listed", "list every input or none"],
        id="model-input-not-listed",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" }, { name: "INPUT0" } ]', ['input "INPUT0":', "listed twice"], id="twice"
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" dims: [ 2, 4 ] reshape { shape: [ 8 ] } } ]',
        ['input "INPUT0".reshape:', "shape is [8], but the model's input has shape [-1, 16]: give [16]",
         "after the batch dimension"],
        id="reshape-not-the-models",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" optional: true } ]',
        ['input "INPUT0".optional:', "needs this input on every run"],
        id="optional-input-the-model-needs",
    ),
    pytest.param(
        "dense", 'input [ { name: "INPUT0" data_type: 99 } ]', ["data_type:", "99 is not a known data type"],
        id="unknown-type-number",
    ),
    pytest.param(
        "dense", "max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 4, 16 ] }",
        ["dynamic_batching.preferred_batch_size:", "16 is outside 1..max_batch_size (8)"],
        id="preferred-size-too-big",
    ),
    pytest.param(
        "dense", "dynamic_batching { default_queue_policy { timeout_action: 5 } }",
        ["dynamic_batching.default_queue_policy.timeout_action:", "5 is not a known action; use REJECT or DELAY"],
        id="unknown-timeout-action-number",
    ),
    pytest.param(
        "dense",
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
        "priority_queue_policy { key: 2 value { timeout_action: 2 } } }",
        ["dynamic_batching.priority_queue_policy[2].timeout_action:", "2 is not a known action"],
        id="unknown-timeout-action-number-of-a-level",
    ),
    pytest.param(
        "dense", 'parameters { key: "latency_slo_msec" value { string_value: "25" } }',
        ["parameters.latency_slo_msec:", 'did you mean "latency_slo_ms"', "it reads: intra_op_thread_count, "],
        id="misspelled-parameter",
    ),
    pytest.param(
        "dense", "max_batch_size: 0 dynamic_batching { }", ["dynamic_batching:", "max_batch_size is 0"],
        id="dynamic-batching-without-batching",
    ),
    pytest.param(
        "fixed", "dynamic_batching { }", ["dynamic_batching:", "needs a batching model"],
        id="dynamic-batching-on-a-model-that-cannot-batch",
    ),
    pytest.param(
        "dense", "dynamic_batching { priority_levels: 2 }",
        ["dynamic_batching.default_priority_level:", "must be a level in 1..2"],
        id="priorities-without-default-level",
    ),
    pytest.param("dense", "instance_group [ { count: -1 } ]", ["instance_group[0].count:", "0 or more"], id="count"),
    pytest.param(
        "dense", "instance_group [ { kind: KIND_MODEL } ]", ["instance_group[0].kind:", "KIND_MODEL is not supported"],
        id="kind-model",
    ),
    pytest.param(
        "dense", "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]",
        ["instance_group[0].gpus:", "KIND_CPU group"],
        id="gpus-for-cpu",
    ),
    pytest.param(
        "dense", "instance_group [ { count: 1025 kind: KIND_CPU } ]",
        ["instance_group[0].count:", "is 1025", "at most 1024"],
        id="too-many-instances",
    ),
    pytest.param(
        "dense", "instance_group [ { count: 600 kind: KIND_GPU gpus: [ 0, 1 ] } ]",
        ["instance_group:", "makes 1200 instances", "at most 1024 in all"],
        id="too-many-instances-on-gpus",
    ),
    pytest.param(
        "dense", "instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]",
        ["instance_group:", "mixes kinds KIND_CPU, KIND_GPU"],
        id="mixed-kinds",
    ),
    pytest.param(
        "dense", 'optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }',
        ["cpu_execution_accelerator[0].name:", '"openvino" is not known', "use one of: cpu"],
        id="unknown-cpu-accelerator",
    ),
    pytest.param(
        "dense", 'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "rocm" } ] } }',
        ["gpu_execution_accelerator[0].name:", "use one of: tensorrt, cuda"],
        id="unknown-gpu-accelerator",
    ),
    pytest.param(
        "dense", TRT % 'parameters { key: "precision_mode" value: "FP8" }',
        ["gpu_execution_accelerator[0].parameters.precision_mode:", 'is "FP8"', '"FP16"', '"INT8"'],
        id="tensorrt-precision",
    ),
    pytest.param(
        "dense", TRT % 'parameters { key: "trt_engine_cache_enabled" value: "1" }',
        ["parameters.trt_engine_cache_enabled:", "not a tensorrt accelerator parameter",
         '(did you mean "trt_engine_cache_enable"?)', "max_workspace_size_bytes"],
        id="tensorrt-misspelled-key",
    ),
    pytest.param(
        "dense", TRT % 'parameters { key: "max_workspace_size_bytes" value: "1GB" }',
        ["parameters.max_workspace_size_bytes:", 'is "1GB"', "a whole number of 0 or more"],
        id="tensorrt-number",
    ),
    pytest.param(
        "dense", TRT % 'parameters { key: "trt_engine_cache_enable" value: "yes please" }',
        ["parameters.trt_engine_cache_enable:", '"1" or "0"'],
        id="tensorrt-bool",
    ),
    pytest.param(
        "dense", TRT % 'parameters { key: "device_id" value: "1" }',
        ["parameters.device_id:", "instance group's gpus"],
        id="accelerator-device-id",
    ),
    pytest.param(
        "dense", CUDA % 'parameters { key: "cudnn_conv_algo_search" value: "FASTEST" }',
        ["gpu_execution_accelerator[0].parameters.cudnn_conv_algo_search:", '"EXHAUSTIVE" or "HEURISTIC" or "DEFAULT"'],
        id="cuda-enum",
    ),
    pytest.param(
        "dense", CUDA % 'parameters { key: "gpu_memory_limit" value: "1" }',
        ["parameters.gpu_memory_limit:", "not a cuda accelerator parameter", '(did you mean "gpu_mem_limit"?)'],
        id="cuda-unknown-key",
    ),
    pytest.param(
        "dense", 'optimization { execution_accelerators { cpu_execution_accelerator: [ '
        '{ name: "cpu" parameters { key: "threads" value: "2" } } ] } }',
        ["cpu_execution_accelerator[0].parameters.threads:", "takes no parameters"],
        id="cpu-accelerator-parameters",
    ),
    pytest.param(
        "dense", 'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" }, '
        '{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }',
        ["gpu_execution_accelerator[1].name:", "listed twice"],
        id="accelerator-twice",
    ),
    pytest.param(
        "dense", 'parameters { key: "cudnn_conv_algo_search" value { string_value: "3" } }',
        ["parameters.cudnn_conv_algo_search:", 'is "3"', "0 (EXHAUSTIVE), 1 (HEURISTIC), 2 (DEFAULT)"],
        id="cuda-model-parameter",
    ),
    pytest.param(
        "dense", "model_transaction_policy { decoupled: true }",
        ["model_transaction_policy.decoupled:", "exactly one response", "set it false"],
        id="decoupled",
    ),
    pytest.param(
        "dense", "optimization { graph { level: 99 } }",
        ["optimization.graph.level:", "is 99", "-1 (basic)", "2 (none)"],
        id="graph-level-not-tritons",
    ),
    pytest.param(
        "dense", "version_policy { latest { } }", ["version_policy.latest.num_versions:", "at least 1"],
        id="latest-zero",
    ),
    pytest.param(
        "dense", "version_policy { specific { } }", ["version_policy.specific.versions:", "list version numbers"],
        id="specific-empty",
    ),
    # Triton fields at a value other than its default: each asks for something fleetserve does not do.
    pytest.param("dense", 'runtime: "model.py"', ["runtime:", '"model.py"', "onnxruntime only", "remove runtime"],
                 id="runtime-other-backend"),
    pytest.param(
        "dense", 'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 '
        'source_input: "INPUT0" } ]', ["batch_input:", "not supported", "remove it"], id="batch-input",
    ),
    pytest.param("dense", 'batch_output [ { target_name: "OUTPUT0" } ]', ["batch_output:", "remove it"],
                 id="batch-output"),
    pytest.param("dense", 'cc_model_filenames { key: "8.0" value: "a100.onnx" }',
                 ["cc_model_filenames:", "default_model_filename", "remove it"], id="cc-model-filenames"),
    pytest.param("dense", 'metric_tags { key: "team" value: "search" }', ["metric_tags:", "remove it"],
                 id="metric-tags"),
    pytest.param("dense", "optimization { priority: PRIORITY_MAX }",
                 ["optimization.priority:", "is PRIORITY_MAX", "TensorRT backend", "PRIORITY_DEFAULT"],
                 id="priority"),
    pytest.param("dense", "optimization { cuda { graphs: true } }",
                 ["optimization.cuda.graphs:", "is true", "TensorRT backend", "remove it"], id="cuda-graphs"),
    pytest.param("dense", "optimization { gather_kernel_buffer_threshold: 4 }",
                 ["optimization.gather_kernel_buffer_threshold:", "is 4", "give 0"], id="gather-threshold"),
    pytest.param("dense", "optimization { eager_batching: true }", ["optimization.eager_batching:", "set it false"],
                 id="eager-batching"),
    pytest.param("dense", "instance_group [ { passive: true } ]",
                 ["instance_group[0].passive:", "every instance", "set it false"], id="passive"),
    pytest.param("dense", 'instance_group [ { host_policy: "numa0" } ]',
                 ["instance_group[0].host_policy:", '"numa0"', "no host policies"], id="host-policy"),
    pytest.param("dense", 'instance_group [ { kind: KIND_GPU profile: [ "0" ] } ]',
                 ["instance_group[0].profile:", "optimization profiles", "remove it"], id="profile"),
    pytest.param("dense", "instance_group [ { secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ] } ]",
                 ["instance_group[0].secondary_devices:", "NVDLA"], id="secondary-devices"),
    pytest.param("dense", 'input [ { name: "INPUT0" is_shape_tensor: true } ]',
                 ['input "INPUT0".is_shape_tensor:', "TensorRT backend", "set it false"], id="input-shape-tensor"),
    pytest.param("dense", 'output [ { name: "OUTPUT0" is_shape_tensor: true } ]',
                 ['output "OUTPUT0".is_shape_tensor:', "set it false"], id="output-shape-tensor"),
    pytest.param("dense", 'input [ { name: "INPUT0" allow_ragged_batch: true } ]',
                 ['input "INPUT0".allow_ragged_batch:', "shapes match", "set it false"], id="ragged-batch"),
    pytest.param("dense", 'output [ { name: "OUTPUT0" is_non_linear_format_io: true } ]',
                 ['output "OUTPUT0".is_non_linear_format_io:', "set it false"], id="non-linear-format"),
    pytest.param(
        "two_io", 'max_batch_size: 4 input [ { name: "INPUT0" dims: [ 4 ] }, '
        '{ name: "INPUT1" dims: [ 2, 3 ] reshape { shape: [ 4 ] } } ]',
        ['input "INPUT1".dims:', "are [2, 2], which cannot always hold", "reshape [4]"][:1] + ["cannot always hold"],
        id="reshape-element-count",
    ),
    pytest.param("dense", 'input [ { name: "INPUT0" reshape { shape: [ 16 ] } } ]',
                 ['input "INPUT0".dims:', "are needed with reshape"], id="reshape-without-dims"),
    pytest.param("dense", 'input [ { name: "INPUT0" dims: [ -1 ] reshape { shape: [ 16 ] } } ]',
                 ['input "INPUT0".dims:', "are [-1], which cannot always hold", "at most one -1 on each side"],
                 id="reshape-variable-to-fixed"),
    pytest.param(
        "dense", 'default_model_filename: "../other/model.onnx"',
        ["default_model_filename:", "without path separators"],
        id="model-filename-with-path",
    ),
]


@pytest.mark.parametrize(("model", "text", "expected"), ERRORS)
def test_errors_name_the_file_and_field_and_say_what_was_expected(
    signatures: dict[str, Signature], model: str, text: str, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(signatures, model, text)

    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: ")
    for part in expected:
        assert part in message


def test_the_graph_levels_accepted_are_the_ones_the_kernel_maps(
    signatures: dict[str, Signature], monkeypatch: pytest.MonkeyPatch
) -> None:
    def level(n: int) -> int | None:
        return build(signatures, "dense", f"optimization {{ graph {{ level: {n} }} }}").graph_optimization_level

    assert [level(n) for n in sorted(GRAPH_LEVELS)] == [-1, 0, 1, 2]
    # one table: a level the kernel learns to map is accepted, one it drops is refused
    monkeypatch.setitem(GRAPH_LEVELS, 3, GRAPH_LEVELS[2])
    monkeypatch.delitem(GRAPH_LEVELS, -1)
    assert level(3) == 3
    with pytest.raises(ConfigError, match="optimization.graph.level: is -1"):
        level(-1)


def test_a_model_type_without_a_protocol_datatype_is_an_error() -> None:
    inputs = [ModelTensor("z", np.dtype(np.complex64), (None,))]

    with pytest.raises(ConfigError, match=r'model input "z": has type complex64, which fleetserve cannot serve'):
        build_config("m", None, inputs, [], SOURCE)


def test_a_loaded_config_reports_the_kind_its_kernel_runs_on(signatures: dict[str, Signature]) -> None:
    auto = build(signatures, "dense", None)
    cpu = build(signatures, "dense", "instance_group [ { kind: KIND_CPU } ]")

    assert auto.instance_kind is InstanceKind.AUTO  # until the kernel has chosen
    assert auto.placed(on_gpu=True).instance_kind is InstanceKind.GPU
    assert auto.placed(on_gpu=False).to_proto().instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cpu.placed(on_gpu=True) is cpu  # a kind written stays
