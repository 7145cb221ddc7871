"""Fixtures: a model repository built in a temp dir and a real fleetserve server on it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from model_store.testing import (
    IDENTITY_DATATYPES,
    ModelSpec,
    write_add_constant_model,
    write_dense_model,
    write_identity_model,
    write_model_repository,
    write_two_io_model,
)
from server.testing import ServerProcess

SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "INPUT1", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

# A queue delay long enough that 64 concurrent callers reliably share batches.
BATCHING_CONFIG = """
max_batch_size: 64
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""


# BYTES rows of any length, batched over a window long enough that concurrent callers share a batch.
BATCHING_BYTES_CONFIG = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""


# Holds a lone request in the queue for 0.4 s with room for one: the next request is refused
# (RESOURCE_EXHAUSTED), and a request with a shorter deadline or `timeout` parameter expires
# there (DEADLINE_EXCEEDED).
HELD_CONFIG = """
max_batch_size: 8
dynamic_batching {
  max_queue_delay_microseconds: 400000
  default_queue_policy { max_queue_size: 1, allow_timeout_override: true }
}
"""

# An intra_op_thread_count refused at load: over MAX_INTRA_OP_THREADS (2048), or negative.
THREADS_CONFIG = 'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{count}" }} }}'

# Label files name the classes of classification answers (line i names class i): OUTPUT0's names each of its
# four classes; OUTPUT1's leaves class 1 unnamed (an empty line) and class 3 past its last line.
LABELLED_CONFIG = """
output [ { name: "OUTPUT0", label_filename: "labels.txt" }, { name: "OUTPUT1", label_filename: "few.txt" } ]
"""
LABELS = (b"cat", b"dog", b"fish", b"bird")
FEW_LABELS = (b"zero", b"", b"two")
# A label file that is not in the model folder fails the load, as in Triton: missing, or outside it.
LABEL_MISSING_CONFIG = 'output [ { name: "OUTPUT0", label_filename: "gone.txt" } ]'
LABEL_OUTSIDE_CONFIG = 'output [ { name: "OUTPUT0", label_filename: "../labelled/labels.txt" } ]'

# A parameter Triton's onnxruntime backend reads and fleetserve does not: the model loads, with a warning.
TUNED_CONFIG = 'parameters { key: "execution_mode" value: { string_value: "1" } }'


def write_reshape_model(path: Path) -> None:
    """INPUT0 FP32 [batch, n] reshaped to [-1, 3]: fails at run time unless batch*n % 3 == 0."""
    import onnx

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["INPUT0", "shape"], ["OUTPUT0"])],
        "reshape",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["rows", 3])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))


# INPUT0 UINT16 [batch, 3] -> OUTPUT0, the same words, which the config declares BF16, and OUTPUT1 = FP32 of them.
BF16_CONFIG = """
max_batch_size: 8
output [
  { name: "OUTPUT0", data_type: TYPE_BF16, dims: [ 3 ] },
  { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 3 ] }
]
"""


def write_bf16_output_model(path: Path) -> None:
    import onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"]),
         helper.make_node("Cast", ["INPUT0"], ["OUTPUT1"], to=TensorProto.FLOAT)],
        "bf16_output",
        [helper.make_tensor_value_info("INPUT0", TensorProto.UINT16, ["batch", 3])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.UINT16, ["batch", 3]),
         helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))


def _corrupt(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(b"this is not an onnx model \x00\x01\x02" * 10)


def build_repository(root: Path) -> Path:
    models = {
        "dense": ModelSpec(write_dense_model),
        "simple": ModelSpec(partial(write_two_io_model, features=4), config=SIMPLE_CONFIG),
        "add_one": ModelSpec(write_add_constant_model, versions=(1, 2)),
        "batching": ModelSpec(partial(write_add_constant_model, features=4), config=BATCHING_CONFIG),
        "nobatch": ModelSpec(partial(write_dense_model, batch_dim=None), config="max_batch_size: 0"),
        "fragile": ModelSpec(write_reshape_model, config="max_batch_size: 0"),
        "corrupt": ModelSpec(_corrupt),
        "badconfig": ModelSpec(write_dense_model, config="max_batch_sise: 4"),
        "threads": ModelSpec(write_dense_model, config=THREADS_CONFIG.format(count=2048)),
        "negative_threads": ModelSpec(write_dense_model, config=THREADS_CONFIG.format(count=-2)),
        "labelled": ModelSpec(partial(write_two_io_model, features=4), config=LABELLED_CONFIG),
        "label_missing": ModelSpec(write_dense_model, config=LABEL_MISSING_CONFIG),
        "label_outside": ModelSpec(write_dense_model, config=LABEL_OUTSIDE_CONFIG),
        "grid": ModelSpec(partial(write_identity_model, datatype="FP32", dims=(2, 3))),  # rows of 2 x 3 values
        "held": ModelSpec(partial(write_add_constant_model, features=4), config=HELD_CONFIG),
        "bf16": ModelSpec(write_bf16_output_model, config=BF16_CONFIG),
        "tuned": ModelSpec(write_dense_model, config=TUNED_CONFIG),
        "dirconfig": ModelSpec(write_dense_model),
        "batching_bytes": ModelSpec(partial(write_identity_model, datatype="BYTES", dims=(-1,)),
                                    config=BATCHING_BYTES_CONFIG),
    }
    for datatype in IDENTITY_DATATYPES:
        models[f"identity_{datatype.lower()}"] = ModelSpec(partial(write_identity_model, datatype=datatype, dims=(3,)))
    repository = write_model_repository(root, models)
    (repository / "labelled" / "labels.txt").write_bytes(b"\n".join(LABELS) + b"\n")
    (repository / "labelled" / "few.txt").write_bytes(b"\n".join(FEW_LABELS))  # no final newline
    (repository / "dirconfig" / "config.pbtxt").mkdir()  # not a file: UNAVAILABLE, never served as if absent
    return repository


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(repository: Path):
    with ServerProcess(repository) as proc:
        yield proc
