"""The GRPCInferenceService methods: decode, delegate to the DataPlane, encode.

No logic lives here beyond conversion; errors are mapped by server/grpc_errors.py
when the handlers are built (``method_handlers``). ModelStreamInfer answers each
request in the stream as it completes; a failed request becomes a response with
``error_message`` and the stream goes on, as Triton does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

import grpc


from ops.errors import InvalidInput, ShuttingDown, Unsupported
from ops.statistics import Duration, ModelStats
from ops.trace_settings import TraceSettings
from server.dataplane import EXTENSIONS, SERVER_NAME, TENANT_METADATA, DataPlane
from server.grpc_codec import RequestDecoder, ResponseEncoder, parse_request, request_names
from server.grpc_errors import status_of, wrap_stream, wrap_unary
from server.grpc_log_settings import log_settings
from server.grpc_trace_settings import trace_settings
from server.protos import grpc_service_pb2 as pb
from server.shared_memory import SharedMemoryRegistry
from server.shared_memory_rpc import METHODS as SHARED_MEMORY_METHODS, SharedMemoryRpcs

if TYPE_CHECKING:
    from ops.tracing import RequestTracer

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
_STREAM_WINDOW = 1024  # requests of one stream not yet answered on the wire; reading pauses beyond it
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


def _tenant(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA:
            return value if isinstance(value, str) else ""
    return ""


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
        self._closing = False
        self._streams: set[asyncio.Event] = set()  # each open ModelStreamInfer's wake-up

    def close_streams(self) -> None:
        """Shutdown: every open stream stops reading, sends the responses to the requests it has read, and
        ends UNAVAILABLE (``ShuttingDown``), so it neither holds the shutdown for the whole drain timeout nor
        is cut there with its answers. A stream whose client has finished writing ends as usual, OK."""
        self._closing = True
        for wake in self._streams:
            wake.set()

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
        await self.dp.load_model(request.model_name, request.parameters.keys(), request.repository_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        dependents = request.parameters.get("unload_dependents")  # as Triton: a bool, though none depend here
        kind = dependents.WhichOneof("parameter_choice") if dependents is not None else "bool_param"
        if kind != "bool_param":
            raise InvalidInput(f"the unload request's parameter 'unload_dependents' must be a bool_param, "
                               f"got {kind or 'no value'}")
        await self.dp.unload_model(request.model_name, request.repository_name)
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
            infer.tenant = _tenant(context)
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
                infer.tenant = _tenant(context)
            response = await self.dp.infer(infer)
            trace.done_ns = time.perf_counter_ns()
            trace.version, trace.request_id = response.model_version, response.id
            return self.encoder.encode(response)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
        """Requests of one stream run concurrently (so they batch); responses go out as they finish.

        No task per request: each request is queued as it is read (``DataPlane.start``) and its
        response is built by a callback on its batcher future; only a request that must await
        something before it queues (fleet mode's rate limit or response cache) gets a task.
        Responses to requests without an id leave in the order those requests came (``unnamed``).
        Reading pauses while ``_STREAM_WINDOW`` requests of the stream have no response sent yet, so
        a client that stops reading its responses holds at most that many, not every response it asked for.
        """
        dp = self.dp
        decode = self.decoder.decode
        encode_stream = self.encoder.encode_stream
        ready: deque[bytes] = deque()  # serialised ModelStreamInferResponses
        # Requests without an id, in arrival order: [future or None, response bytes once answered]. Their
        # responses leave in that order (as Triton sends a stream's responses), the client's only way to
        # tell them apart; requests with an id are answered as they finish.
        unnamed: deque[list[Any]] = deque()
        wake = asyncio.Event()
        room = asyncio.Event()
        room.set()
        pending: set[asyncio.Future[Any]] = set()
        unsent = 0  # requests read whose responses have not been yielded (the window counts these)
        reading_done = False
        read_error: Exception | None = None
        tenant = _tenant(context) if dp.tenant_aware else ""

        def answer(request: Any, response: Any = None, exc: BaseException | None = None,
                   slot: list[Any] | None = None) -> None:
            """``request``: the decoded InferRequest, or the request's bytes when it failed to decode;
            ``slot``: its place in ``unnamed`` when it has no id."""
            if exc is None:
                data = encode_stream(response)
            else:
                out = pb.ModelStreamInferResponse()
                _, out.error_message = status_of(exc)
                reply = out.infer_response
                if isinstance(request, bytes):
                    reply.model_name, reply.model_version, reply.id = request_names(request)
                else:
                    reply.id = request.id
                    reply.model_name = request.model_name
                    reply.model_version = request.model_version
                reply.parameters["triton_final_response"].bool_param = True
                data = out.SerializeToString()
            if slot is None:
                ready.append(data)
            else:
                slot[1] = data
                while unnamed and unnamed[0][1] is not None:
                    future, data = unnamed.popleft()
                    ready.append(data)
                    if future is not None:
                        released(future)
            wake.set()

        def hold() -> list[Any]:
            slot: list[Any] = [None, None]
            unnamed.append(slot)
            return slot

        def released(future: asyncio.Future[Any]) -> None:
            pending.discard(future)

        def settled(infer: Any, call: Any, slot: list[Any] | None, future: asyncio.Future[Any]) -> None:
            if slot is None:  # else it leaves ``pending`` with its response, in turn
                released(future)
            try:
                answer(infer, dp.finish(call, future), slot=slot)
            except asyncio.CancelledError:
                pass  # the stream is closing
            except Exception as exc:
                answer(infer, exc=exc, slot=slot)

        async def awaited(infer: Any, slot: list[Any] | None) -> None:
            try:
                answer(infer, await dp.infer(infer), slot=slot)
            except Exception as exc:
                answer(infer, exc=exc, slot=slot)

        def one(request: bytes) -> None:
            nonlocal unsent
            unsent += 1
            if unsent >= _STREAM_WINDOW:
                room.clear()
            try:
                infer = decode(request, context.time_remaining())
            except Exception as exc:
                names = request_names(request)
                refused = dp.refuse_undecoded(*names, exc)  # counted, and said, as ModelInfer does
                answer(request, exc=refused, slot=None if names[2] else hold())
                return
            slot = None if infer.id else hold()
            try:
                infer.tenant = tenant
                started = dp.start(infer)
            except Exception as exc:
                answer(infer, exc=exc, slot=slot)
                return
            if started is None:
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_task(awaited(infer, slot))
                if slot is None:
                    future.add_done_callback(released)
            else:
                future, call = started
                future.add_done_callback(functools.partial(settled, infer, call, slot))
            if slot is not None:
                slot[0] = future
            pending.add(future)

        async def read() -> None:
            nonlocal reading_done, read_error
            try:
                async for request in request_iterator:
                    one(request)
                    if not room.is_set():
                        await room.wait()
            except Exception as exc:
                read_error = exc
            finally:
                reading_done = True
                wake.set()

        reader = asyncio.get_running_loop().create_task(read())
        self._streams.add(wake)
        closed = False  # by the server's shutdown (``close_streams``), before the client finished writing
        try:
            while True:
                while ready:
                    yield ready.popleft()
                    unsent -= 1
                    if unsent < _STREAM_WINDOW:
                        room.set()
                if self._closing and not reading_done:
                    reader.cancel()
                    reading_done = closed = True
                if reading_done and not pending:
                    if read_error is not None:
                        raise read_error
                    if closed:
                        raise ShuttingDown(
                            "the server is shutting down: this stream ends here, each request it read has had its "
                            "response; send any request without a response again on a new stream"
                        )
                    break
                wake.clear()
                await wake.wait()
        finally:
            self._streams.discard(wake)
            reader.cancel()
            for future in list(pending):
                future.cancel()


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



