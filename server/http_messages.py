"""Triton's REST extensions beside inference: statistics and model configuration as JSON, and the
model repository extension's request bodies.

``stats_json`` writes one model version's statistics in Triton's JSON shape; ``message_json`` a
protobuf message (the model config) as Triton's REST API writes it. ``index_ready``,
``load_parameters`` and ``unload_dependents`` read the repository requests' bodies as strictly as Triton
reads them: ``ready`` and ``unload_dependents`` are JSON booleans, ``parameters`` an object (absent or
null is none, as in an inference request), so ``{"ready": "false"}`` is a 400, never read as true;
a model file sent with a load (``file:…``) is a base64 string.
Imports protobuf, ops.errors, ops.statistics and model_store.sent_files only.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from model_store.sent_files import FILE_PREFIX
from ops.errors import InvalidInput
from ops.statistics import Duration, ModelStats


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def stats_json(name: str, version: str, s: ModelStats) -> dict[str, Any]:
    """One model version's statistics in Triton's JSON shape."""
    return {
        "name": name,
        "version": version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success),
            "fail": _duration(s.fail),
            "queue": _duration(s.queue),
            "compute_input": _duration(s.compute_input),
            "compute_infer": _duration(s.compute_infer),
            "compute_output": _duration(s.compute_output),
            "cache_hit": _duration(s.cache_hit),
            "cache_miss": _duration(s.cache_miss),
        },
        "batch_stats": [
            {"batch_size": size, "compute_input": _duration(b.compute_input),
             "compute_infer": _duration(b.compute_infer), "compute_output": _duration(b.compute_output)}
            for size, b in sorted(s.batches.items())
        ],
    }


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def message_json(msg: Message) -> dict[str, Any]:
    """A protobuf message as Triton's REST API writes it: proto field names, 64-bit integers as numbers,
    and fields at their default value written out (``"max_batch_size": 0``), as Triton writes them and
    its clients read them."""
    out = MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _numbers(msg.DESCRIPTOR, out)
    return out


def _numbers(desc: Descriptor, d: dict[str, Any]) -> None:
    """proto3 JSON writes 64-bit integers as strings; Triton (and its clients) use numbers."""
    for f in desc.fields:
        if f.name not in d:
            continue
        value = d[f.name]
        sub = f.message_type
        if sub is not None and sub.GetOptions().map_entry:
            inner = sub.fields_by_name["value"]
            if inner.message_type is not None:
                for item in value.values():
                    _numbers(inner.message_type, item)
            elif inner.type in _INT64:
                d[f.name] = {k: int(v) for k, v in value.items()}
        elif sub is not None:
            for item in value if f.is_repeated else [value]:
                _numbers(sub, item)
        elif f.type in _INT64:
            d[f.name] = [int(v) for v in value] if f.is_repeated else int(value)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _flag(holder: dict[str, Any], name: str, what: str) -> bool:
    value = holder.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} '{name}' must be true or false, got {_shown(value)}")
    return value


def _parameters(body: dict[str, Any], request: str) -> dict[str, Any]:
    params = body.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"the {request} request's 'parameters' must be a JSON object, got {_shown(params)}")
    return params


def index_ready(body: dict[str, Any]) -> bool:
    """A repository index request's ``ready``: list only the versions ready for inference."""
    return _flag(body, "ready", "the index request's")


def load_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """A load request's ``parameters``, for the dataplane (``config``: a config override); a model file's
    (``file:…``) base64 string becomes its bytes, as a gRPC ``bytes_param`` arrives."""
    params = dict(_parameters(body, "load"))
    for name, value in params.items():
        if name.startswith(FILE_PREFIX):
            if not isinstance(value, str):
                raise InvalidInput(f"the load request's parameter {name!r} must be the file's content as a base64 "
                                   f"string, got {_shown(value)}")
            try:
                params[name] = base64.b64decode(value, validate=True)
            except ValueError as exc:  # binascii.Error
                raise InvalidInput(f"the load request's parameter {name!r} is not valid base64: {exc}") from exc
    return params


def unload_dependents(body: dict[str, Any]) -> bool:
    """An unload request's ``parameters``: ``unload_dependents`` (an ensemble's composing models go too), a
    boolean as Triton requires; false when absent."""
    return _flag(_parameters(body, "unload"), "unload_dependents", "the unload request's parameter")
