"""A bare grpc.aio Open Inference Protocol server that does no work: the transport's own ceiling.

It serves ModelInfer and ModelStreamInfer for one pretend model, answering each request with a
fixed, correctly shaped response (zeros; the id echoed; rows taken from the request's first
input) built once per row count, plus ServerMetadata, ModelMetadata, ModelConfig,
ServerLive/ServerReady and ModelReady so the load generator and Triton's perf_analyzer can drive
it like any server. Requests are parsed (any real server must); responses go out as
pre-serialised bytes. One process on uvloop, as fleetserve runs.
``fleetserve bench`` compares fleetserve against it; run it alone with
``python -m loadtest.baseline --port 8101``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterator

import grpc

from loadtest.procpool import run_event_loop
from loadtest.wire import SERVICE, encode_varint, with_id
from model_store.datatypes import BY_NAME
from model_store.protos import model_config_pb2 as config_pb
from server.protos import grpc_service_pb2 as pb

log = logging.getLogger("loadtest.baseline")
_MAX_BATCH_SIZE = 256  # rows a request may carry, as the bundled mlp's config says
_STREAM_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # per row (the batch dimension is added in front)

    @classmethod
    def parse(cls, text: str) -> "TensorSpec":
        """``NAME:DATATYPE:D1xD2...``, e.g. ``INPUT0:FP32:16``."""
        try:
            name, datatype, dims = text.split(":")
            shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        except ValueError:
            raise ValueError(f"tensor {text!r}: expected NAME:DATATYPE:DIMS such as INPUT0:FP32:16") from None
        if datatype not in BY_NAME or datatype == "BYTES":
            raise ValueError(f"tensor {text!r}: datatype must be a fixed-size protocol datatype")
        return cls(name, datatype, shape)


class BareService:
    """Fixed answers for one model; response bytes cached per row count (bounded by the few sizes used).

    ``park``: each unary request waits on a future until the next event-loop turn, which releases
    every request parked meanwhile at once. That is all a dynamic batcher adds to the transport's
    work (a suspended handler and its wake-up), so the bare server with ``park`` measures the
    transport's ceiling for any server that batches.
    """

    def __init__(self, model: str, inputs: list[TensorSpec], outputs: list[TensorSpec], park: bool = False) -> None:
        self.model = model
        self.inputs = inputs
        self.outputs = outputs
        self.park = park
        self.largest_release = 0  # the most requests one turn released (park)
        self._bodies: dict[int, bytes] = {}
        self._parked: list[asyncio.Future[None]] = []

    def _body(self, rows: int) -> bytes:
        body = self._bodies.get(rows)
        if body is None:
            response = pb.ModelInferResponse(model_name=self.model, model_version="1")
            for spec in self.outputs:
                shape = (rows, *spec.dims)
                count = rows
                for d in spec.dims:
                    count *= d
                response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
                response.raw_output_contents.append(bytes(count * BY_NAME[spec.datatype].itemsize))
            body = response.SerializeToString()
            if len(self._bodies) < 1024:
                self._bodies[rows] = body
        return body

    def answer(self, request: Any) -> bytes:
        """A serialised ModelInferResponse for ``request`` (a parsed ModelInferRequest)."""
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        body = self._body(rows)
        if not request.id:
            return body
        return with_id(body, request.id.encode())  # ModelInferResponse.id is field 3 too

    async def model_infer(self, request: Any, context: Any) -> bytes:
        return self.answer(request)

    async def model_infer_parked(self, request: Any, context: Any) -> bytes:
        await self._next_turn()
        return self.answer(request)

    def _next_turn(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._parked:
            loop.call_soon(self._release)
        self._parked.append(future)
        return future

    def _release(self) -> None:
        parked, self._parked = self._parked, []
        self.largest_release = max(self.largest_release, len(parked))
        for future in parked:
            if not future.done():  # its caller may have gone
                future.set_result(None)

    async def model_stream_infer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            inner = self.answer(request)
            yield _STREAM_RESPONSE_TAG + encode_varint(len(inner)) + inner

    async def model_metadata(self, request: Any, context: Any) -> Any:
        response = pb.ModelMetadataResponse(name=self.model, versions=["1"], platform="bare")
        for spec in self.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=(-1, *spec.dims))
        for spec in self.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=(-1, *spec.dims))
        return response

    async def model_config(self, request: Any, context: Any) -> Any:
        """What perf_analyzer reads before it sends anything: the batch limit and the tensors."""
        config = config_pb.ModelConfig(name=self.model, platform="bare", max_batch_size=_MAX_BATCH_SIZE)
        for specs, field in ((self.inputs, config.input), (self.outputs, config.output)):
            for spec in specs:
                field.add(name=spec.name, data_type=config_pb.DataType.Value(BY_NAME[spec.datatype].config_name),
                          dims=spec.dims)
        return pb.ModelConfigResponse(config=config)

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, request: Any, response: Any = None) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.FromString,
                response_serializer=response.SerializeToString if response is not None else None,
            )

        async def live(request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def ready(request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def model_ready(request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=request.name == self.model)

        async def server_metadata(request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(name="bare", version="1")

        return grpc.method_handlers_generic_handler(SERVICE, {
            # chosen once here, so the plain server's per-request path has no branch for ``park``
            "ModelInfer": unary(self.model_infer_parked if self.park else self.model_infer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString, response_serializer=None),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ServerMetadata": unary(server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ServerLive": unary(live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        })


async def start_baseline(service: BareService, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Start a bare server on the running loop; returns it and its port (``await server.stop(0)`` to end)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                                      ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((service.handlers(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return server, bound


async def _serve(service: BareService, host: str, port: int) -> None:
    server, bound = await start_baseline(service, host, port)
    print(f"baseline listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101, help="0 picks a free port (printed)")
    parser.add_argument("--model", default="add_one", help="the model name it answers for")
    parser.add_argument("--input", action="append", default=[], metavar="NAME:DATATYPE:DIMS",
                        help="an input per row, repeatable (default INPUT0:FP32:16)")
    parser.add_argument("--output", action="append", default=[], metavar="NAME:DATATYPE:DIMS",
                        help="an output per row, repeatable (default OUTPUT0:FP32:16)")
    parser.add_argument("--park", action="store_true",
                        help="answer each unary request one event-loop turn later, all parked requests at once: "
                             "the transport's ceiling for a server that batches")
    args = parser.parse_args(argv)
    try:
        inputs = [TensorSpec.parse(t) for t in args.input or ["INPUT0:FP32:16"]]
        outputs = [TensorSpec.parse(t) for t in args.output or ["OUTPUT0:FP32:16"]]
    except ValueError as exc:
        parser.error(str(exc))
    run_event_loop(_serve(BareService(args.model, inputs, outputs, park=args.park), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
