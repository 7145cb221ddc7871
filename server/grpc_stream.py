"""ModelStreamInfer: the requests of one bidirectional stream, answered as each completes.

A failed request becomes a response with ``error_message`` and the stream goes on, as Triton does.
``serve_stream`` is the handler's body (server/grpc_service.py delegates to it); ``StreamHub`` holds the
server's open streams so that shutdown can end them. With tracing on (``--trace``), each request of a
stream is traced as a ModelInfer request is (its spans parented to the stream's ``traceparent``), when
its response is made; one the stream's close leaves unanswered is traced CANCELLED.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

from ops.errors import ShuttingDown
from server.dataplane import TENANT_METADATA
from server.grpc_codec import RequestDecoder, ResponseEncoder, request_names
from server.grpc_errors import status_of
from server.protos import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from ops.tracing import RequestTrace, RequestTracer
    from server.dataplane import DataPlane

_STREAM_WINDOW = 1024  # requests of one stream not yet answered on the wire; reading pauses beyond it


def tenant_of(context: Any) -> str:
    """The tenant a call's metadata names (fleet mode), else ""."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA:
            return value if isinstance(value, str) else ""
    return ""


class StreamHub:
    """The server's open streams (each one's wake-up event), and whether shutdown has begun."""

    def __init__(self) -> None:
        self.closing = False
        self.streams: set[asyncio.Event] = set()

    def close(self) -> None:
        """Shutdown: every open stream stops reading, sends the responses to the requests it has read, and
        ends UNAVAILABLE (``ShuttingDown``), so it neither holds the shutdown for the whole drain timeout nor
        is cut there with its answers. A stream whose client has finished writing ends as usual, OK."""
        self.closing = True
        for wake in self.streams:
            wake.set()


async def serve_stream(dp: "DataPlane", decoder: RequestDecoder, encoder: ResponseEncoder, hub: StreamHub,
                       tracer: "RequestTracer | None", request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
    """Requests of one stream run concurrently (so they batch); responses go out as they finish.

    No task per request: each request is queued as it is read (``DataPlane.start``) and its
    response is built by a callback on its batcher future; only a request that must await
    something before it queues (fleet mode's rate limit or response cache) gets a task.
    Responses to requests without an id leave in the order those requests came (``unnamed``).
    Reading pauses while ``_STREAM_WINDOW`` requests of the stream have no response sent yet, so
    a client that stops reading its responses holds at most that many, not every response it asked for.
    """
    decode = decoder.decode
    encode_stream = encoder.encode_stream
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
    tenant = tenant_of(context) if dp.tenant_aware else ""
    traceparent = tracestate = None  # with tracing on, the stream's: every request's trace has this parent
    if tracer is not None:
        metadata = dict(context.invocation_metadata() or ())
        traceparent, tracestate = metadata.get("traceparent"), metadata.get("tracestate")

    def answer(request: Any, response: Any = None, exc: BaseException | None = None,
               slot: list[Any] | None = None, trace: "RequestTrace | None" = None) -> None:
        """``request``: the decoded InferRequest, or the request's bytes when it failed to decode;
        ``slot``: its place in ``unnamed`` when it has no id; ``trace``: a request that failed to decode
        has its trace here (a decoded one carries its own)."""
        if tracer is not None and trace is None and not isinstance(request, bytes):
            trace = request.trace
        if trace is not None:
            trace.done_ns = time.perf_counter_ns()
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
        if trace is not None:
            if response is not None:
                trace.version, trace.request_id = response.model_version, response.id
            trace.finish(exc)
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
        except asyncio.CancelledError as exc:  # the stream is closing: nothing to answer
            if infer.trace is not None:
                infer.trace.finish(exc)
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
        trace = tracer.begin(traceparent, tracestate) if tracer is not None else None
        try:
            infer = decode(request, context.time_remaining())
        except Exception as exc:
            names = request_names(request)
            refused = dp.refuse_undecoded(*names, exc)  # counted, and said, as ModelInfer does
            if trace is not None:
                trace.model, _, trace.request_id = names
            answer(request, exc=refused, slot=None if names[2] else hold(), trace=trace)
            return
        if trace is not None:
            trace.model, trace.request_id = infer.model_name, infer.id
            infer.trace = trace
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
    hub.streams.add(wake)
    closed = False  # by the server's shutdown (``StreamHub.close``), before the client finished writing
    try:
        while True:
            while ready:
                yield ready.popleft()
                unsent -= 1
                if unsent < _STREAM_WINDOW:
                    room.set()
            if hub.closing and not reading_done:
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
        hub.streams.discard(wake)
        reader.cancel()
        for future in list(pending):
            future.cancel()
