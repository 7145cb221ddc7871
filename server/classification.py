"""Triton's classification extension: an output answered as its top classes instead of its tensor.

A request asks for it per output, with the output's ``classification`` parameter (tritonclient's
``class_count=k``): an ``int64_param`` over gRPC, a JSON integer over REST. The codecs read it
with ``grpc_class_count`` / ``json_class_count`` into ``InferRequest.classification``; validation
checks the outputs' datatypes with ``check_classification`` before the request queues; the
dataplane replaces each such output, built from the request's own rows once its batch is split,
with ``classify_outputs``. So both transports, the stream and the response cache (which holds the
model's tensors, never the strings) see the same answer.

What Triton answers, and so what this module does:

- the output becomes BYTES of shape ``[batch, min(k, n)]`` for a model that batches, else
  ``[min(k, n)]``, where n is the number of elements in one row: the dims after the batch
  dimension are flattened, and a class index is a position in that flattened row;
- each element is ``"<value>:<index>"``, or ``"<value>:<index>:<label>"`` when the output's label
  file gives that index a non-empty label; classes come in descending order of value, compared in
  the output's datatype;
- a value is written as Triton's C++ writes it (``std::to_string``, which is printf's ``%d`` and
  ``%f``): integers in decimal, FP32 and FP64 with six digits after the point (``0.75`` is
  ``0.750000``), NaN as ``nan`` or ``-nan`` by its sign;
- UINT8..UINT64, INT8..INT64, FP32 and FP64 outputs can be classified; BOOL, FP16, BF16 and BYTES
  outputs are refused, as Triton refuses them;
- over gRPC the parameter must be an ``int64_param`` of at least 1; over REST a JSON integer of at
  least 0, where 0 asks for the plain tensor, as Triton reads it.

Where Triton leaves the order unspecified, it is fixed here: equal values come lowest index first,
and NaN ranks below every number.

Pure functions over numpy and the dataplane's types; imports no transport.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from model_store.config import TensorSpec
from ops.errors import InvalidInput
from server.types import OutputTensor

PARAMETER = "classification"
# The datatypes Triton classifies: those its classifier has a numeric type for.
CLASSIFIABLE = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64")
_UINT64_MAX = (1 << 64) - 1
_WHAT = "the 'classification' parameter (tritonclient's class_count: how many top classes to return)"


def grpc_class_count(output: str, kind: str | None, value: Any) -> int:
    """The count an output's gRPC ``classification`` parameter asks for. ``kind``: which field of the
    InferParameter is set (``WhichOneof``), ``value``: its value. InvalidInput unless it is an
    ``int64_param`` of at least 1."""
    if kind != "int64_param":
        got = f"{kind} {value!r}" if kind else "no value"
        raise InvalidInput(f"output '{output}': {_WHAT} must be an int64_param, got {got}")
    if value < 1:
        raise InvalidInput(f"output '{output}': {_WHAT} must be at least 1, got {value}")
    return int(value)


def json_class_count(output: str, value: Any) -> int:
    """The count an output's REST ``classification`` parameter asks for; 0 asks for the plain tensor, as
    Triton reads it. InvalidInput unless it is an integer from 0 to 2**64 - 1 (Triton's unsigned 64-bit)."""
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:  # a JSON true is a bool, never a count
        raise InvalidInput(f"output '{output}': {_WHAT} must be a whole number from 0 to 2**64 - 1 (0 returns "
                           f"the output as a tensor), got {json.dumps(value)[:40]}")
    return value


def check_classification(model: str, outputs: Sequence[TensorSpec], counts: Mapping[str, int]) -> None:
    """InvalidInput for an output asked for as classes whose datatype has no classes. ``outputs``: the specs
    of the outputs the response will hold, which include every name in ``counts``."""
    for spec in outputs:
        if spec.name in counts and spec.datatype.name not in CLASSIFIABLE:
            raise InvalidInput(
                f"model '{model}' output '{spec.name}' is {spec.datatype.name}: {_WHAT} needs a numeric output "
                f"({', '.join(CLASSIFIABLE)}); request the output without it"
            )


def classify_outputs(
    outputs: list[OutputTensor], counts: Mapping[str, int], batched: bool, labels: Mapping[str, Sequence[bytes]],
) -> list[OutputTensor]:
    """``outputs`` with each one named in ``counts`` replaced by its top classes (module docstring).
    ``batched``: the model batches (the first dimension is the batch); ``labels``: per output, by class index."""
    return [
        _classified(out, counts[out.name], batched, labels.get(out.name, ())) if out.name in counts else out
        for out in outputs
    ]


def _classified(out: OutputTensor, k: int, batched: bool, labels: Sequence[bytes]) -> OutputTensor:
    data = out.data
    rows = data.reshape(data.shape[0] if batched else 1, -1)
    top = top_classes(rows, k)
    shown: Callable[[Any], bytes] = _float_text if rows.dtype.kind == "f" else _int_text
    cells: np.ndarray = np.empty(top.shape, dtype=object)
    for r, (row, order) in enumerate(zip(rows.tolist(), top.tolist())):
        for c, index in enumerate(order):
            text = b"%s:%d" % (shown(row[index]), index)
            label = labels[index] if index < len(labels) else b""
            cells[r, c] = text + b":" + label if label else text
    if not batched:  # Triton's shape for a model without a batch dimension: [min(k, n)]
        cells = cells.reshape(-1)
    return OutputTensor(out.name, "BYTES", cells.shape, cells)


def top_classes(rows: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's ``min(k, n)`` highest values, highest first; equal values lowest index first,
    NaN last. ``rows``: a 2-D array of one numeric datatype."""
    if rows.dtype.kind == "f":
        key = -rows  # NaN stays NaN, which numpy sorts after every number
    else:
        key = ~rows  # reverses the order of any integer type without overflow (-x would wrap the minimum)
    return np.argsort(key, axis=1, kind="stable")[:, :min(k, rows.shape[1])]


def _int_text(value: int) -> bytes:
    return b"%d" % value


def _float_text(value: float) -> bytes:
    """``value`` as C's ``%f`` (what ``std::to_string`` uses) writes it, NaN's sign included."""
    if value != value:
        return b"-nan" if math.copysign(1.0, value) < 0 else b"nan"
    return b"%f" % value
