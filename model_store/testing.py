"""Deterministic tiny ONNX models and model repositories for tests and benchmarks.

A public helper module: tests across fleetserve build their fixtures with it,
so the signatures below are a stable API. Every writer

- takes ``path``: a file ending in ``.onnx``, or else a directory (typically a
  version directory such as ``<repo>/<model>/1``) into which ``model.onnx`` is
  written; missing parent directories are created;
- returns the path of the file it wrote;
- builds an opset-17, IR-version-8 model (loadable by onnxruntime >= 1.17),
  checked with ``onnx.checker``, with weights from
  ``numpy.random.default_rng(seed)``: the same arguments give byte-identical
  files.

Inputs are named ``INPUT0``, ``INPUT1``...; outputs ``OUTPUT0``, ``OUTPUT1``...;
a batching model's first dimension is the symbolic ``"batch"``.

This module imports no fleetserve package but ``model_store.datatypes``.
onnxruntime is imported only inside :func:`reference_outputs`, so writing
models (e.g. ``python -m model_store.examples.build``) needs only ``onnx``.
"""

from __future__ import annotations

import ctypes
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_store.datatypes import BY_NAME

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; onnxruntime >= 1.17 loads IR <= 9
MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
_PRODUCER = "fleetserve.model_store.testing"

# Datatypes for which an Identity model loads and round-trips exactly through
# onnxruntime's CPU provider with plain numpy arrays (``InferenceSession.run``).
# Checked against onnxruntime 1.32; model_store/tests/test_testing_models.py
# keeps the list honest. BYTES elements must be valid UTF-8: onnxruntime's
# Python API turns string tensors into ``str``.
IDENTITY_DATATYPES: tuple[str, ...] = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
    "INT64", "FP16", "FP32", "FP64", "BYTES",
)  # fmt: skip
# Datatypes the CPU provider runs Identity on, but only when fed as OrtValues
# built with an explicit ONNX type: numpy has no bfloat16, and ``run()`` rejects
# uint16 words for a bfloat16 input. :func:`reference_outputs` handles them.
ORTVALUE_ONLY_DATATYPES: tuple[str, ...] = ("BF16",)

PathLike = str | os.PathLike[str]


def _model_file(path: PathLike) -> Path:
    """``path`` itself if it names an .onnx file, else ``path/model.onnx``."""
    p = Path(path)
    return p if p.suffix == ".onnx" else p / MODEL_FILENAME


def _save(path: PathLike, graph: onnx.GraphProto) -> Path:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=_PRODUCER,
    )
    onnx.checker.check_model(model, full_check=True)
    file = _model_file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(model.SerializeToString())
    return file


def _fp32(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def write_dense_model(
    path: PathLike,
    in_features: int = 16,
    out_features: int = 8,
    seed: int = 0,
    batch_dim: str | None = "batch",
) -> Path:
    """OUTPUT0 [b, out] = Relu(INPUT0 [b, in] @ W + B), FP32.

    ``W`` ([in, out], scaled by 1/sqrt(in)) and ``B`` ([out]) are initializers
    of those names. ``batch_dim=None`` fixes the first dimension to 1, giving a
    model that cannot batch.
    """
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((in_features, out_features)) / math.sqrt(in_features)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(out_features)).astype(np.float32)
    first: int | str = 1 if batch_dim is None else batch_dim
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["INPUT0", "W", "B"], ["dense"]),
            helper.make_node("Relu", ["dense"], ["OUTPUT0"]),
        ],
        "dense",
        [_fp32("INPUT0", [first, in_features])],
        [_fp32("OUTPUT0", [first, out_features])],
        [_init("W", weight), _init("B", bias)],
    )
    return _save(path, graph)


def write_two_io_model(path: PathLike, features: int = 4) -> Path:
    """Triton's "simple": OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [batch, features]."""
    shape: list[int | str] = ["batch", features]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "two_io",
        [_fp32("INPUT0", shape), _fp32("INPUT1", shape)],
        [_fp32("OUTPUT0", shape), _fp32("OUTPUT1", shape)],
    )
    return _save(path, graph)


def write_add_constant_model(path: PathLike, features: int = 16, constant: float = 1.0) -> Path:
    """OUTPUT0 = INPUT0 + constant, FP32 [batch, features]: the cheapest model that computes."""
    shape: list[int | str] = ["batch", features]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "CONSTANT"], ["OUTPUT0"])],
        "add_constant",
        [_fp32("INPUT0", shape)],
        [_fp32("OUTPUT0", shape)],
        [_init("CONSTANT", np.array(constant, dtype=np.float32))],
    )
    return _save(path, graph)


