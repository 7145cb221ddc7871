"""The TraceSetting RPC's messages to and from ops/trace_settings.py's plain values.

A ``SettingValue``'s ``value`` list is passed as it is (an empty one clears that setting); the answer
carries every setting as it now applies, each as a list of strings.
"""

from __future__ import annotations

from ops.trace_settings import TraceSettings
from server.protos import grpc_service_pb2 as pb


def trace_settings(settings: TraceSettings, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
    """Apply the settings ``request`` names (none: only read) to its ``model_name``'s settings (none: the
    server's) and answer them all as they now apply. Raises as ``TraceSettings.update`` does."""
    changes = {name: list(value.value) for name, value in request.settings.items()}
    response = pb.TraceSettingResponse()
    for name, values in settings.update(changes, request.model_name).as_lists().items():
        response.settings[name].value.extend(values)
    return response
