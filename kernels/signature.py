"""What an ONNX model declares: its input and output tensors, read from the file or from a session.

``read_signature`` reads the file without creating a session (the config is completed first, and the
session's options depend on it); ``session_signature`` reads a session's. Imports onnx lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ops.errors import ConfigError

_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(object),
}


@dataclass(frozen=True)
class TensorSignature:
    """A tensor the model file declares: name, numpy dtype, shape (None = dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def session_signature(args: Sequence[object]) -> tuple[TensorSignature, ...]:
    out = []
    for a in args:
        dtype = _ORT_TYPES.get(a.type)  # type: ignore[attr-defined]
        if dtype is None:
            raise ConfigError(f"tensor {a.name!r} has type {a.type}, which fleetserve cannot serve")  # type: ignore[attr-defined]
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in a.shape)  # type: ignore[attr-defined]
        out.append(TensorSignature(a.name, dtype, shape))  # type: ignore[attr-defined]
    return tuple(out)


_ONNX_ELEM_TYPES: dict[int, np.dtype] = {
    9: np.dtype(np.bool_), 2: np.dtype(np.uint8), 4: np.dtype(np.uint16), 12: np.dtype(np.uint32),
    13: np.dtype(np.uint64), 3: np.dtype(np.int8), 5: np.dtype(np.int16), 6: np.dtype(np.int32),
    7: np.dtype(np.int64), 10: np.dtype(np.float16), 1: np.dtype(np.float32), 11: np.dtype(np.float64),
    8: np.dtype(object),
}


def read_signature(model_path: Path) -> tuple[tuple[TensorSignature, ...], tuple[TensorSignature, ...]]:
    """The inputs and outputs an ONNX file declares, read without creating a session.

    Used to complete the model config before the session is built (the session's
    options depend on the config). Raises ConfigError for a file that is not ONNX.
    """
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise ConfigError(f"{model_path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}

    def convert(values: Sequence[object]) -> tuple[TensorSignature, ...]:
        out = []
        for v in values:
            tensor = v.type.tensor_type  # type: ignore[attr-defined]
            dtype = _ONNX_ELEM_TYPES.get(tensor.elem_type)
            if dtype is None:
                raise ConfigError(f"{model_path}: tensor {v.name!r} has ONNX element type {tensor.elem_type}, "  # type: ignore[attr-defined]
                                  "which fleetserve cannot serve")
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor.shape.dim)
            out.append(TensorSignature(v.name, dtype, shape))  # type: ignore[attr-defined]
        return tuple(out)

    if not graph.input and not graph.output:
        raise ConfigError(f"{model_path} is not a readable ONNX model: it declares no inputs or outputs")
    return convert([i for i in graph.input if i.name not in initializers]), convert(graph.output)
