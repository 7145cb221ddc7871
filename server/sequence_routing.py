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


def _continued(request: InferRequest) -> tuple[Hashable, bool, bool] | None:
    """The request's (sequence_id, start, end) when it continues a sequence, else None."""
    try:
        sequence = sequence_of(request.parameters)
    except ServingError:
        return None  # the version that serves it says what is wrong
    if sequence is None or sequence[1]:  # a start begins the sequence anew, on the version serving now
        return None
    return sequence


def _held_now(registry: ModelRegistry[ServedVersion], request: InferRequest, sequence_id: Hashable) -> bool:
    try:
        return registry.get(request.model_name, request.model_version).holds_sequence(sequence_id)
    except ServingError:
        return False  # unloaded, or the version it names is leaving service


def retiring_holder(registry: ModelRegistry[ServedVersion], request: InferRequest) -> ServedVersion | None:
    """The version leaving service that holds the live sequence ``request`` continues, if any and if the
    version serving now does not hold it too (the sequence was started again there)."""
    sequence = _continued(request)
    if sequence is None or _held_now(registry, request, sequence[0]):
        return None
    for servable in registry.retiring.servables():
        if (servable.config.name == request.model_name
                and request.model_version in ("", servable.version_str)
                and servable.holds_sequence(sequence[0])):
            return servable
    return None


async def forwarded_answer(registry: ModelRegistry[ServedVersion], owners: "SequenceOwners",
                           request: InferRequest) -> InferResponse | None:
    """Fleet mode: the answer of the replica holding the sequence ``request`` continues, when this replica does
    not hold it; None to serve it here. A forwarded request is never forwarded again."""
    sequence = _continued(request)
    if sequence is None or request.parameters.get(FORWARDED):
        return None
    if _held_now(registry, request, sequence[0]) or retiring_holder(registry, request) is not None:
        return None
    owner = await owners.owner(request.model_name, sequence[0])
    if owner is None or owner == owners.address:
        return None
    return await owners.forward(owner, request, sequence[0])