def write_mlp_model(path: PathLike, sizes: Sequence[int] = (256, 1024, 1024, 16), seed: int = 0) -> Path:
    """INPUT0 [batch, sizes[0]] -> Gemm layers with Relu between -> OUTPUT0 [batch, sizes[-1]], FP32.

    Layer ``i`` has initializers ``W{i}`` ([sizes[i], sizes[i+1]], He-scaled
    so activations keep unit-order variance: outputs stay finite and
    non-trivial for unit-normal inputs) and ``B{i}``. The last layer has no Relu.
    Raises ValueError for fewer than two sizes.
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got sizes={tuple(sizes)}")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    current = "INPUT0"
    layers = len(sizes) - 1
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)
        bias = 0.01 * rng.standard_normal(fan_out)
        inits += [_init(f"W{i}", weight.astype(np.float32)), _init(f"B{i}", bias.astype(np.float32))]
        last = i == layers - 1
        gemm_out = "OUTPUT0" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out]))
        if not last:
            current = f"relu{i}"
            nodes.append(helper.make_node("Relu", [gemm_out], [current]))
    graph = helper.make_graph(
        nodes, "mlp", [_fp32("INPUT0", ["batch", sizes[0]])], [_fp32("OUTPUT0", ["batch", sizes[-1]])], inits
    )
    return _save(path, graph)


def write_identity_model(path: PathLike, datatype: str, dims: Sequence[int] = (4,), batch: bool = True) -> Path:
    """OUTPUT0 = Identity(INPUT0) of protocol ``datatype`` ("FP32", "BYTES", ...).

    Shape is ``["batch", *dims]`` when ``batch`` else ``dims``; a ``-1`` in
    ``dims`` becomes a symbolic dimension. See :data:`IDENTITY_DATATYPES` for
    which datatypes onnxruntime runs. Raises ValueError for an unknown name.
    """
    if datatype not in BY_NAME:
        raise ValueError(f"unknown datatype {datatype!r}; expected one of {sorted(BY_NAME)}")
    onnx_type = BY_NAME[datatype].onnx_type
    shape: list[int | str] = [f"d{i}" if d == -1 else d for i, d in enumerate(dims)]
    if batch:
        shape.insert(0, "batch")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT0", onnx_type, shape)],
        [helper.make_tensor_value_info("OUTPUT0", onnx_type, shape)],
    )
    return _save(path, graph)


def write_lookup_model(path: PathLike) -> Path:
    """OUT = TABLE[INDEX], a 3-row table of FP32 values 1, 2, 3 (OUT: [batch, 1]).

    INDEX is INT64 of shape ``[batch]`` (one value per row, no other dimension), the shape Triton's
    auto-complete writes as ``dims: [ 1 ] reshape: { shape: [ ] }``; an index of 3 or more fails the run.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["TABLE", "INDEX"], ["OUT"], axis=0)], "lookup",
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch"])],
        [_fp32("OUT", ["batch", 1])],
        [_init("TABLE", np.array([[1.0], [2.0], [3.0]], np.float32))],
    )
    return _save(path, graph)


