"""Where a request of a sequence goes when the version serving now does not hold that sequence.

Two places may: a version of this server leaving service, which finishes its live sequences (a reload,
server/servable.py's ``Servable.close``), and, in fleet mode, another replica, which the fleet's records
name (server/sequence_owners.py). A start always begins the sequence on the version serving now. Used
by the dataplane (server/dataplane.py); transport-neutral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable

from model_store.registry import ModelRegistry
from ops.errors import ServingError
from server.served import ServedVersion
from server.types import InferRequest, InferResponse
from server.validation import FORWARDED, sequence_of

if TYPE_CHECKING:  # fleet mode only: it imports grpc and redis
    from server.sequence_owners import SequenceOwners


def _continued(request: InferRequest) -> Hashable | None:
    """The id of the sequence ``request`` continues (not starts), else None."""
    try:
        sequence = sequence_of(request.parameters)
    except ServingError:
        return None  # the version that serves it says what is wrong
    if sequence is None or sequence[1]:  # a start begins the sequence anew, on the version serving now
        return None
    return sequence[0]


def _local_holder(registry: ModelRegistry[ServedVersion], request: InferRequest,
                  sequence_id: Hashable) -> ServedVersion | None:
    """This server's version holding the sequence: the one serving now (the sequence may have been started again
    there), else one leaving service that still holds it; None if none does."""
    try:
        current = registry.get(request.model_name, request.model_version)
        if current.holds_sequence(sequence_id):
            return current
    except ServingError:
        pass  # unloaded, or the version it names is leaving service
    for servable in registry.retiring.servables():
        if (servable.config.name == request.model_name
                and request.model_version in ("", servable.version_str)
                and servable.holds_sequence(sequence_id)):
            return servable
    return None


def sequence_holder(registry: ModelRegistry[ServedVersion], request: InferRequest) -> ServedVersion | None:
    """The version of this server holding the live sequence ``request`` continues, if any."""
    sequence_id = _continued(request)
    return None if sequence_id is None else _local_holder(registry, request, sequence_id)


async def forwarded_answer(registry: ModelRegistry[ServedVersion], owners: "SequenceOwners",
                           request: InferRequest) -> InferResponse | None:
    """Fleet mode: the answer of the replica holding the sequence ``request`` continues, when this server does
    not hold it; None to serve it here. A forwarded request is never forwarded again."""
    sequence_id = _continued(request)
    if sequence_id is None or request.parameters.get(FORWARDED) or _local_holder(registry, request, sequence_id):
        return None
    owner = await owners.owner(request.model_name, sequence_id)
    if owner is None or owner == owners.address:
        return None
    return await owners.forward(owner, request, sequence_id)
