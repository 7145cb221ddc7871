"""Tensors as JSON ``data`` (the REST API's non-binary form) <-> numpy arrays.

Read as Triton reads them, strictly: elements are JSON values of the datatype (true/false for BOOL,
integers for the integer types, numbers for FP16/FP32/FP64, strings for BYTES), flat or nested, and
each fits its datatype: 300 as UINT8, -1 as UINT32 or 1e300 as FP32 (a finite number that would
become infinity) is refused, never wrapped, clipped or rounded to infinity, whatever numpy version
runs. NaN, Infinity and -Infinity (the tokens Python's JSON reads and writes, as Triton does) stay
as they are. A JSON string is Unicode text, sent as its UTF-8 bytes; bytes that are not UTF-8 cannot
travel as JSON (binary data carries them). BF16 has no JSON form either way.

Errors are ``InvalidInput`` naming the tensor, the value and what was expected. Imports numpy,
model_store.datatypes, ops.errors and server.codec only.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from model_store.datatypes import Datatype
from ops.errors import InvalidInput
from server.codec import element_count, value_out_of_range


def no_json_output(name: str) -> InvalidInput:
    return InvalidInput(
        f"output '{name}': BF16 has no JSON form; ask for it as binary data: "
        f'"parameters": {{"binary_data": true}} on the output, or "binary_data_output": true '
        "in the request's parameters"
    )


def from_json(name: str, data: Any, dt: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    """Input ``name``'s JSON ``data`` (flat or nested; a lone value for one element) as an array of ``shape``."""
    count = element_count(shape)
    if dt.name == "BF16":
        raise InvalidInput(f"input '{name}': BF16 has no JSON form; send it as binary data")
    if not isinstance(data, list):
        data = [data]
    if dt.itemsize == 0:
        arr = _text(name, data)
    else:
        _check_values(name, data, dt)
        try:
            arr = np.asarray(data, dtype=dt.numpy)
        except OverflowError:  # an integer past float64's range, for a floating-point type
            raise _first_overflow(name, data, dt) from None
        except ValueError:  # every value is of the datatype and fits it: only the nesting can be wrong
            raise _ragged(name, dt.name) from None
        if dt.numpy.kind == "f" and dt.itemsize < 8 and np.isinf(arr).any():
            _check_no_overflow(name, data, arr, dt)
    if arr.size != count:
        raise InvalidInput(f"input '{name}': shape {list(shape)} needs {count} elements, but 'data' holds {arr.size}")
    return arr.reshape(shape)


def to_json(name: str, data: np.ndarray, dt: Datatype) -> list[Any]:
    """Output ``name`` as flat JSON values (BYTES as strings)."""
    if dt.name == "BF16":  # refused before the request ran (OutputChoice.check); never answered as numbers
        raise no_json_output(name)
    if dt.itemsize:
        return data.reshape(-1).tolist()
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in data.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output '{name}' holds bytes that are not UTF-8 text; request it with the binary_data parameter"
        ) from None


def _ragged(name: str, datatype: str) -> InvalidInput:
    return InvalidInput(f"input '{name}': 'data' is not a regular array of {datatype}: its nested lists differ in length")


def _text(name: str, data: list[Any]) -> np.ndarray:
    try:
        flat = np.asarray(data, dtype=object).reshape(-1)
    except ValueError:
        raise _ragged(name, "BYTES") from None
    arr = np.empty(len(flat), dtype=object)
    for i, value in enumerate(flat):
        if type(value) is not str:
            if type(value) is list:  # numpy keeps the lists of a ragged nesting as elements
                raise _ragged(name, "BYTES")
            raise InvalidInput(f"input '{name}': BYTES data must be JSON strings, got {json.dumps(value)[:40]}")
        try:
            arr[i] = value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"input '{name}': element {i} is not text: it holds the lone surrogate "
                f"{value[exc.start]!r}, an escape that encodes no character. JSON strings carry Unicode text "
                "(sent as UTF-8); send bytes that are not UTF-8 as binary data (binary_data_size)"
            ) from None
    return arr


# The JSON values each datatype takes, as Triton reads them: true/false for BOOL, integers for the
# integer types, any number for the floating-point ones. numpy alone would read null as NaN,
# "false" as True, "1.5" as 1.5 and 1.5 as 1 for an integer type.
_INTEGERS = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "true or false"),
    **{n: (frozenset({int}), "integers") for n in _INTEGERS},
    **{n: (frozenset({int, float}), "numbers") for n in ("FP16", "FP32", "FP64")},
}


def _check_values(name: str, data: list[Any], dt: Datatype) -> None:
    """InvalidInput unless every element of ``data`` (nested lists walked) is a JSON value of ``dt``, and,
    for an integer type, within its range (numpy 1.x would wrap 300 to 44 as UINT8)."""
    allowed, what = _JSON_TYPES[dt.name]
    bounds = np.iinfo(dt.numpy) if dt.name in _INTEGERS else None
    stack = [data]
    while stack:
        values = stack.pop()
        kinds = set(map(type, values))  # exact types: a JSON true is a bool, never an int
        if list in kinds:
            stack.extend(v for v in values if type(v) is list)
            kinds.discard(list)
            values = [v for v in values if type(v) is not list]
        if not kinds <= allowed:
            bad = next(v for v in values if type(v) not in allowed)
            raise InvalidInput(f"input '{name}': 'data' of {dt.name} must hold {what}, got {json.dumps(bad)[:40]}")
        if bounds is not None and values and (min(values) < bounds.min or max(values) > bounds.max):
            raise value_out_of_range(name, next(v for v in values if not bounds.min <= v <= bounds.max), dt)


def _check_no_overflow(name: str, data: list[Any], arr: np.ndarray, dt: Datatype) -> None:
    """InvalidInput when a finite JSON number became infinity in ``dt`` (FP16 or FP32)."""
    for value, converted in zip(_leaves(data), arr.reshape(-1).tolist()):
        if math.isinf(converted) and not (isinstance(value, float) and math.isinf(value)):
            raise value_out_of_range(name, value, dt)


def _first_overflow(name: str, data: list[Any], dt: Datatype) -> InvalidInput:
    for value in _leaves(data):
        if isinstance(value, int) and abs(value) > float(np.finfo(dt.numpy).max):
            return value_out_of_range(name, value, dt)
    return _ragged(name, dt.name)


def _leaves(data: list[Any]) -> Any:
    """``data``'s values in row-major order (nested lists flattened)."""
    for value in data:
        if type(value) is list:
            yield from _leaves(value)
        else:
            yield value
