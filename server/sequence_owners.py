"""Sequences across a fleet (``--redis-url``): which replica holds each live sequence, and forwarding to it.

A sequence model keeps a sequence's state in the replica that started it (server/sequences.py). Behind a
balancer that spreads calls, a later request of that sequence may reach another replica, which does not
hold it. So each replica records in Redis the sequences it holds: ``fleetserve:sequence:<model>:<id>`` =
its advertised gRPC address, written at a sequence's start, its expiry (the model's idle time, plus a
second) pushed back by the sequence's requests at most every quarter of the idle time, and deleted at the
sequence's release (its end, idle release, or its version closing) if it still names this replica. A
replica given a request that continues a sequence it does not hold looks the sequence up and forwards the
request over gRPC to the replica named there, with the caller's remaining deadline, and answers with
what that replica answered (an error keeps its status code; its message names the replica). A forwarded
request carries the parameter ``fleetserve_forwarded`` and is never forwarded again.

Redis writes are background tasks (a request never waits for one); a write that fails is counted and
dropped. With Redis down, nothing is recorded or looked up: a sequence then continues only on its own
replica, and a request that reaches another one is refused as not live, as without a fleet.

Loop-bound. Used by the dataplane (server/dataplane.py) in fleet mode only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Callable, Hashable

import grpc

from model_store.datatypes import BY_NAME
from model_store.rollout import Keys
from ops.errors import Code, ServingError
from ops.fleet_metrics import FleetMetrics
from ops.redis_link import RedisLink, RedisUnavailable
from server.codec import from_raw, to_raw
from server.protos import grpc_service_pb2 as pb
from server.protos import grpc_service_pb2_grpc as rpc
from server.types import InferRequest, InferResponse, OutputTensor
from server.tls import peer_channel
from server.validation import FORWARDED

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 1024  # Redis writes in flight; beyond it a write is dropped (and counted)
_RECORD_MARGIN_S = 1.0  # a record outlives its sequence's idle time by this much
_INT64_MAX = (1 << 63) - 1
# Delete the record only if it still names this replica: the sequence may have been started again elsewhere.
_DELETE_IF_OURS = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def sequence_key(keys: Keys, model: str, sequence_id: Hashable) -> str:
    """The Redis key of a sequence's record: integer and string ids never share one."""
    kind = "s" if isinstance(sequence_id, str) else "i"
    return f"{keys.prefix}sequence:{model}:{kind}:{sequence_id}"


class _ModelObserver:
    """The ``SequenceObserver`` of one model version's sequences (batching/sequences.py)."""

    def __init__(self, owners: "SequenceOwners", model: str, idle_s: float) -> None:
        self._owners = owners
        self._model = model
        self._ttl_ms = max(1, int((idle_s + _RECORD_MARGIN_S) * 1000))
        self._refresh_s = idle_s / 4
        self._written: dict[Hashable, float] = {}  # when each live sequence's record was last written

    def started(self, sequence_id: Hashable) -> None:
        self._written[sequence_id] = time.monotonic()
        self._owners.write(self._model, sequence_id, self._ttl_ms, refresh=False)

    def touched(self, sequence_id: Hashable) -> None:
        now = time.monotonic()
        if now - self._written.get(sequence_id, -math.inf) >= self._refresh_s:
            self._written[sequence_id] = now
            self._owners.write(self._model, sequence_id, self._ttl_ms, refresh=True)

    def released(self, sequence_id: Hashable) -> None:
        self._written.pop(sequence_id, None)
        self._owners.delete(self._model, sequence_id)


