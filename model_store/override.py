"""A config override: a model configuration sent with an explicit load, used instead of config.pbtxt.

Triton's model repository extension lets a load request carry ``parameters["config"]``: the model
configuration as JSON, in the form Triton's model config endpoint returns (protobuf's JSON mapping of
``inference.ModelConfig``: snake_case or camelCase field names, enums by name, 64-bit integers as
numbers or strings). That load uses it instead of the repository's config.pbtxt; the next load
without one goes back to config.pbtxt.

``read_override`` parses the text into the same ``inference.ModelConfig`` message a config.pbtxt
parses into, and runs the checks that need no model file (name, version policy, model file name,
Triton fields held at their defaults), so that such a mistake is refused before anything is
reloaded. The rest (tensors, batching, instances, parameters, warm-up) is checked by
``complete.build_config`` while each version loads, exactly as for config.pbtxt. Every message names
the override, never a file.

Pure functions; imports model_store.pbtxt, .defaults_only, .complete, .options, the generated config
messages and ops.errors; must not import server, batching, kernels or grpc.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from model_store import complete, defaults_only, options
from model_store.pbtxt import unknown_field
from model_store.protos import model_config_pb2 as pb
from ops.errors import ConfigError

_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_AVAILABLE = re.compile(r"\s*Available Fields.*$", re.DOTALL)
_STAMP_NAME = "<config override>"  # stands for config.pbtxt's file name in a model's fingerprint


@dataclass(frozen=True)
class ConfigOverride:
    """A parsed config override: what a load uses in place of config.pbtxt.

    ``stated`` holds the top-level fields the JSON gives (as config.pbtxt's ``stated_fields``: an
    explicit ``max_batch_size: 0`` turns batching off); ``source`` names the override in messages;
    ``stamp`` stands for config.pbtxt's file stats in the fingerprint of each version loaded with
    it, so that a load with another override, or none, loads every version again. The message
    must not be mutated.
    """

    message: pb.ModelConfig
    stated: frozenset[str]
    source: str
    stamp: tuple[str, int, int, int]


def read_override(model_name: str, text: str) -> ConfigOverride:
    """Parse ``text``, the config override of a load of ``model_name``; raises ``ConfigError``.

    Refused: text that is not a JSON object, an unknown or misspelled field (with the fields
    accepted there), a bad value, a ``name`` other than ``model_name`` (it may be empty or absent),
    and whatever the checks named in the module docstring refuse.
    """
    source = f"config override of model '{model_name}'"
    where = options.Where(model_name, source)
    try:
        document = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
    except ValueError as exc:  # json.JSONDecodeError, or a key given twice
        raise ConfigError(f"{source}: is not valid JSON: {exc}; send the model configuration as a JSON object, "
                          "as the model config endpoint returns it", model=model_name, source=source) from exc
    if not isinstance(document, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(document), "a number")
        raise ConfigError(f"{source}: is {kind}, not a JSON object; send the model "
                          "configuration as a JSON object, as the model config endpoint returns it",
                          model=model_name, source=source)
    message = pb.ModelConfig()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        raise ConfigError(f"{source}: {_explain(str(exc))}", model=model_name, source=source) from exc
    if message.name and message.name != model_name:
        raise where.error("name", f'is "{message.name}", but the load request is for model "{model_name}"; '
                          "give the same name or leave name out")
    options.version_policy(message, where)
    complete.model_filename(message, source)
    defaults_only.check(message, where)
    stated = _stated(document)
    digest = hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=8)
    digest.update(",".join(sorted(stated)).encode())
    return ConfigOverride(message, stated, source, (_STAMP_NAME, int.from_bytes(digest.digest(), "big"), 0, 0))


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f'field "{key}" is given more than once')
        found[key] = value
    return found


def _explain(raw: str) -> str:
    """A person's reading of protobuf's JSON parse error."""
    found = _NO_FIELD.search(raw)
    if found:
        return unknown_field(found.group(1), found.group(2))
    return f"bad value: {_AVAILABLE.sub('', raw).rstrip('.')}"


def _stated(document: dict[str, Any]) -> frozenset[str]:
    """The top-level fields ``document`` gives a value, by their proto names (it may use camelCase)."""
    fields = pb.ModelConfig.DESCRIPTOR.fields
    by_key = {f.name: f.name for f in fields} | {f.json_name: f.name for f in fields}
    return frozenset(by_key[key] for key, value in document.items() if key in by_key and value is not None)
