"""The load generator's side of the Open Inference Protocol: request bytes built once, raw methods.

Requests are serialised once per load point; each send is a bytes object handed to a raw
``channel.unary_unary``/``stream_stream`` with no serializer, so the client spends no CPU on
protobuf encoding per request. Stream requests need distinct ids to match responses: protobuf
merges repeated occurrences of a message's fields, so ``with_id`` prefixes the encoded id field
(field 3 of ModelInferRequest) to the id-less body instead of re-encoding the request.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from model_store.datatypes import BY_NAME, from_numpy
from server.protos import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_STREAM_INFER = f"/{SERVICE}/ModelStreamInfer"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
_ID_TAG = b"\x1a"  # field 3 (id), wire type 2 (length-delimited)


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes  # raw_input_contents: little-endian, row-major; BYTES as 4-byte length + bytes


@dataclass(frozen=True)
class Batch:
    """Per-model batch statistics at one moment, summed over versions and targets."""

    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # model executions (batches)
    executions_by_size: tuple[tuple[int, int], ...] = ()  # (batch size, executions)


def with_id(body: bytes, request_id: bytes) -> bytes:
    """``body`` (a ModelInferRequest or ModelInferResponse without id: field 3 in both) with the id set.

    Prefixing the encoded field costs one bytes concatenation instead of a protobuf encoding.
    """
    return _ID_TAG + encode_varint(len(request_id)) + request_id + body


def encode_varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse_stream_response(data: bytes) -> tuple[str, str]:
    """(request id, error message) of a serialised ModelStreamInferResponse."""
    msg = pb.ModelStreamInferResponse.FromString(data)
    return msg.infer_response.id, msg.error_message


class SequenceBodies:
    """The request bodies of one closed-loop slot for a model that runs sequences (Triton's sequence batching):
    sequences of ``length`` requests back to back, the first flagged start and the last end, each sequence's id
    ``first_id`` plus its number. Each body is ``body`` with the sequence parameters appended (protobuf merges
    them in), so the tensors are still encoded once."""

    __slots__ = ("body", "length", "first_id", "sent")

    def __init__(self, body: bytes, length: int, first_id: int) -> None:
        self.body = body
        self.length = length
        self.first_id = first_id
        self.sent = 0

    def next(self) -> bytes:
        position = self.sent % self.length
        sequence_id = self.first_id + self.sent // self.length
        self.sent += 1
        return self.body + sequence_parameters(sequence_id, position == 0, position == self.length - 1)


def sequence_parameters(sequence_id: int, start: bool, end: bool) -> bytes:
    """A serialised ModelInferRequest holding only Triton's sequence parameters, to append to a request's body."""
    request = pb.ModelInferRequest()
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request.SerializeToString()


def sequence_first_id(point: int, process: int, slot: int) -> int:
    """The first sequence id of a slot: distinct for every load point, process and slot of a run (a slot's
    sequences count up from it), within the signed 64 bits of a gRPC int64_param."""
    return ((point + 1) << 48) | ((process & 0xFF) << 40) | ((slot & 0xFFFF) << 24)


def encode_request(model: str, version: str, inputs: list[InputTensor]) -> bytes:
    """A serialised ModelInferRequest without id; every output is returned (none requested by name)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for tensor in inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(tensor.raw)
    return request.SerializeToString()


def encode_array(array: np.ndarray, datatype: str) -> bytes:
    """Raw contents of ``array`` as the protocol's ``datatype``."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(value).to_bytes(4, "little") + value)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=BY_NAME[datatype].numpy).tobytes()


def batch_inputs(metadata: Any) -> set[str]:
    """Names of the inputs whose first dimension is -1: the batch dimension, which ``rows`` sets."""
    return {spec.name for spec in metadata.inputs if len(spec.shape) and spec.shape[0] == -1}


def random_inputs(metadata: Any, rows: int, seed: int) -> list[InputTensor]:
    """Seeded random inputs shaped from a ModelMetadataResponse: a leading -1 becomes ``rows``, others 1.

    Raises ValueError for ``rows`` > 1 when no input has a leading -1: the model's requests have a
    fixed shape, so ``rows`` could not be sent (and counting it would inflate rows/s).
    """
    if rows > 1 and not batch_inputs(metadata):
        shapes = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in metadata.inputs)
        raise ValueError(f"--rows {rows}: the model's inputs have no batch dimension (-1 first): {shapes}; "
                         "each request is one inference of that shape (drop --rows)")
    rng = np.random.default_rng(seed)
    tensors = []
    for spec in metadata.inputs:
        shape = tuple(rows if (i == 0 and d == -1) else (1 if d == -1 else int(d)) for i, d in enumerate(spec.shape))
        datatype = spec.datatype
        if datatype not in BY_NAME:
            raise ValueError(f"input {spec.name!r}: unknown datatype {datatype!r}")
        if datatype == "BYTES":
            letters = rng.integers(ord("a"), ord("z") + 1, size=(int(np.prod(shape)), 8), dtype=np.uint8)
            array = np.array([row.tobytes() for row in letters], dtype=object).reshape(shape)
        elif datatype in ("FP16", "FP32", "FP64"):
            array = rng.standard_normal(shape)
        elif datatype == "BOOL":
            array = rng.integers(0, 2, size=shape).astype(bool)
        else:
            array = rng.integers(0, 100, size=shape)  # fits every integer type
        tensors.append(InputTensor(spec.name, datatype, shape, encode_array(array, datatype)))
    return tensors


def describe_inputs(metadata: Any, tensors: list[InputTensor], source: str = "") -> list[str]:
    """What is sent, one line per input: name, datatype, shape, and ``source`` or how it was generated."""
    open_dims = {spec.name: any(d == -1 for d in spec.shape[1:]) for spec in metadata.inputs} if metadata else {}
    lines = []
    for t in tensors:
        shape = f"[{','.join(str(d) for d in t.shape)}]"
        if source:
            how = source
        elif t.datatype == "BYTES":
            how = "random 8-letter strings"
        elif t.datatype in ("FP16", "FP32", "FP64"):
            how = "random normal"
        elif t.datatype == "BOOL":
            how = "random booleans"
        else:
            how = "random integers 0-99"
        if open_dims.get(t.name) and not source:
            how += ", open (-1) dimensions after the first sent as 1"
        lines.append(f"{t.name} {t.datatype} {shape} {how}")
    return lines


def file_inputs(path: Path) -> list[InputTensor]:
    """Inputs from a .npz file: one array per input, keyed by input name, shapes sent as stored.

    Raises ValueError naming the file when it is not a .npz of arrays the protocol can carry.
    """
    how = "write one array per input name with numpy.savez(path, INPUT0=array, ...)"
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:  # not .npy/.npz, or object arrays (pickles)
        raise ValueError(f"--input-file {path}: not a .npz file of arrays ({exc}); {how}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"--input-file {path}: a .npy file holds one unnamed array; {how}")
    tensors = []
    with data:
        for name in data.files:
            try:
                array = data[name]
                datatype = from_numpy(array.dtype).name
            except ValueError as exc:
                raise ValueError(f"--input-file {path}: array {name!r}: {exc}") from None
            tensors.append(InputTensor(name, datatype, tuple(int(d) for d in array.shape), encode_array(array, datatype)))
    if not tensors:
        raise ValueError(f"--input-file {path}: no arrays; {how}")
    return tensors


def file_rows(metadata: Any, tensors: list[InputTensor]) -> int:
    """Rows per request of inputs from a file: the first dimension of those the model batches, else 1."""
    batched = batch_inputs(metadata)
    for t in tensors:
        if t.name in batched and t.shape:
            return t.shape[0]
    return 1


async def model_metadata(channel: grpc.aio.Channel, model: str, version: str, timeout_s: float = 10.0) -> Any:
    method = channel.unary_unary(
        f"/{SERVICE}/ModelMetadata", request_serializer=pb.ModelMetadataRequest.SerializeToString,
        response_deserializer=pb.ModelMetadataResponse.FromString,
    )
    return await method(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout_s)


async def batch_statistics(channel: grpc.aio.Channel, model: str, version: str, timeout_s: float = 10.0) -> Batch | None:
    """The model's batch statistics, or None when the server does not serve ModelStatistics."""
    method = channel.unary_unary(
        f"/{SERVICE}/ModelStatistics", request_serializer=pb.ModelStatisticsRequest.SerializeToString,
        response_deserializer=pb.ModelStatisticsResponse.FromString,
    )
    try:
        response = await method(pb.ModelStatisticsRequest(name=model, version=version), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return None
    by_size: dict[int, int] = {}
    inferences = executions = 0
    for stats in response.model_stats:
        inferences += stats.inference_count
        executions += stats.execution_count
        for b in stats.batch_stats:
            by_size[b.batch_size] = by_size.get(b.batch_size, 0) + b.compute_infer.count
    return Batch(inferences, executions, tuple(sorted(by_size.items())))


def add_batches(a: Batch, b: Batch) -> Batch:
    """Statistics of two targets together."""
    sizes = dict(a.executions_by_size)
    for size, n in b.executions_by_size:
        sizes[size] = sizes.get(size, 0) + n
    return Batch(a.inference_count + b.inference_count, a.execution_count + b.execution_count, tuple(sorted(sizes.items())))


def batch_delta(before: Batch, after: Batch) -> tuple[dict[int, int], float | None]:
    """Executions by batch size between two snapshots, and the mean rows per execution."""
    old = dict(before.executions_by_size)
    sizes = {size: n - old.get(size, 0) for size, n in after.executions_by_size if n - old.get(size, 0) > 0}
    executions = after.execution_count - before.execution_count
    rows = after.inference_count - before.inference_count
    return sizes, (rows / executions if executions > 0 else None)


async def max_batch_size(channel: grpc.aio.Channel, model: str, timeout_s: float = 10.0) -> int:
    """The model's ``max_batch_size`` from ModelConfig (0: the model does not batch)."""
    method = channel.unary_unary(
        f"/{SERVICE}/ModelConfig", request_serializer=pb.ModelConfigRequest.SerializeToString,
        response_deserializer=pb.ModelConfigResponse.FromString,
    )
    response = await method(pb.ModelConfigRequest(name=model), timeout=timeout_s)
    return int(response.config.max_batch_size)
