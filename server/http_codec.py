"""Open Inference Protocol REST bodies <-> the dataplane's types.

An inference request body is JSON, optionally followed by binary tensor data
(Triton's binary tensor data extension): the ``Inference-Header-Content-Length``
header then gives the JSON's length, and each input with a ``binary_data_size``
parameter takes that many bytes, in input order, from what follows. Binary
contents are decoded by server/codec.py exactly as gRPC raw contents are
(numeric inputs stay zero-copy views over the body). JSON ``data`` may be flat
or nested; its elements are JSON values of the datatype that fit it, as Triton reads them
(true/false for BOOL, integers for integer types, numbers for FP16/32/64,
strings for BYTES: server/json_tensors.py). Outputs are returned as binary when the output's ``binary_data``
parameter or the request's ``binary_data_output`` parameter asks for it, else
as flat JSON ``data``. An output's ``classification`` parameter asks for its top classes instead
(Triton's classification extension, server/classification.py): a BYTES output, returned as JSON
strings or as binary data as the output asks. BF16 has no JSON form, so a request that asks for a BF16 output
as JSON is refused once its model version is known, before it queues (``OutputChoice.check``,
run by validation). Request parameters other than ``binary_data_output``
reach the dataplane as gRPC's do (``priority``, ``timeout``: Triton's queue
parameters, applied by the scheduler the same way for both transports).

The framing is read strictly, as Triton reads it or stricter where Triton would misread: the header
length is ASCII digits, given once (repeated only with the same value); an input gives exactly one of
``data`` and ``binary_data_size``; the binary sizes must account for every byte after the JSON. Triton's
raw binary request (header length 0: the body is one input's bytes, no JSON) is refused as unsupported,
never read as something else.

Tensors in shared memory (the ``shared_memory_region`` parameter, server/shared_memory.py) take no
``data`` and no binary data: an input is read from its region, and an output is written to its region
and answered with its name, datatype and shape only.

Errors are ``InvalidInput`` naming the field, what was expected and what came, or ``Unsupported``
for what Triton offers and this server does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from model_store.config import TensorSpec
from model_store.datatypes import BY_NAME
from ops.errors import InvalidInput, Unsupported
from server.codec import (
    checked_shape,
    datatype_of,
    from_raw,
    to_raw,
)
from server.classification import PARAMETER as CLASSIFICATION, json_class_count
from server.json_tensors import from_json, no_json_output, to_json
from server.shared_memory import REGION, SharedMemoryRegistry, TensorRegion, read_input
from server.types import InferRequest, InferResponse, InputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
_RESERVED = ("binary_data_output",)


@dataclass(slots=True)
class OutputChoice:
    """How the caller wants each output: binary (True) or JSON data (False)."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)

    def all_binary(self) -> bool:
        return self.default_binary and all(self.binary.values())

    def check(self, outputs: Sequence[TensorSpec]) -> None:
        """InvalidInput for an output asked for as JSON that has no JSON form (BF16); see the module docstring."""
        for spec in outputs:
            if spec.datatype.name == "BF16" and not self.is_binary(spec.name):
                raise no_json_output(spec.name)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_json(data: bytes | memoryview, what: str) -> Any:
    """``data`` as JSON: UTF-8 text (RFC 8259; json.loads would also take UTF-16 and UTF-32), nested to
    any depth the parser allows; InvalidInput otherwise."""
    raw = bytes(data) if isinstance(data, memoryview) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: it is not UTF-8 text "
                           f"(byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{what} is not valid JSON: it is nested too deeply") from None


def header_length(value: str | None, body_size: int) -> int | None:
    """The value of ``Inference-Header-Content-Length`` (None when absent): digits only, in 1..body_size.

    ``value`` is every occurrence of the header, comma-joined (as a proxy folds repeated headers);
    repeats must agree. 0 is Triton's raw binary request, refused as unsupported."""
    if value is None:
        return None
    values = {v.strip(" \t") for v in value.split(",")}
    if len(values) > 1:
        shown = ", ".join(sorted(repr(v[:20]) for v in values))
        raise InvalidInput(f"{HEADER_LENGTH} is given more than once with different values ({shown}); send it once")
    (text,) = values
    if not (text.isascii() and text.isdigit()):  # int() would also take "+1", "1_0" and non-ASCII digits
        raise InvalidInput(f"{HEADER_LENGTH} must be the JSON's length in bytes, as digits only, "
                           f"got {text[:40]!r}")
    n = int(text) if len(text) <= 20 else body_size + 1  # int() refuses 4300 digits and more with ValueError
    if n == 0:
        raise Unsupported(
            f"{HEADER_LENGTH}: 0 (Triton's raw binary request: the body is one input's bytes, with no JSON) "
            "is not supported by this server; send the JSON inference request first and give its length in "
            f"{HEADER_LENGTH}"
        )
    if n > body_size:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise InvalidInput(f"{HEADER_LENGTH} is {shown} but the request body holds {body_size} bytes")
    return n


def _trailing_bytes(body: bytes) -> int:
    """How many bytes follow a JSON value at the start of ``body`` (0 when none do, or there is no JSON)."""
    text = body.decode("utf-8", "surrogateescape")  # one character per undecodable byte
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return 0
    if not text[end:].strip():
        return 0
    return len(body) - len(text[:end].encode("utf-8", "surrogateescape"))


