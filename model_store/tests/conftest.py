"""Fixtures for the model_store tests: an ONNX file's signature as onnxruntime reports it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest

from model_store.complete import ModelTensor

# onnxruntime's type strings; the kernel maps them the same way.
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

Signature = tuple[list[ModelTensor], list[ModelTensor]]


def _tensor(arg: ort.NodeArg) -> ModelTensor:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)  # symbolic names and None: variable
    return ModelTensor(arg.name, _ORT_TYPES[arg.type], shape)


def ort_signature(path: Path) -> Signature:
    """(inputs, outputs) of the model file at ``path``, from a real onnxruntime CPU session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return [_tensor(a) for a in session.get_inputs()], [_tensor(a) for a in session.get_outputs()]


@pytest.fixture(name="ort_signature", scope="session")
def ort_signature_fixture() -> Callable[[Path], Signature]:
    return ort_signature
