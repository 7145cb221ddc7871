"""The LogSettings RPC's messages to and from ops/log_settings.py's plain values.

A ``SettingValue`` becomes its ``bool_param``, ``uint32_param`` or ``string_param`` (None when it holds
none, which leaves that setting as it is); the answer carries every setting, each in the field of its type.
"""

from __future__ import annotations

from ops.log_settings import update_log_settings
from server.protos import grpc_service_pb2 as pb


def log_settings(request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
    """Apply the settings ``request`` names (none: only read) and answer every setting as it now stands.
    Raises ``InvalidInput`` as ``update_log_settings`` does."""
    changes: dict[str, object] = {}
    for name, value in request.settings.items():
        choice = value.WhichOneof("parameter_choice")
        changes[name] = getattr(value, choice) if choice else None
    response = pb.LogSettingsResponse()
    for name, current in update_log_settings(changes).as_dict().items():
        out = response.settings[name]
        if isinstance(current, bool):
            out.bool_param = current
        elif isinstance(current, int):
            out.uint32_param = current
        else:
            out.string_param = current
    return response
