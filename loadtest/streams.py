"""One ModelStreamInfer stream of a load driver (loadtest/driver.py): requests in, responses matched by id.

Closed loop, each slot's next request is sent when its response arrives (a sequence model's slots send their
sequences' bodies, loadtest/wire.py ``SequenceBodies``); open loop, the driver submits each arrival. A stream
the server ends is reopened, its requests in flight recorded with the stream's status.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

import grpc

from loadtest.stats import OK, STREAM_ERROR
from loadtest.wire import MODEL_STREAM_INFER, SequenceBodies, parse_stream_response, with_id

if TYPE_CHECKING:
    from loadtest.driver import LoadDriver


class Stream:
    """One ModelStreamInfer call kept open (reopened after a failure) for the driver."""

    def __init__(self, driver: "LoadDriver", channel: grpc.aio.Channel) -> None:
        self.driver = driver
        self._method = channel.stream_stream(MODEL_STREAM_INFER, request_serializer=None, response_deserializer=None)
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._pending: dict[str, tuple[int, int]] = {}  # id -> (start ns, slot or -1)
        self._slots: list[tuple[str, bytes]] = []  # closed loop: (id, request bytes) per slot, built once
        self._sequences: list[SequenceBodies | None] = []  # per slot: its sequences' bodies, for a sequence model

    def add_slot(self, request_id: str, body: bytes, sequences: SequenceBodies | None = None) -> None:
        self._slots.append((request_id, with_id(body, request_id.encode())))
        self._sequences.append(sequences)

    def submit(self, request_id: str, payload: bytes, start_ns: int, slot: int) -> None:
        self._pending[request_id] = (start_ns, slot)
        self._queue.append(payload)
        self._wake.set()

    def _send_slot(self, slot: int) -> None:
        d = self.driver
        if d._stopping or d._budget <= 0:
            return
        d._budget -= 1
        d._inflight += 1
        request_id, payload = self._slots[slot]
        sequences = self._sequences[slot]
        if sequences is not None:
            payload = with_id(sequences.next(), request_id.encode())
        self.submit(request_id, payload, time.monotonic_ns(), slot)

    async def run(self) -> None:
        d = self.driver
        while not d._stopping:
            for slot in range(len(self._slots)):
                self._send_slot(slot)
            call = self._method()
            writer = asyncio.get_running_loop().create_task(self._write(call))
            code = grpc.StatusCode.UNAVAILABLE.value[0]  # the server ended the stream early
            try:
                async for data in call:
                    self._on_response(data)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().value[0]
            finally:
                writer.cancel()
                call.cancel()
            self._fail_pending(code)
            if not d._stopping:
                await asyncio.sleep(0.05)

    def _fail_pending(self, code: int) -> None:
        self._queue.clear()
        now = time.monotonic_ns()
        for start_ns, _ in self._pending.values():
            self.driver._inflight -= 1
            self.driver._record(now, now - start_ns, code)
        self._pending.clear()

    async def _write(self, call: Any) -> None:
        queue, wake = self._queue, self._wake
        while True:
            while not queue:
                wake.clear()
                await wake.wait()
            await call.write(queue.popleft())

    def _on_response(self, data: bytes) -> None:
        d = self.driver
        request_id, error = parse_stream_response(data)
        entry = self._pending.pop(request_id, None)
        if entry is None:
            d._unmatched += 1
            return
        t1 = time.monotonic_ns()
        d._inflight -= 1
        d._record(t1, t1 - entry[0], STREAM_ERROR if error else OK)
        if entry[1] >= 0:
            self._send_slot(entry[1])
