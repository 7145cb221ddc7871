"""How a request its caller cancelled is counted: DEADLINE_EXCEEDED at (or just before) its deadline, else CANCELLED.

gRPC's client and server each time a call's deadline, the server's from when the request arrived, so the
client's cancel at its deadline may reach the server a little before the server's own deadline.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import numpy as np

from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server.app import App
from server.dataplane import DEADLINE_SKEW_S
from server.settings import Settings
from server.types import InferRequest, InputTensor

HELD = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000000 }"  # a lone request waits 2 s


async def test_a_caller_gone_just_before_its_deadline_counts_as_deadline_exceeded(tmp_path: Path) -> None:
    repo = write_model_repository(tmp_path, {"held": ModelSpec(partial(write_add_constant_model, features=4),
                                                               config=HELD)})
    app = App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0))
    await app.start()
    try:
        async def cancelled(deadline_in_s: float) -> None:
            data = np.ones((1, 4), np.float32)
            task = asyncio.ensure_future(app.dataplane.infer(InferRequest(
                "held", inputs=[InputTensor("INPUT0", "FP32", (1, 4), data)],
                deadline=time.monotonic() + deadline_in_s)))
            await asyncio.sleep(0.05)  # queued, waiting for its batch
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        assert DEADLINE_SKEW_S >= 0.01
        await cancelled(0.06)  # its transport gave up 10 ms before the server's deadline
        await cancelled(10.0)  # its caller went away long before the deadline

        def count(code: str) -> float:
            return app.metrics_registry.get_sample_value(
                "fleetserve_inference_requests_total", {"model": "held", "version": "1", "code": code}) or 0.0

        assert (count("DEADLINE_EXCEEDED"), count("CANCELLED")) == (1.0, 1.0)
    finally:
        await app.stop()