def decode_infer_request(
    model: str, version: str, body: bytes, header_value: str | None, regions: SharedMemoryRegistry | None = None
) -> tuple[InferRequest, OutputChoice]:
    """Decode one inference request; ``header_value``: every ``Inference-Header-Content-Length`` given,
    comma-joined, or None; ``regions``: where tensors in shared memory are (None: no region is registered).
    See the module docstring."""
    head: bytes | memoryview
    n = header_length(header_value, len(body))
    if n is None:
        head, binary = body, memoryview(b"")
    else:
        view = memoryview(body)
        head, binary = view[:n], view[n:]
    try:
        parsed = parse_json(head, "the inference request")
    except InvalidInput as exc:
        trailing = _trailing_bytes(body) if n is None else 0
        if not trailing:
            raise
        raise InvalidInput(f"{exc.message}; {trailing} bytes follow the JSON object: binary tensor data needs "
                           f"the {HEADER_LENGTH} header giving the JSON's length in bytes") from None
    msg = _object(parsed, "the inference request")
    raw_inputs = msg.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("the inference request needs 'inputs': a list of tensors")
    inputs, offset = [], 0
    for i, tensor in enumerate(raw_inputs):
        t = _object(tensor, f"inputs[{i}]")
        name = t.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{i}] needs a 'name' string")
        datatype = t.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(
                f"input '{name}': 'datatype' must be a string such as \"FP32\", got {json.dumps(datatype)}"
            )
        dt = datatype_of(name, datatype)
        shape = _shape(name, t.get("shape"))
        params = _parameters(t, f"input '{name}' parameters")
        if REGION in params:
            if "data" in t or "binary_data_size" in params:
                raise InvalidInput(f"input '{name}' is in shared memory: give it no 'data' and no binary_data_size")
            data = read_input(regions or SharedMemoryRegistry(), name, params, dt, shape)
        elif "binary_data_size" in params:
            if "data" in t:  # as Triton: exactly one of the two, never one silently preferred
                raise InvalidInput(
                    f"input '{name}' has both 'data' and a binary_data_size parameter; give one: 'data' for "
                    "JSON values, or binary_data_size for that many bytes after the JSON"
                )
            size = params["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(
                    f"input '{name}': binary_data_size must be a non-negative integer, got {json.dumps(size)[:40]}"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the binary data "
                    f"({len(binary) - offset} bytes left; is {HEADER_LENGTH} right?)"
                )
            data = from_raw(name, binary[offset : offset + size], dt, shape)  # type: ignore[arg-type]
            offset += size
        elif "data" in t:
            data = from_json(name, t["data"], dt, shape)
        else:
            raise InvalidInput(f"input '{name}': no data; give 'data' or a binary_data_size parameter")
        inputs.append(InputTensor(name, dt.name, shape, data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size total")
    params = _parameters(msg, "the request's parameters")
    choice = OutputChoice(default_binary=_flag(params, "binary_data_output", "the request's"))
    requested = None
    classes: dict[str, int] | None = None
    output_regions: dict[str, TensorRegion] | None = None
    outputs = msg.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    if outputs:  # absent, null or []: every output, as over gRPC (and in Triton)
        requested = []
        for i, out in enumerate(outputs):
            o = _object(out, f"outputs[{i}]")
            if not isinstance(o.get("name"), str):
                raise InvalidInput(f"outputs[{i}] needs a 'name' string")
            requested.append(o["name"])
            out_params = _parameters(o, f"output '{o['name']}' parameters")
            if not out_params:
                continue
            count = json_class_count(o["name"], out_params[CLASSIFICATION]) if CLASSIFICATION in out_params else 0
            if count:  # 0 asks for the tensor, as Triton reads it
                if classes is None:
                    classes = {}
                classes[o["name"]] = count
            if out_params.get("binary_data") is not None:
                choice.binary[o["name"]] = _flag(out_params, "binary_data", f"output '{o['name']}'")
            if REGION in out_params:
                output_regions = output_regions or {}
                output_regions[o["name"]] = (regions or SharedMemoryRegistry()).tensor(f"output '{o['name']}'",
                                                                                      out_params)
                choice.binary[o["name"]] = True  # written as raw bytes, as binary data is (BF16 included)
    request_id = msg.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"the request's 'id' must be a string, got {json.dumps(request_id)}")
    return InferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=inputs,
        requested_outputs=requested,
        parameters={k: v for k, v in params.items() if k not in _RESERVED},
        check_outputs=None if choice.all_binary() else choice.check,
        classification=classes,
        output_regions=output_regions,
    ), choice


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    """``holder``'s "parameters" object; absent or null is none."""
    params = holder.get("parameters")
    return {} if params is None else _object(params, what)


def _flag(params: dict[str, Any], name: str, whose: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{whose} parameter '{name}' must be true or false, got {json.dumps(value)}")
    return value


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of integers, got {shape!r}")
    return checked_shape(name, shape)


def encode_infer_response(response: InferResponse, choice: OutputChoice) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary outputs follow it (else None)."""
    outputs, binaries = [], []
    regions = response.output_regions
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        dt = BY_NAME[out.datatype]
        if regions is not None and out.name in regions:
            # Written there; its entry has neither data nor parameters, as Triton's REST answer (its C++ client
            # reads an output's parameters as binary data, needing binary_data_size).
            regions[out.name].write(out.name, to_raw(out.data, dt))
        elif choice.is_binary(out.name):
            raw = to_raw(out.data, dt)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        else:
            entry["data"] = to_json(out.name, out.data, dt)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        head["id"] = response.id
    head["outputs"] = outputs
    text = json.dumps(head, separators=(",", ":")).encode()
    if not binaries:
        return text, None
    return b"".join([text, *binaries]), len(text)
