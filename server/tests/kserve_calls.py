"""Calls a fleetserve server with the KServe Python SDK's clients and writes what came back as JSON.

Run as its own process (``python kserve_calls.py GRPC_ADDRESS HTTP_URL OUT_JSON``), never imported
by a test: kserve's generated protocol module and tritonclient's both register the protocol's
messages (``inference.ServerLiveRequest``, ...) in protobuf's default descriptor pool, under
different file names, and whichever loads second fails with "duplicate symbol". The pytest process
imports tritonclient.grpc, so server/tests/test_kserve_client.py runs this script once and checks
each observation it records.

Each call is recorded under a name: a result (``{"ok": ...}``) or the error the client raised
(REST: ``{"status": 404, "message": ...}`` from httpx.HTTPStatusError; gRPC: ``{"code": "NOT_FOUND",
"message": ...}`` from grpc.RpcError). Nothing here asserts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Awaitable, Callable

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import InferResponse, RequestedOutput
from kserve.protocol.rest import v2_datamodels

# The tensors each datatype's identity model (server/tests/conftest.py: INPUT0 [-1, 3]) gets back.
TENSORS: dict[str, np.ndarray] = {
    "FP32": np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -0.0]], dtype=np.float32),
    "INT64": np.array([[1, -(2**63), 2**63 - 1]], dtype=np.int64),
    "BYTES": np.array([[b"a", b"", "h\u00e9llo".encode()]], dtype=np.object_),
}


def tensor_json(array: np.ndarray) -> list[Any]:
    """A tensor as JSON: BYTES elements (bytes over gRPC, str from REST JSON) as text."""
    return [x.decode() if isinstance(x, bytes) else x for x in array.ravel().tolist()]


def response_json(response: InferResponse) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": {
            out.name: {"datatype": out.datatype, "shape": list(out.shape), "data": tensor_json(out.as_numpy())}
            for out in response.outputs
        },
    }


def identity_request(datatype: str, binary: bool, request_id: str | None = None,
                     parameters: dict[str, Any] | None = None,
                     outputs: list[RequestedOutput] | None = None) -> InferRequest:
    array = TENSORS[datatype]
    tensor = InferInput("INPUT0", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return InferRequest(f"identity_{datatype.lower()}", [tensor], request_id=request_id,
                        parameters=parameters, request_outputs=outputs)


def fp32_request(model: str, shape: list[int], request_id: str | None = "r",
                 parameters: dict[str, Any] | None = None, version: str | None = None) -> InferRequest:
    tensor = InferInput("INPUT0", shape, "FP32", data=[1.0] * int(np.prod(shape)))
    return InferRequest(model, [tensor], request_id=request_id, parameters=parameters, model_version=version)


class Recorder:
    """Runs each call and keeps its result or error under a name."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    async def record(self, name: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            value = await call()
        except httpx.HTTPStatusError as exc:
            self.results[name] = {"status": exc.response.status_code, "message": str(exc)}
        except grpc.RpcError as exc:
            self.results[name] = {"code": exc.code().name, "message": exc.details()}
        else:
            self.results[name] = {"ok": response_json(value) if isinstance(value, InferResponse) else value}


async def rest_calls(rec: Recorder, url: str) -> None:
    async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as rest:
        await rec.record("rest.live", lambda: rest.is_server_live(url))
        await rec.record("rest.ready", lambda: rest.is_server_ready(url))
        await rec.record("rest.model_ready", lambda: rest.is_model_ready(url, "simple"))
        await rec.record("rest.model_ready.unknown", lambda: rest.is_model_ready(url, "no_such_model"))
        await rec.record("rest.model_ready.unavailable", lambda: rest.is_model_ready(url, "corrupt"))

        def infer(request: InferRequest, model: str | None = None) -> Callable[[], Awaitable[Any]]:
            return lambda: rest.infer(url, request, model_name=model or request.model_name)

        for datatype in TENSORS:
            for binary in (False, True):
                name = f"rest.infer.{datatype}.{'binary' if binary else 'json'}"
                await rec.record(name, infer(identity_request(datatype, binary, request_id=name)))
            await rec.record(f"rest.infer.{datatype}.binary_output", infer(identity_request(
                datatype, False, request_id="out", outputs=[RequestedOutput("OUTPUT0", {"binary_data": True})])))
            await rec.record(f"rest.infer.{datatype}.binary_data_output", infer(identity_request(
                datatype, False, request_id="all", parameters={"binary_data_output": True})))
        await rec.record("rest.infer.no_id", infer(identity_request("FP32", False)))
        await rec.record("rest.infer.parameters", infer(fp32_request(
            "identity_fp32", [1, 3], parameters={"priority": 1, "tag": "kserve", "flag": True, "ratio": 0.5})))
        await rec.record("rest.infer.queue_timeout", infer(fp32_request("held", [1, 4], parameters={"timeout": 1000})))
        await rec.record("rest.infer.sequence_id", infer(fp32_request("held", [1, 4], parameters={"sequence_id": 7})))
        await rec.record("rest.infer.unknown_model", infer(fp32_request("no_such_model", [1, 3])))
        await rec.record("rest.infer.wrong_shape", infer(fp32_request("identity_fp32", [1, 4])))
        await rec.record("rest.infer.unavailable", infer(fp32_request("corrupt", [1, 16])))

    async with httpx.AsyncClient(base_url=url) as http:  # the SDK has no metadata calls: its REST data model reads them
        async def metadata(path: str, model: Any) -> Any:
            reply = await http.get(path)
            reply.raise_for_status()
            return model.model_validate(reply.json()).model_dump(exclude_none=True)

        await rec.record("rest.server_metadata", lambda: metadata("/v2", v2_datamodels.ServerMetadataResponse))
        await rec.record("rest.model_metadata",
                         lambda: metadata("/v2/models/simple", v2_datamodels.ModelMetadataResponse))


