"""The RepositoryModelLoad and RepositoryModelUnload requests' parameters, read as Triton reads them.

A load's parameters become plain values by name (a ``ModelRepositoryParameter``'s ``bool_param``,
``int64_param``, ``string_param`` or ``bytes_param``; None when it holds none) for the dataplane, which
decides what each means (``config``: a config override). An unload's ``unload_dependents`` must be a
``bool_param``. The REST twins are in server/http_messages.py.
"""

from __future__ import annotations

from ops.errors import InvalidInput
from server.protos import grpc_service_pb2 as pb


def load_parameters(request: pb.RepositoryModelLoadRequest) -> dict[str, object]:
    """The load request's parameters as plain values, by name."""
    values: dict[str, object] = {}
    for name, value in request.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        values[name] = getattr(value, choice) if choice else None
    return values


def unload_dependents(request: pb.RepositoryModelUnloadRequest) -> bool:
    """The unload request's ``unload_dependents`` (an ensemble's composing models go too), a bool_param as
    Triton requires; false when absent."""
    dependents = request.parameters.get("unload_dependents")
    kind = dependents.WhichOneof("parameter_choice") if dependents is not None else "bool_param"
    if kind != "bool_param":
        raise InvalidInput(f"the unload request's parameter 'unload_dependents' must be a bool_param, "
                           f"got {kind or 'no value'}")
    return dependents is not None and dependents.bool_param
