"""Parse config.pbtxt text into the ``inference.ModelConfig`` message.

The schema is fleetserve's subset of Triton's model_config.proto (see
model_store/protos/model_config.proto): a Triton ONNX config parses unchanged,
and a field fleetserve does not read, or a misspelled one, fails with the file,
line, column and field named, plus the fields that are accepted there.

Also reports which top-level fields the text states, because proto3 cannot tell
``max_batch_size: 0`` (batching turned off) from an absent field.

Imports only model_store.protos and ops.errors; must not import server,
batching, kernels or grpc.
"""

from __future__ import annotations

import difflib
import re

from google.protobuf import descriptor, text_format

from model_store.protos import model_config_pb2 as pb
from ops.errors import ConfigError

# Fields of Triton's schema that fleetserve leaves out on purpose, by the message holding them.
_TRITON_ONLY: dict[str, frozenset[str]] = {
    "inference.ModelConfig": frozenset({
        "model_operations",
        "model_repository_agents", "model_metrics",
    }),
    "inference.ModelInstanceGroup": frozenset({"rate_limiter"}),
    "inference.ModelOptimizationPolicy.Cuda": frozenset({"graph_spec"}),
}  # fmt: skip

_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_NO_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named ([^\s.]+)')
_NAME = re.compile(r"[A-Za-z_]\w*")
_POSITION = re.compile(r"^\d+:\d+ : ")
_ECHO = re.compile(r"^'.*?': ")
_REPEATED = re.compile(r'should not have multiple "(\w+)" fields')
_FIELD_BEFORE = re.compile(r"([A-Za-z_]\w*)\s*:?\s*(\[[^\[\]{}]*)?$")


def parse_config_text(text: str, source: str) -> pb.ModelConfig:
    """Parse config.pbtxt ``text``; ``source`` names the file in messages.

    Raises ``ConfigError`` on any syntax error, unknown field or bad value, with
    a message of the form ``source:line:col: what was wrong; what is expected``.
    """
    message = pb.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(_explain(exc, text, source), source=source) from exc
    return message


def stated_fields(text: str) -> frozenset[str]:
    """The top-level field names written in ``text`` (which must parse).

    Lets completion tell an explicit ``max_batch_size: 0`` from an absent one.
    """
    tokenizer = text_format.Tokenizer(text.splitlines())
    tokens: list[str] = []
    while not tokenizer.AtEnd():
        tokens.append(tokenizer.token)
        tokenizer.NextToken()
    names: set[str] = set()
    depth = 0
    for token, following in zip(tokens, tokens[1:]):
        if token in ("{", "[", "<"):
            depth += 1
        elif token in ("}", "]", ">"):
            depth -= 1
        # A name is followed by ":" or an opening bracket; an enum value never is.
        elif depth == 0 and following in (":", "{", "[", "<") and _NAME.fullmatch(token):
            names.add(token)
    return frozenset(names)


def _explain(exc: text_format.ParseError, text: str, source: str) -> str:
    line, column = exc.GetLine(), exc.GetColumn()
    where = f"{source}:{line}:{column}" if line is not None else source
    raw = _POSITION.sub("", str(exc))
    # Value errors echo the offending line; we give line and column instead.
    echo = _ECHO.match(raw)
    raw = raw[echo.end() :] if echo else raw

    found = _NO_FIELD.search(raw)
    if found:
        return f"{where}: {unknown_field(found.group(1), found.group(2))}"
    found = _REPEATED.search(raw)
    if found:
        return f'{where}: field "{found.group(1)}" is given more than once'
    if not echo:
        return f"{where}: syntax error: {raw.rstrip('.')}"
    field = _field_at(text, line, column)
    label = f' for field "{field}"' if field else ""
    found = _NO_ENUM.search(raw)
    if found:
        enum = pb.DESCRIPTOR.pool.FindEnumTypeByName(found.group(1))
        values = ", ".join(v.name for v in enum.values)
        return f"{where}: unknown value {found.group(2)}{label}; expected one of {values}"
    return f"{where}: bad value{label}: {raw.rstrip('.')}"


def unknown_field(type_name: str, field: str) -> str:
    """Why ``field`` is refused in message ``type_name``: Triton-only, or unknown (with the accepted fields).

    Shared with model_store/override.py, whose JSON parser reports unknown fields by the same names."""
    message_type = pb.DESCRIPTOR.pool.FindMessageTypeByName(type_name)
    path = _PATHS.get(type_name, message_type.name)
    if field in _TRITON_ONLY.get(type_name, ()):
        where = "" if message_type is pb.ModelConfig.DESCRIPTOR else f" {path}.{field}"
        name = f'field "{field}"' if not where else f"field{where}"
        return f"{name} of Triton's model configuration is not supported by fleetserve; remove it"
    known = [f.name for f in message_type.fields]
    close = difflib.get_close_matches(field, known, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f'unknown field "{field}" in {path}{hint}; fleetserve reads these fields: {", ".join(known)}'


def _field_at(text: str, line: int | None, column: int | None) -> str | None:
    """The field name written just before the (1-based) position, if any."""
    if line is None or column is None:
        return None
    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return None
    found = _FIELD_BEFORE.search(lines[line - 1][: max(column - 1, 0)])
    return found.group(1) if found else None


def _field_paths() -> dict[str, str]:
    """Message type full name -> first field path reaching it from ModelConfig."""
    root = pb.ModelConfig.DESCRIPTOR
    paths: dict[str, str] = {root.full_name: "ModelConfig"}
    queue: list[tuple[descriptor.Descriptor, str]] = [(root, "")]
    while queue:
        message_type, prefix = queue.pop(0)
        for f in message_type.fields:
            child = f.message_type
            if child is not None and child.full_name not in paths:
                path = f"{prefix}{f.name}"
                paths[child.full_name] = path
                queue.append((child, f"{path}."))
    return paths


_PATHS = _field_paths()
