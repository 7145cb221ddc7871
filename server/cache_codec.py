"""Response-cache keys and values: what identifies an inference, and how its outputs travel through Redis.

Key: BLAKE2b-256 over, each field length-prefixed so that no two different requests can feed the
same bytes:

- the model name and version, a BLAKE2b of the completed model config (``ModelConfig.to_proto``,
  serialised deterministically) and one of the version's files (``version_digest``: the model file
  and the files beside and below it, such as external weights; so new weights under the same
  version number never meet old answers);
- each input, sorted by name: name, datatype, shape, and its bytes (raw little-endian for numbers,
  each element length-prefixed for BYTES), so the same bytes with another shape or datatype give
  another key;
- the requested outputs, in order, or a marker for "all of them".

Value: ``FSC1``, a count, then per output its name, datatype, shape and raw contents (the wire's
raw format, server/codec.py). Decoded numeric arrays are read-only views over the value.

Imports numpy, hashlib and server.codec; no Redis, no transport.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Iterable, Mapping, Sequence

import numpy as np

from model_store.config import ModelConfig
from model_store.datatypes import BY_NAME
from ops.errors import ServingError
from server.codec import from_raw, to_raw
from server.types import InputTensor

KEY_BYTES = 32  # 256 bits: collisions are out of reach, and the key is a Redis key only once hex-encoded
_MAGIC = b"FSC1"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _field(h: "hashlib.blake2b", data: bytes) -> None:
    h.update(_U32.pack(len(data)))
    h.update(data)


def config_digest(config: ModelConfig) -> bytes:
    return hashlib.blake2b(config.to_proto().SerializeToString(deterministic=True), digest_size=KEY_BYTES).digest()


def file_digest(path: str, chunk_bytes: int = 1 << 20) -> bytes:
    """BLAKE2b of a file's contents (blocking: call it from a worker thread)."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.digest()


def version_digest(model_file: str) -> bytes:
    """BLAKE2b of what loading one version may read: the model file and every other non-hidden regular file in
    its folder and the folders below (an ONNX model's external data: weights.bin can change while model.onnx
    stays the same), each with its path. Blocking: call it from a worker thread."""
    folder, name = os.path.split(model_file)
    folder = folder or "."
    others = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            path = os.path.join(here, file)
            if not file.startswith(".") and path != os.path.join(folder, name) and os.path.isfile(path):
                others.append(os.path.relpath(path, folder))
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in (name, *sorted(others)):
        _field(h, part.encode())
        _field(h, file_digest(os.path.join(folder, part)))
    return h.digest()


def key_prefix(model: str, version: str, config: bytes, model_file: bytes) -> "hashlib.blake2b":
    """The hash state after the fields every key of one loaded model version shares (copy it per request)."""
    h = hashlib.blake2b(digest_size=KEY_BYTES, person=b"fleetserve-rc1")
    for part in (model.encode(), version.encode(), config, model_file):
        _field(h, part)
    return h


def request_key(prefix: "hashlib.blake2b", inputs: Iterable[InputTensor], requested: Sequence[str] | None) -> bytes:
    """The key of one request: ``prefix`` (``key_prefix``) extended by its inputs and requested outputs."""
    h = prefix.copy()
    tensors = sorted(inputs, key=lambda t: t.name)
    h.update(_U32.pack(len(tensors)))
    for t in tensors:
        _field(h, t.name.encode())
        _field(h, t.datatype.encode())
        h.update(_U32.pack(len(t.shape)))
        for d in t.shape:
            h.update(_U64.pack(d))
        data = t.data
        if data.dtype == object:
            h.update(_U64.pack(data.size))
            for item in data.reshape(-1):
                _field(h, item if isinstance(item, bytes) else str(item).encode())
        else:
            array = np.ascontiguousarray(data)
            h.update(_U64.pack(array.nbytes))
            h.update(array.data)
    if requested is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + _U32.pack(len(requested)))
        for name in requested:
            _field(h, name.encode())
    return h.digest()


def encode_outputs(outputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> bytes:
    """The Redis value for ``outputs`` (``datatypes``: each output's protocol datatype)."""
    parts = [_MAGIC, _U16.pack(len(outputs))]
    for name, array in outputs.items():
        datatype = datatypes[name]
        raw = to_raw(array, BY_NAME[datatype])
        name_bytes, dt_bytes = name.encode(), datatype.encode()
        parts += [_U16.pack(len(name_bytes)), name_bytes, _U16.pack(len(dt_bytes)), dt_bytes,
                  _U16.pack(array.ndim), *(_U64.pack(d) for d in array.shape), _U64.pack(len(raw)), raw]
    return b"".join(parts)


def decode_outputs(blob: bytes) -> dict[str, np.ndarray]:
    """Outputs from a Redis value. Raises ValueError for a value this version did not write."""
    if not blob.startswith(_MAGIC):
        raise ValueError("not a fleetserve response-cache value")
    try:
        view = memoryview(blob)
        offset = len(_MAGIC)
        (count,) = _U16.unpack_from(blob, offset)
        offset += 2
        out: dict[str, np.ndarray] = {}
        for _ in range(count):
            (n,) = _U16.unpack_from(blob, offset)
            name = bytes(view[offset + 2 : offset + 2 + n]).decode()
            offset += 2 + n
            (n,) = _U16.unpack_from(blob, offset)
            datatype = bytes(view[offset + 2 : offset + 2 + n]).decode()
            offset += 2 + n
            (ndim,) = _U16.unpack_from(blob, offset)
            offset += 2
            shape = tuple(_U64.unpack_from(blob, offset + 8 * i)[0] for i in range(ndim))
            offset += 8 * ndim
            (size,) = _U64.unpack_from(blob, offset)
            offset += 8
            if offset + size > len(blob):
                raise ValueError("truncated response-cache value")
            out[name] = from_raw(name, view[offset : offset + size], BY_NAME[datatype], shape)  # type: ignore[arg-type]
            offset += size
    except (struct.error, KeyError, UnicodeDecodeError, ServingError) as exc:
        raise ValueError(f"malformed response-cache value: {exc}") from exc
    if offset != len(blob):
        raise ValueError("trailing bytes in a response-cache value")
    return out
