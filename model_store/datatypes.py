"""Tensor datatypes: the protocol's names and their numpy, config and ONNX forms.

One table, so that the wire codecs, config completion and validation agree.
BYTES tensors are numpy object arrays of ``bytes`` (onnxruntime's string type).
BF16 has no numpy dtype; it travels as raw 2-byte words (numpy uint16) and is
served only by models that declare it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    """One datatype in all its spellings."""

    name: str  # protocol name: "FP32"
    numpy: np.dtype  # little-endian numpy dtype; object for BYTES; uint16 words for BF16
    config_name: str  # config.pbtxt enum name: "TYPE_FP32"
    onnx_type: int  # onnx.TensorProto.DataType value
    itemsize: int  # bytes per element in raw contents; 0 for BYTES (variable)


_TABLE = (
    Datatype("BOOL", np.dtype(np.bool_), "TYPE_BOOL", 9, 1),
    Datatype("UINT8", np.dtype("<u1"), "TYPE_UINT8", 2, 1),
    Datatype("UINT16", np.dtype("<u2"), "TYPE_UINT16", 4, 2),
    Datatype("UINT32", np.dtype("<u4"), "TYPE_UINT32", 12, 4),
    Datatype("UINT64", np.dtype("<u8"), "TYPE_UINT64", 13, 8),
    Datatype("INT8", np.dtype("<i1"), "TYPE_INT8", 3, 1),
    Datatype("INT16", np.dtype("<i2"), "TYPE_INT16", 5, 2),
    Datatype("INT32", np.dtype("<i4"), "TYPE_INT32", 6, 4),
    Datatype("INT64", np.dtype("<i8"), "TYPE_INT64", 7, 8),
    Datatype("FP16", np.dtype("<f2"), "TYPE_FP16", 10, 2),
    Datatype("FP32", np.dtype("<f4"), "TYPE_FP32", 1, 4),
    Datatype("FP64", np.dtype("<f8"), "TYPE_FP64", 11, 8),
    Datatype("BYTES", np.dtype(object), "TYPE_STRING", 8, 0),
    Datatype("BF16", np.dtype("<u2"), "TYPE_BF16", 16, 2),
)

BY_NAME: dict[str, Datatype] = {d.name: d for d in _TABLE}
BY_CONFIG_NAME: dict[str, Datatype] = {d.config_name: d for d in _TABLE}
BY_ONNX_TYPE: dict[int, Datatype] = {d.onnx_type: d for d in _TABLE}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def from_numpy(dtype: np.dtype) -> Datatype:
    """The protocol datatype of a numpy dtype (object and str/bytes kinds map to BYTES)."""
    if dtype.kind in "OSU":
        return BY_NAME["BYTES"]
    for d in _TABLE:
        if d.numpy == dtype.newbyteorder("<") and d.name != "BF16":
            return d
    raise ValueError(f"numpy dtype {dtype} has no protocol datatype")
