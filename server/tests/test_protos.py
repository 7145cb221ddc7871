"""The generated modules are fresh, and the schema is wire-compatible with the public protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from model_store.protos import model_config_pb2
from server.protos import grpc_service_pb2
from server.protos.generate import ROOT, generate


def test_generated_stubs_are_not_stale(tmp_path: Path):
    written = generate(tmp_path)
    assert written, "protoc wrote nothing"
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is generated but not committed; run python -m server.protos.generate"
        assert committed.read_text() == path.read_text(), (
            f"{rel} is stale: the .proto changed; run python -m server.protos.generate"
        )


def _fields(descriptor):
    return {f.name: (f.number, f.type, f.label if not f.is_repeated else "repeated") for f in descriptor.fields}


def _walk(ours, theirs, path):
    """Every field we define exists in the public schema with the same number and wire type."""
    mine, public = _fields(ours), _fields(theirs)
    for name, spec in mine.items():
        assert name in public, f"{path}.{name} is not in the public schema"
        assert spec == public[name], f"{path}.{name}: ours {spec} != public {public[name]}"
        field = ours.fields_by_name[name]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            _walk(field.message_type, theirs.fields_by_name[name].message_type, f"{path}.{name}")
        if field.enum_type is not None:
            their_enum = theirs.fields_by_name[name].enum_type
            for value in field.enum_type.values:
                assert their_enum.values_by_name[value.name].number == value.number, f"{path}.{name}.{value.name}"


@pytest.mark.parametrize("name", sorted(grpc_service_pb2.DESCRIPTOR.message_types_by_name))
def test_service_messages_match_the_public_protocol(name):
    ours = grpc_service_pb2.DESCRIPTOR.message_types_by_name[name]
    theirs = triton_service.DESCRIPTOR.message_types_by_name[name]
    _walk(ours, theirs, name)


def test_model_config_matches_the_public_schema():
    _walk(model_config_pb2.ModelConfig.DESCRIPTOR, triton_config.ModelConfig.DESCRIPTOR, "ModelConfig")


def test_service_methods_match_the_public_protocol():
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        public = theirs.methods_by_name[method.name]
        assert method.input_type.name == public.input_type.name
        assert method.output_type.name == public.output_type.name
        assert (method.client_streaming, method.server_streaming) == (public.client_streaming, public.server_streaming)
