"""ModelInferRequest / ModelInferResponse protobufs <-> the dataplane's types."""

from __future__ import annotations

import time
from typing import Any

from model_store.datatypes import BY_NAME
from ops.errors import InvalidInput
from server.codec import CONTENTS_FIELD, checked_shape, datatype_of, from_contents, from_raw, to_raw
from server.protos import grpc_service_pb2 as pb
from server.types import InferRequest, InferResponse, InputTensor

def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def decode_infer_request(msg: pb.ModelInferRequest, timeout_s: float | None) -> InferRequest:
    """Decode a request; numeric raw inputs stay views over the message's bytes."""
    raw = msg.raw_input_contents
    n_raw = len(raw)
    if n_raw and n_raw != len(msg.inputs):
        raise InvalidInput(
            f"the request has {len(msg.inputs)} inputs but {n_raw} raw_input_contents entries; "
            "give raw contents for every input or for none"
        )
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        name = tensor.name
        dt = datatype_of(name, tensor.datatype)
        shape = checked_shape(name, tensor.shape)
        if n_raw:
            data = from_raw(name, raw[i], dt, shape)
        elif tensor.HasField("contents"):
            field = CONTENTS_FIELD.get(dt.name)
            if field is None:
                raise InvalidInput(f"input '{name}': {dt.name} has no typed contents field; send it as raw_input_contents")
            data = from_contents(name, getattr(tensor.contents, field), dt, shape)
        else:
            raise InvalidInput(f"input '{name}': no data; set contents or raw_input_contents")
        inputs.append(InputTensor(name, dt.name, shape, data))
    params = {k: _param_value(v) for k, v in msg.parameters.items()} if msg.parameters else {}
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        requested_outputs=[o.name for o in msg.outputs] if msg.outputs else None,
        parameters=params,
        deadline=(time.monotonic() + timeout_s) if timeout_s is not None else None,
    )


def encode_infer_response(response: InferResponse, msg: pb.ModelInferResponse | None = None) -> pb.ModelInferResponse:
    """Raw output contents, always (tritonclient and perf_analyzer read them).

    ``msg``, when given, is an empty message to fill (a stream response's ``infer_response``,
    filled in place rather than copied there)."""
    if msg is None:
        msg = pb.ModelInferResponse()
    msg.model_name = response.model_name
    msg.model_version = response.model_version
    msg.id = response.id
    outputs = msg.outputs
    raws = []
    for out in response.outputs:
        outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        raws.append(to_raw(out.data, BY_NAME[out.datatype]))
    msg.raw_output_contents.extend(raws)
    return msg
