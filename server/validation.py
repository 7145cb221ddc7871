"""An inference request checked against its model's config: inputs, shapes, outputs, scheduling parameters.

Pure functions over the dataplane's types (server/types.py) and the model config (BYTES elements must be
UTF-8: the models are ONNX, whose strings are text); every error is
``InvalidInput`` naming the
tensor or parameter, what the model expects and what came. Outputs asked for as classes (Triton's
classification extension) must have a datatype that has them (server/classification.py). A transport
that cannot encode every output as the caller asked checks them here too (``InferRequest.check_outputs``),
so that such a request fails before it queues, as any other invalid request.
"""

from __future__ import annotations

import numpy as np

from model_store.config import ModelConfig, TensorSpec
from ops.errors import InvalidInput
from server.classification import check_classification
from server.shared_memory import check_output_regions
from server.types import InferRequest


def dims_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def output_spec(config: ModelConfig, name: str) -> TensorSpec:
    for spec in config.outputs:
        if spec.name == name:
            return spec
    raise InvalidInput(
        f"model '{config.name}' has no output '{name}'; outputs: {', '.join(s.name for s in config.outputs)}"
    )


def validate(config: ModelConfig, request: InferRequest) -> tuple[dict[str, np.ndarray], int, tuple]:
    """Check the request against the model; return the feeds, the batch rows and the merge key."""
    wanted = request.requested_outputs
    outputs = config.outputs
    if wanted is not None:
        outputs = tuple(output_spec(config, name) for name in wanted)
        if len(set(wanted)) != len(wanted):
            twice = next(name for i, name in enumerate(wanted) if name in wanted[:i])
            raise InvalidInput(f"output '{twice}' is requested more than once")
    if request.classification:
        check_classification(config.name, outputs, request.classification)
    if request.check_outputs is not None:
        request.check_outputs(outputs)
    mbs = config.max_batch_size
    feeds: dict[str, np.ndarray] = {}
    rows = -1
    for tensor in request.inputs:
        spec = config.input(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"model '{config.name}' has no input '{tensor.name}'; "
                f"inputs: {', '.join(s.name for s in config.inputs)}"
            )
        if tensor.name in feeds:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype.name:
            raise InvalidInput(
                f"input '{tensor.name}': datatype {tensor.datatype} does not match the model's {spec.datatype.name}"
            )
        shape = tensor.shape
        expected = spec.dims
        if mbs > 0:
            if len(shape) != len(expected) + 1 or not _dims_match(shape[1:], expected):
                raise InvalidInput(
                    f"input '{tensor.name}': shape {dims_text(shape)} does not match the model's "
                    f"{dims_text((-1,) + expected)} (first dimension is the batch, -1 is any size)"
                )
            batch = shape[0]
            if batch < 1 or batch > mbs:
                raise InvalidInput(
                    f"input '{tensor.name}': batch size {batch} is outside 1..{mbs} (the model's max_batch_size)"
                )
            if rows == -1:
                rows = batch
            elif batch != rows:
                raise InvalidInput(
                    f"input '{tensor.name}': batch size {batch} differs from the other inputs' {rows}"
                )
        elif len(shape) != len(expected) or not _dims_match(shape, expected):
            raise InvalidInput(
                f"input '{tensor.name}': shape {dims_text(shape)} does not match the model's "
                f"{dims_text(expected)} (-1 is any size)"
            )
        if spec.datatype.itemsize == 0:
            _check_text(tensor.name, tensor.data)
        feeds[tensor.name] = spec.to_model(tensor.data)  # the model's own shape where the config reshapes it
    if len(feeds) != len(config.inputs):
        missing = [s.name for s in config.inputs if s.name not in feeds and not s.optional]
        if missing:
            raise InvalidInput(
                f"model '{config.name}' expects {len(config.inputs)} inputs; missing: {', '.join(missing)}"
            )
    if request.output_regions is not None:  # an output asked for as classes is BYTES: checked when written
        classified = request.classification or {}
        check_output_regions([s for s in outputs if s.name not in classified], request.output_regions,
                             max(rows, 1) if mbs > 0 else None)
    key = tuple(feeds[s.name].shape[1:] if s.name in feeds else None for s in config.inputs) if mbs > 0 else ()
    return feeds, max(rows, 1), key


