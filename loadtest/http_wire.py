"""The load generator's side of the Open Inference Protocol's REST API: request bodies built once.

Two encodings, chosen by ``--transport``:

- ``http``: the protocol's own JSON body (each input's values as a flat ``data`` list), which every
  Open Inference Protocol server reads (fleetserve, Triton, MLServer, KServe);
- ``http-binary``: Triton's binary tensor data extension (fleetserve and Triton read it; tritonclient
  sends it by default): a JSON header giving each input's ``binary_data_size``, the raw tensor bytes
  after it, and the header's length in ``Inference-Header-Content-Length``; outputs are asked for as
  binary too (``binary_data_output``).

The model's metadata and batch statistics come over the same REST API (``GET /v2/models/{model}``
and ``.../stats``), so a server reachable only over HTTP can be driven. HTTP statuses other than
200 are recorded as ``HTTP_BASE + status`` (``loadtest.stats`` names them "HTTP 429").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

from loadtest.wire import Batch, InputTensor
from model_store.datatypes import BY_NAME

TRANSPORTS = ("http", "http-binary")
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class HttpRequest:
    """One request, built once per load point and sent as is: its path, body and headers."""

    path: str  # /v2/models/{model}[/versions/{version}]/infer
    body: bytes
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """The part of ``GET /v2/models/{model}`` the load generator needs (shaped like the gRPC message)."""

    inputs: tuple[TensorMetadata, ...]


def model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return path + f"/versions/{quote(version, safe='')}" if version else path


def encode_request(model: str, version: str, inputs: list[InputTensor], binary: bool) -> HttpRequest:
    """The request for ``inputs``: JSON ``data``, or the binary tensor extension when ``binary``."""
    path = model_path(model, version) + "/infer"
    if not binary:
        body: dict[str, Any] = {
            "inputs": [{"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": _values(t)}
                       for t in inputs],
        }
        return HttpRequest(path, json.dumps(body, separators=(",", ":")).encode(),
                           (("Content-Type", "application/json"),))
    header: dict[str, Any] = {
        "inputs": [{"name": t.name, "shape": list(t.shape), "datatype": t.datatype,
                    "parameters": {"binary_data_size": len(t.raw)}} for t in inputs],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return HttpRequest(path, head + b"".join(t.raw for t in inputs),
                       (("Content-Type", "application/octet-stream"), (HEADER_LENGTH, str(len(head)))))


def _values(tensor: InputTensor) -> list[Any]:
    """The tensor's elements, row-major, as JSON values (BYTES as text)."""
    if tensor.datatype != "BYTES":
        values: list[Any] = np.frombuffer(tensor.raw, dtype=BY_NAME[tensor.datatype].numpy).tolist()
        return values
    items, offset, raw = [], 0, tensor.raw
    while offset < len(raw):
        length = int.from_bytes(raw[offset:offset + 4], "little")
        item = raw[offset + 4:offset + 4 + length]
        try:
            items.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"input {tensor.name!r}: element {len(items)} is not UTF-8 text, which JSON cannot "
                             "carry; use --transport http-binary") from None
        offset += 4 + length
    return items


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _error_detail(text: str, reason: str | None) -> str:
    """The server's reason in one line: the protocol's ``{"error": ...}``, else the start of the body
    (a web server that is not an inference server answers a page)."""
    try:
        detail = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        detail = text
    return _one_line(str(detail)) or (reason or "")


def _unreachable(method: str, url: str, exc: Exception) -> RuntimeError:
    """A request that got no HTTP answer, named like gRPC's outcome; not HTTP/1.1 at all (a gRPC port) said so."""
    if isinstance(exc, aiohttp.ClientConnectionError):
        return RuntimeError(f"{method} {url}: UNAVAILABLE: {_one_line(str(exc))}")
    return RuntimeError(f"{method} {url}: the answer is not HTTP/1.1 (a gRPC port?): {_one_line(str(exc))}")


async def _get_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            text = await response.text()
    except aiohttp.ClientError as exc:  # named like gRPC's, as the per-request outcomes are
        raise _unreachable("GET", url, exc) from exc
    if response.status != 200:
        raise RuntimeError(f"GET {url}: HTTP {response.status}: {_error_detail(text, response.reason)}")
    try:
        return json.loads(text)
    except ValueError:
        raise RuntimeError(f"GET {url}: the answer is not JSON: {_one_line(text)!r}") from None


async def model_metadata(session: aiohttp.ClientSession, base: str, model: str, version: str,
                         timeout_s: float = 10.0) -> ModelMetadata:
    """The model's inputs, from ``GET /v2/models/{model}[/versions/{version}]`` on ``base`` (http(s)://host:port,
    ``loadtest.connections.http_base``)."""
    url = f"{base}{model_path(model, version)}"
    body = await _get_json(session, url, timeout_s)
    try:
        inputs = tuple(TensorMetadata(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                       for t in body["inputs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeError(f"GET {url}: the model metadata has no usable inputs ({exc!r})") from None
    return ModelMetadata(inputs)


async def infer_once(session: aiohttp.ClientSession, base: str, request: HttpRequest, timeout_s: float,
                     fatal: frozenset[int]) -> None:
    """POST ``request`` to ``base`` (http(s)://host:port) once; raises RuntimeError with the server's answer when it cannot be
    reached or answers a status in ``fatal``."""
    url = f"{base}{request.path}"
    try:
        async with session.post(url, data=request.body, headers=dict(request.headers),
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            text = await response.text(errors="replace")
    except TimeoutError:
        return  # a slow answer is what a load test measures, not a reason not to run it
    except aiohttp.ClientError as exc:
        raise _unreachable("POST", url, exc) from exc
    if response.status in fatal:
        raise RuntimeError(f"POST {url}: HTTP {response.status}: {_error_detail(text, response.reason)}")


async def batch_statistics(session: aiohttp.ClientSession, base: str, model: str, version: str,
                           timeout_s: float = 10.0) -> Batch | None:
    """The model's batch statistics from ``GET .../stats``, or None when the server has none to give."""
    try:
        body = await _get_json(session, f"{base}{model_path(model, version)}/stats", timeout_s)
        by_size: dict[int, int] = {}
        inferences = executions = 0
        for stats in body["model_stats"]:
            # Counts are JSON numbers (Triton, fleetserve) or strings (protobuf's JSON mapping of uint64).
            inferences += int(stats.get("inference_count", 0))
            executions += int(stats.get("execution_count", 0))
            for b in stats.get("batch_stats", ()):
                size = int(b["batch_size"])
                by_size[size] = by_size.get(size, 0) + int(b["compute_infer"]["count"])
    except (RuntimeError, aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
        return None
    return Batch(inferences, executions, tuple(sorted(by_size.items())))