def write_slow_model(path: PathLike, features: int = 64, repeats: int = 8, seed: int = 0) -> Path:
    """OUTPUT0 = INPUT0 @ Q @ Q ... (``repeats`` MatMuls), FP32 [batch, features].

    Work per row is ``repeats * features**2`` multiply-adds, so run time grows
    about linearly with the batch size once it outweighs the per-call overhead:
    raise ``features`` or ``repeats`` for a slower model. ``Q`` is a random
    orthogonal matrix, so values keep their norm however long the chain.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((features, features)))
    orthogonal = (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: a unique Q per seed
    names = ["INPUT0"] + [f"x{i}" for i in range(1, repeats)] + ["OUTPUT0"]
    nodes = [helper.make_node("MatMul", [a, "Q"], [b]) for a, b in zip(names[:-1], names[1:])]
    shape: list[int | str] = ["batch", features]
    graph = helper.make_graph(
        nodes, "slow", [_fp32("INPUT0", shape)], [_fp32("OUTPUT0", shape)], [_init("Q", orthogonal)]
    )
    return _save(path, graph)


def write_config(model_dir: PathLike, text: str) -> Path:
    """Write ``model_dir/config.pbtxt`` with ``text`` dedented and stripped (one final newline)."""
    file = Path(model_dir) / CONFIG_FILENAME
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(textwrap.dedent(text).strip() + "\n", encoding="utf-8")
    return file


@dataclass(frozen=True)
class ModelSpec:
    """One model of a repository written by :func:`write_model_repository`.

    ``write`` is called once per version with the (created) version directory
    and must put ``model.onnx`` there: any writer above, or a
    ``functools.partial`` of one, does; so does a lambda writing a corrupt file. ``config`` is the config.pbtxt text,
    or None for none.
    """

    write: Callable[[Path], object]
    config: str | None = None
    versions: tuple[int, ...] = (1,)


def write_model_repository(root: PathLike, models: Mapping[str, ModelSpec]) -> Path:
    """Write ``<root>/<name>/<version>/model.onnx`` (+ ``<root>/<name>/config.pbtxt``) for each model; return root.

    Example::

        write_model_repository(tmp_path, {
            "add_one": ModelSpec(write_add_constant_model),
            "simple": ModelSpec(write_two_io_model, config='max_batch_size: 8'),
        })

    Existing files are overwritten, other files left alone.
    """
    root_dir = Path(root)
    root_dir.mkdir(parents=True, exist_ok=True)
    for name, spec in models.items():
        model_dir = root_dir / name
        model_dir.mkdir(exist_ok=True)
        for version in spec.versions:
            version_dir = model_dir / str(version)
            version_dir.mkdir(exist_ok=True)
            spec.write(version_dir)
        if spec.config is not None:
            write_config(model_dir, spec.config)
    return root_dir


def reference_outputs(model_path: PathLike, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model once in a fresh in-process onnxruntime CPU session; return every output by name.

    ``model_path`` is a model file or a directory holding ``model.onnx``.
    Arrays follow ``model_store.datatypes``: BYTES as object arrays of
    ``bytes`` (or ``str``) in and object arrays of ``bytes`` out; BF16 as
    uint16 words in and out (through ``OrtValue.ortvalue_from_numpy_with_onnx_type``,
    which older onnxruntime releases lack). Raises
    ValueError for BYTES that are not UTF-8 (onnxruntime's Python API cannot
    carry them) and whatever onnxruntime raises for inputs the model rejects.
    """
    import onnxruntime as ort  # here, not at the top: see the module docstring

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a throwaway session: don't compete with a server under test
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(_model_file(model_path)), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    declared = {i.name: i.type for i in session.get_inputs()}
    if "tensor(bfloat16)" not in [*declared.values(), *(o.type for o in session.get_outputs())]:
        feeds = {name: _to_numpy(name, array) for name, array in inputs.items()}
        return {name: _from_numpy(array) for name, array in zip(names, session.run(names, feeds))}
    # numpy has no bfloat16: go through OrtValues, which take an explicit ONNX type.
    values = session.run_with_ort_values(
        names, {name: _to_ortvalue(ort, name, array, declared.get(name)) for name, array in inputs.items()}
    )
    return {name: _from_ortvalue(value) for name, value in zip(names, values)}


def _to_numpy(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return _map_objects(array, lambda element: _utf8(name, element)) if array.dtype.kind in "OSU" else array


def _from_numpy(array: np.ndarray) -> np.ndarray:
    return _map_objects(array, lambda text: text.encode("utf-8")) if array.dtype == object else array


def _to_ortvalue(ort: ModuleType, name: str, array: np.ndarray, declared: str | None) -> Any:
    array = np.ascontiguousarray(array)
    if declared == "tensor(bfloat16)":
        if array.dtype != np.uint16:
            raise ValueError(f"BF16 input {name!r} must be given as uint16 words, got {array.dtype}")
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, TensorProto.BFLOAT16)
    if array.dtype.kind in "OSU":
        # OrtValues cannot hold strings; no model here mixes BYTES and BF16.
        raise ValueError(f"reference_outputs cannot feed BYTES input {name!r} to a model with BF16 tensors")
    return ort.OrtValue.ortvalue_from_numpy(array)


def _from_ortvalue(value: Any) -> np.ndarray:
    if value.data_type() != "tensor(bfloat16)":
        return _from_numpy(value.numpy())
    # numpy() knows no bfloat16: copy the raw words out while the OrtValue is alive.
    words = np.empty(tuple(value.shape()), dtype=np.uint16)
    ctypes.memmove(words.ctypes.data, value.data_ptr(), words.nbytes)
    return words


def _map_objects(array: np.ndarray, convert: Callable[[Any], object]) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    for index, element in np.ndenumerate(array):
        out[index] = convert(element)
    return out


def _utf8(name: str, element: object) -> str:
    if isinstance(element, str):
        return element
    if isinstance(element, bytes):  # np.bytes_ is a bytes subclass
        try:
            return element.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"BYTES input {name!r} holds non-UTF-8 bytes, which onnxruntime cannot take") from exc
    raise ValueError(f"BYTES input {name!r} holds a {type(element).__name__}, expected bytes or str")
