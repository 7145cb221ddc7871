"""The GRPCInferenceService methods: decode, delegate to the DataPlane, encode.

No logic lives here beyond conversion; errors are mapped by server/grpc_errors.py
when the handlers are built (``method_handlers``). ModelStreamInfer answers each
request in the stream as it completes (server/grpc_stream.py).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

import grpc


from ops.errors import Unsupported
from ops.statistics import Duration, ModelStats
from ops.trace_settings import TraceSettings
from server.dataplane import EXTENSIONS, SERVER_NAME, DataPlane
from server.grpc_codec import RequestDecoder, ResponseEncoder, parse_request, request_names
from server.grpc_errors import wrap_stream, wrap_unary
from server.grpc_log_settings import log_settings
from server.grpc_stream import StreamHub, serve_stream, tenant_of
from server.grpc_repository import load_parameters, unload_dependents
from server.grpc_trace_settings import trace_settings
from server.protos import grpc_service_pb2 as pb
from server.shared_memory import SharedMemoryRegistry
from server.shared_memory_rpc import METHODS as SHARED_MEMORY_METHODS, SharedMemoryRpcs

if TYPE_CHECKING:
    from ops.tracing import RequestTracer

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
# Methods whose requests reach the handler as bytes and whose responses leave it as bytes
# (RequestDecoder and ResponseEncoder, server/grpc_codec.py).
_BYTES_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
# Triton's methods of the service that fleetserve does not serve: answered UNIMPLEMENTED with the reason and
# what to do instead (as their REST endpoints answer 501), rather than grpc's bare "Method not found!".
_CUDA = ("CUDA shared memory is not supported (this server keeps no tensors on a GPU); use system shared "
         "memory, or send tensors in the request")
_NOT_SERVED = {f"CudaSharedMemory{verb}": _CUDA for verb in ("Status", "Register", "Unregister")}


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _stats_message(name: str, version: str, stats: ModelStats) -> pb.ModelStatistics:
    msg = pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
    )
    s = msg.inference_stats
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                  "cache_miss"):
        getattr(s, field).CopyFrom(_duration(getattr(stats, field)))
    for size, b in sorted(stats.batches.items()):
        msg.batch_stats.add(
            batch_size=size,
            compute_input=_duration(b.compute_input),
            compute_infer=_duration(b.compute_infer),
            compute_output=_duration(b.compute_output),
        )
    return msg


class InferenceServicer:
    """One instance per server; every method converts and delegates to ``dataplane`` (the shared-memory
    ones to ``shared_memory``, over ``regions``: the server's registry, shared with REST; TraceSetting to
    ``trace_settings``, the server's, shared with REST and the tracer)."""

    def __init__(self, dataplane: DataPlane, *, tracer: "RequestTracer | None" = None,
                 regions: SharedMemoryRegistry | None = None, trace_settings: TraceSettings | None = None) -> None:
        self.dp = dataplane
        self._tracer = tracer
        self.trace_settings = trace_settings or (tracer.settings if tracer else TraceSettings(exporting=False))
        regions = regions if regions is not None else SharedMemoryRegistry()
        self.shared_memory = SharedMemoryRpcs(regions)
        self.decoder = RequestDecoder(regions=regions)
        self.encoder = ResponseEncoder()
        self._streams = StreamHub()  # the open ModelStreamInfer calls

    def close_streams(self) -> None:
        """Shutdown: the open streams end once they have answered what they read (``StreamHub.close``)."""
        self._streams.close()

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.dp.version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.dp.model_metadata(request.name, request.version)
        msg = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for name, datatype, shape in meta.inputs:
            msg.inputs.add(name=name, datatype=datatype, shape=shape)
        for name, datatype, shape in meta.outputs:
            msg.outputs.add(name=name, datatype=datatype, shape=shape)
        return msg

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.dp.model_config(request.name, request.version)
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(config.to_proto())
        return response

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        rows = self.dp.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_stats_message(n, v, s) for n, v, s in rows])

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        msg = pb.RepositoryIndexResponse()
        for e in self.dp.repository_index(request.ready, request.repository_name):
            msg.models.add(name=e.name, version=e.version, state=e.state.value, reason=e.reason)
        return msg

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> pb.RepositoryModelLoadResponse:
        await self.dp.load_model(request.model_name, load_parameters(request), request.repository_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dp.unload_model(request.model_name, request.repository_name, unload_dependents(request))
        return pb.RepositoryModelUnloadResponse()

    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        """Triton's logging extension: process-wide, the same settings REST's /v2/logging reads and changes."""
        return log_settings(request)

    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        """Triton's trace extension: the server's or a model's settings, shared with REST's trace/setting paths."""
        return trace_settings(self.trace_settings, request)

    async def ModelInfer(self, request: bytes, context: Any) -> bytes:
        """``request`` and the result: the serialised ModelInferRequest and ModelInferResponse (``_BYTES_METHODS``)."""
        if self._tracer is not None:
            return await self._traced_infer(request, context, self._tracer)
        try:
            infer = self.decoder.decode(request, context.time_remaining())
        except Exception as exc:  # counted whatever it is: the caller gets an error status for it
            refused = self.dp.refuse_undecoded(*request_names(request), exc)  # an unknown or unready model first
            if refused is exc:
                raise
            raise refused from None
        if self.dp.tenant_aware:
            infer.tenant = tenant_of(context)
        return self.encoder.encode(await self.dp.infer(infer))

    async def _traced_infer(self, request: bytes, context: Any, tracer: "RequestTracer") -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        with tracer.begin(metadata.get("traceparent"), metadata.get("tracestate")) as trace:
            try:
                infer = self.decoder.decode(request, context.time_remaining())
            except Exception as exc:
                model, version, request_id = request_names(request)
                trace.model, trace.request_id = model, request_id
                refused = self.dp.refuse_undecoded(model, version, request_id, exc)
                if refused is exc:
                    raise
                raise refused from None
            trace.model, trace.request_id = infer.model_name, infer.id
            infer.trace = trace
            if self.dp.tenant_aware:
                infer.tenant = tenant_of(context)
            response = await self.dp.infer(infer)
            trace.done_ns = time.perf_counter_ns()
            trace.version, trace.request_id = response.model_version, response.id
            return self.encoder.encode(response)

    def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
        """Requests of one stream run concurrently (so they batch); responses go out as they finish
        (server/grpc_stream.py)."""
        return serve_stream(self.dp, self.decoder, self.encoder, self._streams, self._tracer, request_iterator, context)


def method_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Handlers for every method of the service, each wrapped by the error mapping."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        fn = getattr(servicer.shared_memory if method.name in SHARED_MEMORY_METHODS else servicer, method.name)
        request_cls = _message_class(method.input_type.name)
        response_cls = _message_class(method.output_type.name)
        as_bytes = method.name in _BYTES_METHODS
        serializer = None if as_bytes else response_cls.SerializeToString
        if method.client_streaming:  # ModelStreamInfer: its requests arrive as bytes, decoded one by one
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                wrap_stream(fn), request_deserializer=None if as_bytes else request_cls.FromString,
                response_serializer=serializer,
            )
        else:
            # Requests reach every handler as bytes and are parsed inside the error mapping: bytes that are no
            # such message (a model name that is not UTF-8) are the caller's INVALID_ARGUMENT, not grpc's UNKNOWN.
            parsed = fn if as_bytes else functools.partial(_parsed, fn, request_cls)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                wrap_unary(parsed), response_serializer=serializer,
            )
    for name, reason in _NOT_SERVED.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(wrap_unary(functools.partial(_not_served, name, reason)))
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


async def _parsed(fn: Any, request_cls: Any, request: bytes, context: Any) -> Any:
    return await fn(parse_request(request_cls, request), context)


async def _not_served(method: str, reason: str, request: bytes, context: Any) -> bytes:
    raise Unsupported(f"{method}: {reason}")


def _message_class(name: str) -> Any:
    return getattr(pb, name)