_UINT64_MAX = (1 << 64) - 1


SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
# A request another replica of the fleet forwarded here, to the replica holding its sequence
# (server/sequence_owners.py): never forwarded again.
FORWARDED = "fleetserve_forwarded"


def scheduling(parameters: dict[str, object]) -> tuple[int, int]:
    """The request's ``priority`` (0: the model's default level) and ``timeout`` (microseconds, 0: none).

    Both are Triton's request parameters, unsigned 64-bit integers in its protocol: integers from 0 to
    2**64 - 1 (JSON carries larger ones, which would overflow the timeout's arithmetic). The
    batcher checks the priority against the model's levels (InvalidInput
    naming the range) and applies the timeout only where the model's queue
    policy allows an override.
    """
    return _count_parameter(parameters, "priority", ""), _count_parameter(parameters, "timeout", " of microseconds")


def sequence_of(parameters: dict[str, object]) -> tuple[int | str, bool, bool] | None:
    """Triton's sequence parameters (tritonclient's ``sequence_id=``, ``sequence_start=``, ``sequence_end=``):
    ``(sequence_id, sequence_start, sequence_end)``, or None when the request carries none of them. The id is an
    unsigned 64-bit integer or a string; the flags are booleans (absent: false). A model with sequence_batching
    needs them; any other model refuses them (server/servable.py), never running the request as if they were absent.
    """
    if not any(name in parameters for name in SEQUENCE_PARAMETERS):
        return None
    sequence_id = parameters.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, (int, str)):
        raise InvalidInput(f"parameter 'sequence_id' must be an integer or a string, not {sequence_id!r}")
    if isinstance(sequence_id, int) and not 0 <= sequence_id <= _UINT64_MAX:
        raise InvalidInput(f"parameter 'sequence_id' is {sequence_id}; an integer id is 0 to {_UINT64_MAX} (an "
                           "unsigned 64-bit integer in Triton's protocol)")
    flags = []
    for name in ("sequence_start", "sequence_end"):
        value = parameters.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter '{name}' must be true or false, not {value!r}")
        flags.append(value)
    return sequence_id, flags[0], flags[1]


def _count_parameter(parameters: dict[str, object], name: str, unit: str) -> int:
    value = parameters.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"parameter '{name}' must be an integer{unit} >= 0, not {value!r}")
    if value > _UINT64_MAX:
        digits = len(str(value))
        shown = str(value) if digits <= 40 else f"a {digits}-digit number"
        raise InvalidInput(
            f"parameter '{name}' is {shown}, above {_UINT64_MAX}, the largest it takes (an unsigned 64-bit "
            "integer in Triton's protocol)"
        )
    return value


def _check_text(name: str, data: np.ndarray) -> None:
    """InvalidInput unless every BYTES element is UTF-8: the model's BYTES tensors are ONNX strings, which
    onnxruntime holds as text. Checked here, per request, so that such a request fails alone rather than
    failing the batch it would have joined (the kernel converts merged batches)."""
    for i, item in enumerate(data.reshape(-1)):
        if isinstance(item, bytes) and not item.isascii():
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = list(np.unravel_index(i, data.shape)) if data.ndim > 1 else [i]
                raise InvalidInput(
                    f"input '{name}': element {dims_text(tuple(int(w) for w in where))} is not UTF-8 text "
                    f"(byte 0x{item[exc.start]:02x} at offset {exc.start}); this model's BYTES tensors are ONNX "
                    "strings, which hold UTF-8 text only"
                ) from None


def _dims_match(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    for got, want in zip(shape, expected):
        if want != -1 and got != want:
            return False
    return True
