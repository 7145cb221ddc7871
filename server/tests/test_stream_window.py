"""ModelStreamInfer's window: reading pauses while the window is full and resumes as answers leave.

In process (the window is a module constant), with a real grpc.aio server and a real onnxruntime
model; the window is shrunk to 4 so that a 60-request stream fills it many times over.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server import grpc_stream
from server.app import App
from server.settings import Settings


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_model_repository(tmp_path, {"add_one": ModelSpec(write_add_constant_model)})


def add_one_request(i: int, model: str, request_id: str) -> service_pb2.ModelInferRequest:
    """One row of ``i``s for ``model`` (add_one answers ``i + 1``)."""
    msg = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    msg.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    msg.raw_input_contents.append(np.full((1, 16), i, np.float32).tobytes())
    return msg


async def stream_replies(repo: Path, requests: Iterator[service_pb2.ModelInferRequest]) -> list[Any]:
    """Every reply of one ModelStreamInfer stream carrying ``requests``, from a server started for it."""
    app = App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            return [r async for r in stub.ModelStreamInfer(requests, timeout=30)]
    finally:
        await app.stop()


async def test_a_stream_longer_than_its_window_is_answered_in_full(repo, monkeypatch):
    monkeypatch.setattr(grpc_stream, "_STREAM_WINDOW", 4)

    def requests():
        for i in range(60):
            yield add_one_request(i, "add_one", str(i))
        yield service_pb2.ModelInferRequest(model_name="nope", id="bad")

    replies = await stream_replies(repo, requests())
    answered = {r.infer_response.id: r for r in replies}
    assert len(replies) == 61 and len(answered) == 61  # every request answered once, none lost in the pauses
    for i in range(60):
        out = np.frombuffer(answered[str(i)].infer_response.raw_output_contents[0], np.float32)
        assert out.tolist() == [i + 1.0] * 16
    assert "unknown model 'nope'" in answered["bad"].error_message


async def test_requests_without_an_id_are_answered_in_order_through_a_full_window(repo, monkeypatch):
    """Their responses wait their turn inside the window: none is lost or reordered while reading pauses."""
    monkeypatch.setattr(grpc_stream, "_STREAM_WINDOW", 4)
    replies = await stream_replies(repo, (add_one_request(i, "add_one" if i % 7 else "nope", "") for i in range(60)))
    assert len(replies) == 60
    for i, reply in enumerate(replies):
        if i % 7:
            out = np.frombuffer(reply.infer_response.raw_output_contents[0], np.float32)
            assert out.tolist() == [i + 1.0] * 16
        else:
            assert "unknown model 'nope'" in reply.error_message


async def test_a_client_that_stops_reading_holds_at_most_a_window_of_responses(repo, monkeypatch):
    """Responses wait to be sent inside the window too: a client that writes on and never reads does not make
    the server read (and answer, and buffer) every request it sends."""
    monkeypatch.setattr(grpc_stream, "_STREAM_WINDOW", 4)
    app = App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0))
    await app.start()
    started = 0
    start = app.dataplane.start

    def counted(request):
        nonlocal started
        started += 1
        return start(request)

    monkeypatch.setattr(app.dataplane, "start", counted)
    msg = service_pb2.ModelInferRequest(model_name="add_one", id="r")
    msg.inputs.add(name="INPUT0", datatype="FP32", shape=[64, 16])
    msg.raw_input_contents.append(np.zeros((64, 16), np.float32).tobytes())  # a 4 KiB response each
    try:
        # No BDP probing: the client's receive window stays at 64 KiB, so unread responses back up at once.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}", options=[("grpc.http2.bdp_probe", 0)]) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            for _ in range(300):
                try:
                    await asyncio.wait_for(call.write(msg), 0.5)
                except asyncio.TimeoutError:  # the server stopped reading: the stream is full
                    break
            await asyncio.sleep(0.5)
            assert started < 100  # a window's worth plus what the transport holds, not all 300
            call.cancel()
    finally:
        await app.stop()