class SequenceOwners:
    """See the module docstring. ``address``: this replica's advertised gRPC address (set once it is known)."""

    def __init__(self, link: RedisLink, keys: Keys, metrics: FleetMetrics,
                 channel: "Callable[[str, list[tuple[str, Any]]], grpc.aio.Channel] | None" = None,
                 metadata: "tuple[tuple[str, str], ...]" = ()) -> None:
        """``channel(address, options)``: a channel to a peer (``peer_channel``; plain by default); ``metadata``:
        sent with each forwarded request (the header a restricted inference API asks for)."""
        self._link = link
        self._metadata = metadata or None
        self._channel = channel or peer_channel(None)
        self._keys = keys
        self._metrics = metrics
        self.address = ""
        self._writes: set[asyncio.Task[None]] = set()
        self._peers: dict[str, tuple[grpc.aio.Channel, rpc.GRPCInferenceServiceStub]] = {}  # by address

    def observer(self, model: str, idle_s: float) -> _ModelObserver:
        return _ModelObserver(self, model, idle_s)

    # ---- the records ---------------------------------------------------------------------------
    def write(self, model: str, sequence_id: Hashable, ttl_ms: int, refresh: bool) -> None:
        """Record (or, ``refresh``, push back the expiry of) this replica's hold of a sequence, in the background."""
        key, address = sequence_key(self._keys, model, sequence_id), self.address
        if not address:
            return

        async def write(client: Any) -> None:
            if refresh and await client.pexpire(key, ttl_ms):
                return
            await client.set(key, address, px=ttl_ms)  # a start, or a record gone meanwhile

        self._background(write)

    def delete(self, model: str, sequence_id: Hashable) -> None:
        key, address = sequence_key(self._keys, model, sequence_id), self.address
        if address:
            self._background(lambda client: client.eval(_DELETE_IF_OURS, 1, key, address))

    def _background(self, fn: Any) -> None:
        if not self._link.up or len(self._writes) >= MAX_PENDING_WRITES:
            self._metrics.sequence_record_errors += 1
            return
        task = asyncio.get_running_loop().create_task(self._call(fn))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _call(self, fn: Any) -> None:
        try:
            await self._link.call(fn)
        except RedisUnavailable as exc:
            self._metrics.sequence_record_errors += 1
            log.debug("sequence record not written: %s", exc)

    async def owner(self, model: str, sequence_id: Hashable) -> str | None:
        """The address of the replica holding the sequence, or None (no record, or Redis down)."""
        key = sequence_key(self._keys, model, sequence_id)
        try:
            value = await self._link.call(lambda client: client.get(key))
        except RedisUnavailable:
            return None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    # ---- forwarding ----------------------------------------------------------------------------
    async def forward(self, address: str, request: InferRequest, sequence_id: Hashable) -> InferResponse:
        """Send ``request`` to the replica at ``address`` and answer with its answer; raises its error."""
        message = _to_message(request)
        timeout = None
        if request.deadline is not None:
            timeout = max(0.0, request.deadline - time.monotonic())
        peer = self._peers.get(address)
        if peer is None:
            channel = self._channel(address, _CHANNEL_OPTIONS)
            peer = self._peers[address] = (channel, rpc.GRPCInferenceServiceStub(channel))
        forwards = self._metrics.sequence_forwards
        forwards[request.model_name] = forwards.get(request.model_name, 0) + 1
        try:
            reply = await peer[1].ModelInfer(message, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            error = ServingError(f"{exc.details()} (forwarded to replica {address}, which holds sequence "
                                 f"{sequence_id!r})")
            error.code = Code(exc.code().value[0])
            raise error from None
        return _from_message(reply)

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        for channel, _ in self._peers.values():
            await channel.close()
        self._peers.clear()


def _set_parameter(parameters: Any, name: str, value: Any) -> None:
    if isinstance(value, bool):
        parameters[name].bool_param = value
    elif isinstance(value, int):
        if value > _INT64_MAX:
            parameters[name].uint64_param = value
        else:
            parameters[name].int64_param = value
    elif isinstance(value, float):
        parameters[name].double_param = value
    else:
        parameters[name].string_param = str(value)


def _to_message(request: InferRequest) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=request.model_name, model_version=request.model_version, id=request.id)
    for name, value in request.parameters.items():
        _set_parameter(message.parameters, name, value)
    _set_parameter(message.parameters, FORWARDED, True)
    for tensor in request.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        message.raw_input_contents.append(to_raw(tensor.data, BY_NAME[tensor.datatype]))
    classes = request.classification or {}
    for name in request.requested_outputs or ():
        output = message.outputs.add(name=name)
        if name in classes:
            output.parameters["classification"].int64_param = classes[name]
    return message


def _from_message(reply: pb.ModelInferResponse) -> InferResponse:
    outputs = []
    for index, tensor in enumerate(reply.outputs):
        shape = tuple(tensor.shape)
        data = from_raw(tensor.name, reply.raw_output_contents[index], BY_NAME[tensor.datatype], shape)
        outputs.append(OutputTensor(tensor.name, tensor.datatype, shape, data))
    return InferResponse(model_name=reply.model_name, model_version=reply.model_version, id=reply.id, outputs=outputs)