def tensor_metadata(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


async def grpc_calls(rec: Recorder, address: str) -> None:
    async with InferenceGRPCClient(address, retries=0) as client:
        await rec.record("grpc.live", client.is_server_live)
        await rec.record("grpc.ready", client.is_server_ready)
        await rec.record("grpc.model_ready", lambda: client.is_model_ready("simple"))
        await rec.record("grpc.model_ready.unknown", lambda: client.is_model_ready("no_such_model"))
        await rec.record("grpc.model_ready.unavailable", lambda: client.is_model_ready("corrupt"))

        for datatype in TENSORS:
            for binary in (False, True):  # typed contents, or raw_input_contents
                name = f"grpc.infer.{datatype}.{'binary' if binary else 'json'}"
                await rec.record(name, lambda r=identity_request(datatype, binary, request_id=name): client.infer(r))
        await rec.record("grpc.infer.no_id", lambda: client.infer(identity_request("FP32", True)))
        await rec.record("grpc.infer.parameters", lambda: client.infer(fp32_request(
            "identity_fp32", [1, 3], parameters={"priority": 1, "tag": "kserve", "flag": True})))
        await rec.record("grpc.infer.version", lambda: client.infer(fp32_request("add_one", [1, 16], version="2")))
        await rec.record("grpc.infer.unknown_version",
                         lambda: client.infer(fp32_request("add_one", [1, 16], version="9")))
        await rec.record("grpc.infer.queue_timeout",
                         lambda: client.infer(fp32_request("held", [1, 4], parameters={"timeout": 1000})))
        await rec.record("grpc.infer.sequence_id",
                         lambda: client.infer(fp32_request("held", [1, 4], parameters={"sequence_id": 7})))
        await rec.record("grpc.infer.unknown_model", lambda: client.infer(fp32_request("no_such_model", [1, 3])))
        await rec.record("grpc.infer.wrong_shape", lambda: client.infer(fp32_request("identity_fp32", [1, 4])))
        await rec.record("grpc.infer.unavailable", lambda: client.infer(fp32_request("corrupt", [1, 16])))

    # The SDK's clients have no metadata calls; the SDK's generated stub (the one its client uses) makes them.
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)

        async def server_metadata() -> dict[str, Any]:
            reply = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
            return {"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)}

        async def model_metadata() -> dict[str, Any]:
            reply = await stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"), timeout=10)
            return {"name": reply.name, "versions": list(reply.versions), "platform": reply.platform,
                    "inputs": [tensor_metadata(t) for t in reply.inputs],
                    "outputs": [tensor_metadata(t) for t in reply.outputs]}

        await rec.record("grpc.server_metadata", server_metadata)
        await rec.record("grpc.model_metadata", model_metadata)


async def main(grpc_address: str, http_url: str) -> dict[str, dict[str, Any]]:
    rec = Recorder()
    await rest_calls(rec, http_url)
    await grpc_calls(rec, grpc_address)
    return rec.results


if __name__ == "__main__":
    grpc_address, http_url, out_path = sys.argv[1:4]
    results = asyncio.run(main(grpc_address, http_url))
    with open(out_path, "w") as out:
        json.dump(results, out, indent=1)
