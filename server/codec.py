"""Open Inference Protocol tensors on the wire <-> numpy arrays.

Raw contents are little-endian, row-major; numeric raw inputs become read-only
numpy views over the request's bytes (no copy). BYTES elements travel as a
4-byte little-endian length followed by the bytes. Shared by the gRPC codec
and, later, the REST codec's binary extension. Errors are ``InvalidInput``
naming the tensor, what was expected and what was received.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Sequence

import numpy as np

from model_store.datatypes import BY_NAME, NAMES, Datatype
from ops.errors import InvalidInput

_LEN = struct.Struct("<I")


def datatype_of(tensor_name: str, name: str) -> Datatype:
    dt = BY_NAME.get(name)
    if dt is None:
        raise InvalidInput(f"input '{tensor_name}': unknown datatype '{name}'; expected one of {', '.join(NAMES)}")
    return dt


# The most dimensions numpy (1.x; 2.x holds 64) gives an array, and the most elements any tensor may have: numpy
# refuses an array whose non-zero dimensions, times 8 bytes an element, multiply past 2**63 (even with a 0 among them).
MAX_DIMS = 32
MAX_ELEMENTS = 1 << 59


def checked_shape(tensor_name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple; InvalidInput for a negative dimension, or a shape no array can have."""
    dims = tuple(shape)
    if dims and min(dims) < 0:
        raise InvalidInput(f"input '{tensor_name}': shape {list(dims)} has a negative dimension")
    if len(dims) > MAX_DIMS:
        raise InvalidInput(f"input '{tensor_name}': shape has {len(dims)} dimensions; at most {MAX_DIMS} are supported")
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{tensor_name}': shape {list(dims)} is too large: its non-zero dimensions multiply to more "
            "than 2**59, more elements than any tensor can hold"
        )
    return dims


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def from_raw(tensor_name: str, raw: bytes, dt: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one tensor's raw contents; numeric data is a zero-copy view over ``raw``."""
    count = element_count(shape)
    if dt.itemsize == 0:
        return _bytes_from_raw(tensor_name, raw, shape, count)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{tensor_name}': raw contents hold {len(raw)} bytes, but shape {list(shape)} of "
            f"{dt.name} needs {expected} bytes ({count} elements x {dt.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def _bytes_from_raw(tensor_name: str, raw: bytes, shape: tuple[int, ...], count: int) -> np.ndarray:
    items: list[bytes] = []
    offset, end = 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input '{tensor_name}': BYTES raw contents end inside a 4-byte length prefix")
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input '{tensor_name}': BYTES element {len(items)} claims {length} bytes but only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{tensor_name}': shape {list(shape)} needs {count} BYTES elements, got {len(items)}")
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def to_raw(data: np.ndarray, dt: Datatype) -> bytes:
    """Encode one output tensor as raw contents."""
    if dt.itemsize == 0:
        parts: list[bytes] = []
        for item in data.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return data.tobytes()


# Typed contents: which InferTensorContents field carries each datatype.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def from_contents(tensor_name: str, values: Any, dt: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    """Decode typed contents (a repeated field of the datatype's contents field)."""
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{tensor_name}': shape {list(shape)} needs {count} elements, "
            f"but {CONTENTS_FIELD[dt.name]} holds {len(values)}"
        )
    if dt.itemsize == 0:
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    if dt.name in _NARROW and count:  # int_contents and uint_contents are 32-bit: 300 fits there, not in UINT8
        bounds = np.iinfo(dt.numpy)
        if min(values) < bounds.min or max(values) > bounds.max:
            raise value_out_of_range(tensor_name, next(v for v in values if not bounds.min <= v <= bounds.max), dt)
    return np.array(values, dtype=dt.numpy).reshape(shape)


_NARROW = ("INT8", "INT16", "UINT8", "UINT16")


def value_out_of_range(tensor_name: str, value: int | float, dt: Datatype) -> InvalidInput:
    """The error for a value ``dt`` cannot hold: an integer outside its range, or a finite number that
    would become infinity in a floating-point type."""
    digits = len(str(abs(value))) if isinstance(value, int) else 0
    shown = f"a {digits}-digit number" if digits > 40 else repr(value)
    if dt.numpy.kind == "f":
        largest = float(np.finfo(dt.numpy).max)
        return InvalidInput(
            f"input '{tensor_name}': {shown} is out of range for {dt.name}, whose largest magnitude is {largest:g}: "
            "it would become infinity (send Infinity or -Infinity if that is meant)"
        )
    bounds = np.iinfo(dt.numpy)
    return InvalidInput(f"input '{tensor_name}': {shown} is out of range for {dt.name} ({bounds.min} to {bounds.max})")
