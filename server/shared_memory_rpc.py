"""The system shared-memory RPCs of GRPCInferenceService: convert, and delegate to the region registry.

``InferenceServicer`` (server/grpc_service.py) hands these methods to grpc as its own; errors are mapped
by server/grpc_errors.py as for every method. The CUDA shared-memory RPCs stay UNIMPLEMENTED there.
"""

from __future__ import annotations

from typing import Any

from server.protos import grpc_service_pb2 as pb
from server.shared_memory import SharedMemoryRegistry

METHODS = ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister")


class SharedMemoryRpcs:
    """The three System* methods over one registry (the server's, shared with REST). Loop-bound."""

    def __init__(self, regions: SharedMemoryRegistry) -> None:
        self.regions = regions

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for s in self.regions.status(request.name):
            response.regions[s.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=s.name, key=s.key, offset=s.offset, byte_size=s.byte_size))
        return response

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.regions.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()
