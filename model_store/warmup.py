"""Warm-up samples (Triton's ``model_warmup``): read from the config, and made into a run's inputs.

A version with warm-up samples runs each of them (``count`` times, on every session) before it serves,
and fails to load if one fails, as in Triton. The samples are checked against the model's inputs when
the config is built (every input given, with its datatype and concrete dims it accepts, a batch size the
model takes), so a sample that could never run is a config error naming the field. Data:
``zero_data`` (zeros; empty strings for BYTES), ``random_data`` (floats in [0, 1), integers and
booleans 0 or 1, so that an index input stays in range; BYTES get empty strings, as Triton falls back
to zero data for strings), or ``input_data_file``: a file in the model folder's ``warmup/`` folder
holding one row's raw data, row-major, little-endian (a BYTES element: a 4-byte little-endian length,
then its bytes). Each row of a ``batch_size`` > 1 sample repeats that data.

Imports model_store.config, model_store.datatypes, the generated config messages and ops.errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_store.config import TensorSpec, WarmupInput, WarmupSample
from model_store.datatypes import BY_CONFIG_NAME
from model_store.protos import model_config_pb2 as pb
from ops.errors import ConfigError

if TYPE_CHECKING:
    from model_store.options import Where

WARMUP_FOLDER = "warmup"


def samples(msg: pb.ModelConfig, inputs: tuple[TensorSpec, ...], max_batch_size: int, where: "Where") -> tuple[WarmupSample, ...]:
    """The config's ``model_warmup``, checked against the model's ``inputs``; raises ``ConfigError``."""
    out: list[WarmupSample] = []
    for index, sample in enumerate(msg.model_warmup):
        field = f"model_warmup[{index}]"
        if sample.batch_size < 1:
            raise where.error(f"{field}.batch_size", f"is {sample.batch_size}; give 1 or more rows")
        if max_batch_size == 0 and sample.batch_size != 1:
            raise where.error(f"{field}.batch_size", f"is {sample.batch_size}; a model that does not batch "
                              "(max_batch_size 0) takes a batch_size of 1")
        if max_batch_size > 0 and sample.batch_size > max_batch_size:
            raise where.error(f"{field}.batch_size", f"is {sample.batch_size}, over max_batch_size {max_batch_size}")
        names = [spec.name for spec in inputs]
        unknown = sorted(set(sample.inputs) - set(names))
        if unknown:
            raise where.error(f"{field}.inputs", f"name {', '.join(repr(n) for n in unknown)}, which the model does "
                              f"not have; its inputs: {', '.join(names)}")
        missing = [n for n in names if n not in sample.inputs]
        if missing:
            raise where.error(f"{field}.inputs", f"leave out {', '.join(repr(n) for n in missing)}; a warm-up "
                              "sample gives every input of the model")
        given = {spec.name: _input(sample.inputs[spec.name], spec, f'{field}.inputs["{spec.name}"]', where)
                 for spec in inputs}
        out.append(WarmupSample(sample.name, sample.batch_size, given, max(1, sample.count)))
    return tuple(out)


def _input(msg: pb.ModelWarmup.Input, spec: TensorSpec, field: str, where: "Where") -> WarmupInput:
    try:
        datatype = BY_CONFIG_NAME[pb.DataType.Name(msg.data_type)]
    except (KeyError, ValueError):
        raise where.error(f"{field}.data_type", f"{msg.data_type} is not a datatype; give {spec.datatype.config_name}") from None
    if datatype != spec.datatype:
        raise where.error(f"{field}.data_type", f"is {datatype.config_name}, but the input is {spec.datatype.config_name}")
    dims = tuple(msg.dims)
    fits = len(dims) == len(spec.dims) and all(d >= 1 and (want < 0 or d == want) for d, want in zip(dims, spec.dims))
    if not fits:
        raise where.error(f"{field}.dims", f"are {list(dims)}; the input takes {list(spec.dims)} (without the batch "
                          "dimension; give each -1 a size of 1 or more)")
    data = msg.WhichOneof("input_data_type")
    if data is None:
        raise where.error(field, "gives no data; set zero_data: true, random_data: true or input_data_file")
    file = msg.input_data_file
    if data == "input_data_file" and (not file or file in (".", "..") or any(c in file for c in "/\\\0")):
        raise where.error(f"{field}.input_data_file", f"is {file!r}; give the name of a file in the model "
                          f"folder's {WARMUP_FOLDER}/ folder, without path separators")
    return WarmupInput(datatype, dims, data, file)


def feeds(sample: WarmupSample, model_folder: Path, batching: bool, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """The inputs of one run of ``sample``: with ``batching``, ``batch_size`` rows of each input's data.
    Raises ``ConfigError`` for a data file that is missing or the wrong size."""
    rng = rng or np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for name, given in sample.inputs.items():
        row = _row(name, given, model_folder, rng)
        out[name] = np.repeat(row[np.newaxis], sample.batch_size, axis=0) if batching else row
    return out


def _row(name: str, given: WarmupInput, model_folder: Path, rng: np.random.Generator) -> np.ndarray:
    dtype, dims = given.datatype.numpy, given.dims
    if given.datatype.name == "BYTES":
        if given.data != "input_data_file":
            return np.full(dims, b"", dtype=object)
        return _strings(name, _read(name, given, model_folder), dims)
    if given.data == "zero_data":
        return np.zeros(dims, dtype)
    if given.data == "random_data":
        if dtype.kind == "f":
            return rng.random(dims).astype(dtype)
        return rng.integers(0, 2, dims).astype(dtype)
    raw = _read(name, given, model_folder)
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(f"input {name!r}: {WARMUP_FOLDER}/{given.file} holds {len(raw)} bytes; dims {list(dims)} of "
                          f"{given.datatype.name} take {expected}")
    return np.frombuffer(raw, dtype).reshape(dims)


def _read(name: str, given: WarmupInput, model_folder: Path) -> bytes:
    path = model_folder / WARMUP_FOLDER / given.file
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"input {name!r}: cannot read its warm-up data {path}: {exc.strerror or exc}") from None


def _strings(name: str, raw: bytes, dims: tuple[int, ...]) -> np.ndarray:
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ConfigError(f"input {name!r}: its warm-up data ends inside an element's 4-byte length")
        size = int.from_bytes(raw[at:at + 4], "little")
        at += 4
        if at + size > len(raw):
            raise ConfigError(f"input {name!r}: its warm-up data ends inside an element ({size} bytes announced)")
        items.append(raw[at:at + size])
        at += size
    if len(items) != math.prod(dims):
        raise ConfigError(f"input {name!r}: its warm-up data holds {len(items)} elements; dims {list(dims)} take "
                          f"{math.prod(dims)}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(dims)

