"""Fixtures for the model_store tests: an ONNX file's signature as onnxruntime reports it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnxruntime as ort
import pytest

from kernels.signature import session_signature
from model_store.complete import ModelTensor

Signature = tuple[list[ModelTensor], list[ModelTensor]]


def ort_signature(path: Path) -> Signature:
    """(inputs, outputs) of the model file at ``path``, from a real onnxruntime CPU session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return _tensors(session.get_inputs()), _tensors(session.get_outputs())


def _tensors(args: list[ort.NodeArg]) -> list[ModelTensor]:
    """As the kernel reads a session's tensors (symbolic names and None: variable)."""
    return [ModelTensor(t.name, t.dtype, t.shape) for t in session_signature(args)]


@pytest.fixture(name="ort_signature", scope="session")
def ort_signature_fixture() -> Callable[[Path], Signature]:
    return ort_signature
