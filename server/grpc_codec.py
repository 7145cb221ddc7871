"""ModelInferRequest / ModelInferResponse protobufs <-> the dataplane's types.

``RequestDecoder`` decodes a request straight from its bytes when an earlier request had the same
structure: a client's requests usually differ only in their ``id`` and their raw input contents.
``ResponseEncoder`` writes a response's bytes from parts serialised once, byte for byte what
protobuf writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from google.protobuf.message import DecodeError

from model_store.datatypes import BY_NAME
from ops.errors import InvalidInput
from server.codec import (
    CONTENTS_FIELD,
    checked_shape,
    datatype_of,
    from_contents,
    from_raw,
    to_raw,
)
from server.classification import PARAMETER as CLASSIFICATION, grpc_class_count
from server.protos import grpc_service_pb2 as pb
from server.shared_memory import REGION, SharedMemoryRegistry, TensorRegion, read_input
from server.types import InferRequest, InferResponse, InputTensor

# ModelInferRequest's fields are 1-7, all length-delimited, so each tag is one byte: field << 3 | 2.
_ID_TAG = 3 << 3 | 2
_RAW_TAG = 7 << 3 | 2
_TEMPLATES = 1024  # structures remembered per decoder; a full table starts over
_TEMPLATE_KEY_BYTES = 4096  # longer structures (typed contents, many parameters) are decoded in full
_ENCODED_PARTS = 4096  # serialised headers and output descriptions remembered; a full table starts over

_NO_REGIONS = SharedMemoryRegistry()  # what a decoder without a registry sees: no region is registered


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _params(parameters: Any) -> dict[str, Any]:
    return {k: _param_value(v) for k, v in parameters.items()}


def decode_infer_request(msg: pb.ModelInferRequest, timeout_s: float | None,
                         regions: SharedMemoryRegistry | None = None) -> InferRequest:
    """Decode a request; numeric raw inputs stay views over the message's bytes, or over the shared-memory
    region that ``regions`` maps (None: no region is registered)."""
    raw = msg.raw_input_contents
    n_raw = len(raw)
    if n_raw and n_raw != len(msg.inputs) and n_raw != sum(REGION not in t.parameters for t in msg.inputs):
        raise InvalidInput(
            f"the request has {len(msg.inputs)} inputs but {n_raw} raw_input_contents entries; "
            "give raw contents for every input not in shared memory, or for none"
        )
    inputs = []
    i = 0  # the next raw content: inputs in shared memory have none
    for tensor in msg.inputs:
        name = tensor.name
        dt = datatype_of(name, tensor.datatype)
        shape = checked_shape(name, tensor.shape)
        if REGION in tensor.parameters:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{name}': contents must not be set when the input is in shared memory")
            data = read_input(regions or _NO_REGIONS, name, _params(tensor.parameters), dt, shape)
        elif n_raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}': contents must not be set when the request uses raw_input_contents"
                )
            data = from_raw(name, raw[i], dt, shape)
            i += 1
        elif tensor.HasField("contents"):
            field = CONTENTS_FIELD.get(dt.name)
            if field is None:
                raise InvalidInput(f"input '{name}': {dt.name} has no typed contents field; send it as raw_input_contents")
            # Values in another field would be dropped unread: refused, naming the field the datatype takes.
            others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
            if others:
                raise InvalidInput(
                    f"input '{name}': {dt.name} values go in contents.{field}, but the request sets "
                    f"{', '.join('contents.' + o for o in others)}"
                )
            data = from_contents(name, getattr(tensor.contents, field), dt, shape)
        else:
            raise InvalidInput(f"input '{name}': no data; set contents or raw_input_contents")
        inputs.append(InputTensor(name, dt.name, shape, data))
    classes: dict[str, int] | None = None
    output_regions: dict[str, TensorRegion] | None = None
    for output in msg.outputs:
        out_params = output.parameters
        if not out_params:
            continue
        if CLASSIFICATION in out_params:
            p = out_params[CLASSIFICATION]
            if classes is None:
                classes = {}
            classes[output.name] = grpc_class_count(output.name, p.WhichOneof("parameter_choice"), _param_value(p))
        if REGION in out_params:
            output_regions = output_regions or {}
            output_regions[output.name] = (regions or _NO_REGIONS).tensor(
                f"output '{output.name}'", _params(out_params))
    params = {k: _param_value(v) for k, v in msg.parameters.items()} if msg.parameters else {}
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        requested_outputs=[o.name for o in msg.outputs] if msg.outputs else None,
        parameters=params,
        deadline=(time.monotonic() + timeout_s) if timeout_s is not None else None,
        classification=classes,
        output_regions=output_regions,
    )


def parse_infer_request(data: bytes) -> pb.ModelInferRequest:
    """The protobuf message, or InvalidInput when the bytes are not one."""
    return parse_request(pb.ModelInferRequest, data)


def parse_request(message_class: Any, data: bytes) -> Any:
    """``data`` parsed as ``message_class``, or InvalidInput when the bytes are not one (cut short, or a string
    field that is not UTF-8, which protobuf refuses), so the caller gets INVALID_ARGUMENT, not UNKNOWN."""
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        raise InvalidInput(
            f"the request is not a valid {message_class.DESCRIPTOR.name} message: {exc} (bytes cut short, "
            "or a string field that is not UTF-8)"
        ) from None


def request_names(data: bytes) -> tuple[str, str, str]:
    """(model name, version, id) of a request that failed to decode, as far as its bytes tell; for error replies."""
    try:
        msg = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return "", "", ""
    return msg.model_name, msg.model_version, msg.id


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


@dataclass(frozen=True, slots=True)
class _Template:
    """What a decoded request shares with every request of the same structure."""

    model_name: str
    model_version: str
    inputs: tuple[_Input, ...]
    requested_outputs: tuple[str, ...] | None
    parameters: dict[str, Any]
    classification: Mapping[str, int] | None


def _split(data: bytes) -> tuple[bytes, bytes, list[memoryview]] | None:
    """(structure key, id, raw contents) of a serialised ModelInferRequest; None for anything unusual.

    The key is every top-level field but ``id`` and ``raw_input_contents``, byte for byte, in order.
    None (decode it in full) for a tag that is not a one-byte length-delimited field, or a length
    that runs past the end: whatever is wrong, the full decoder says it.
    """
    view = memoryview(data)
    key: list[bytes] = []
    rid = b""
    raws: list[memoryview] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            start = pos
            tag = data[pos]
            if tag & 0x87 != 2:  # a multi-byte tag or another wire type
                return None
            length = data[pos + 1]
            pos += 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    byte = data[pos]
                    pos += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 35:
                        return None
            stop = pos + length
            if stop > end:
                return None
            if tag == _RAW_TAG:
                raws.append(view[pos:stop])
            elif tag == _ID_TAG:
                rid = data[pos:stop]
            else:
                key.append(data[start:stop])
            pos = stop
    except IndexError:
        return None
    return b"".join(key), rid, raws


class RequestDecoder:
    """Decodes serialised ModelInferRequests; one per server (loop-bound, not thread-safe).

    The first request of a structure is decoded in full (``decode_infer_request``). When it has raw
    contents for every input, all of fixed-size datatypes, its decoded form becomes a template, keyed
    by the request's bytes without its ``id`` and raw contents. A later request with the same key is
    then decoded from its bytes: the template's names, shapes, outputs (with their classification counts)
    and parameters, its own id, and numpy views over its own raw contents. That skips the protobuf
    message and its accessors, most of what decoding costs. Any mismatch (a raw content of another size, an id that is not
    UTF-8) falls back to the full decoder, which names the error.
    """

    def __init__(self, capacity: int = _TEMPLATES, regions: SharedMemoryRegistry | None = None) -> None:
        self.capacity = capacity
        self.regions = regions  # where tensors in shared memory are (None: no region is registered)
        self._templates: dict[bytes, _Template] = {}
        self.reused = 0  # requests decoded from a template

    def decode(self, data: bytes, timeout_s: float | None) -> InferRequest:
        split = _split(data)
        if split is not None:
            key, rid, raws = split
            template = self._templates.get(key)
            if template is not None:
                request = _from_template(template, rid, raws, timeout_s)
                if request is not None:
                    self.reused += 1
                    return request
        request = decode_infer_request(parse_infer_request(data), timeout_s, self.regions)
        if split is not None and len(split[0]) <= _TEMPLATE_KEY_BYTES:
            self._remember(split[0], request, len(split[2]))
        return request

    def _remember(self, key: bytes, request: InferRequest, n_raw: int) -> None:
        if not n_raw or n_raw != len(request.inputs):  # typed contents live in the key: each request its own
            return
        if request.output_regions is not None:  # each request its own place in shared memory
            return
        inputs = []
        for tensor in request.inputs:
            data = tensor.data
            if data.dtype.kind == "O":  # BYTES: no fixed size to check a raw content against
                return
            inputs.append(_Input(tensor.name, tensor.datatype, tensor.shape, data.dtype, data.nbytes))
        if len(self._templates) >= self.capacity:
            self._templates.clear()
        outputs = request.requested_outputs
        self._templates[key] = _Template(
            request.model_name, request.model_version, tuple(inputs), tuple(outputs) if outputs is not None else None,
            dict(request.parameters), request.classification,
        )


def _from_template(template: _Template, rid: bytes, raws: list[memoryview], timeout_s: float | None) -> InferRequest | None:
    """The request from a template and its own bytes; None when they do not fit (the full decoder explains)."""
    specs = template.inputs
    if len(raws) != len(specs):
        return None
    try:
        request_id = rid.decode()
    except UnicodeDecodeError:
        return None
    inputs = []
    for spec, raw in zip(specs, raws):
        if len(raw) != spec.nbytes:
            return None
        inputs.append(InputTensor(spec.name, spec.datatype, spec.shape, np.frombuffer(raw, spec.dtype).reshape(spec.shape)))
    outputs = template.requested_outputs
    return InferRequest(
        model_name=template.model_name,
        model_version=template.model_version,
        id=request_id,
        inputs=inputs,
        requested_outputs=list(outputs) if outputs is not None else None,
        parameters=dict(template.parameters) if template.parameters else {},
        deadline=(time.monotonic() + timeout_s) if timeout_s is not None else None,
        classification=template.classification,
    )


def _in_region(out: Any, place: TensorRegion) -> bytes:
    """The serialised output entry of an output written to shared memory: no data, the region's parameters."""
    params = place.write(out.name, to_raw(out.data, BY_NAME[out.datatype]))
    entry = pb.ModelInferResponse.InferOutputTensor(name=out.name, datatype=out.datatype, shape=out.shape)
    for key, value in params.items():
        if isinstance(value, str):
            entry.parameters[key].string_param = value
        else:
            entry.parameters[key].int64_param = value
    return entry.SerializeToString()


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field; empty ones are left out, as proto3 writes singular fields."""
    return tag + _varint(len(payload)) + payload if payload else b""


# ModelInferResponse.parameters (field 4) holding {"triton_final_response": bool_param true}: a stream
# response is its request's only one and so its last; Triton marks it so on a stream (clients that set
# enable_empty_final_response wait for it).
FINAL_RESPONSE = _field(b"\x22", _field(b"\x0a", b"triton_final_response") + b"\x12\x02\x08\x01")


class ResponseEncoder:
    """ModelInferResponse (and ModelStreamInferResponse) bytes, without building the messages.

    The header (model name and version) and each output's description (name, datatype, shape) are
    serialised once and reused; a response is then its header, its id, its outputs' descriptions
    and its raw contents joined. The bytes equal what protobuf writes for the same message
    (``server/tests/test_grpc_codec.py`` checks), so any client reads them. Loop-bound.
    """

    def __init__(self, capacity: int = _ENCODED_PARTS) -> None:
        self.capacity = capacity
        self._parts: dict[tuple[Any, ...], bytes] = {}

    def _store(self, key: tuple[Any, ...], part: bytes) -> bytes:
        if len(self._parts) >= self.capacity:
            self._parts.clear()
        self._parts[key] = part
        return part

    def encode(self, response: InferResponse, parameters: bytes = b"") -> bytes:
        """The serialised ModelInferResponse, with raw output contents always (tritonclient and perf_analyzer read them).

        ``parameters``: the serialised ``parameters`` field, if any (``FINAL_RESPONSE``)."""
        known = self._parts
        key: tuple[Any, ...] = (response.model_name, response.model_version)
        head = known.get(key) or self._store(key, _field(b"\x0a", response.model_name.encode())
                                             + _field(b"\x12", response.model_version.encode()))
        parts = [head, _field(b"\x1a", response.id.encode()), parameters]
        raws: list[bytes] = []
        regions = response.output_regions
        for out in response.outputs:
            if regions is not None and out.name in regions:
                parts.append(_field(b"\x2a", _in_region(out, regions[out.name])))
                raws += (b"\x32", b"\x00")  # an empty raw content for it: every output has one, as in Triton
                continue
            key = (out.name, out.datatype, out.shape)
            parts.append(known.get(key) or self._store(key, _field(b"\x2a", (
                _field(b"\x0a", out.name.encode()) + _field(b"\x12", out.datatype.encode())
                + _field(b"\x1a", b"".join(_varint(d) for d in out.shape))))))
            raw = to_raw(out.data, BY_NAME[out.datatype])
            raws += (b"\x32", _varint(len(raw)), raw)  # repeated: written even when empty
        return b"".join(parts + raws)

    def encode_stream(self, response: InferResponse) -> bytes:
        """The serialised ModelStreamInferResponse carrying ``response`` (its field 2), marked final."""
        inner = self.encode(response, FINAL_RESPONSE)
        return b"\x12" + _varint(len(inner)) + inner
