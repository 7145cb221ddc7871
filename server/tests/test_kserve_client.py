"""KServe's Python SDK (``kserve``: InferenceRESTClient, InferenceGRPCClient) against a real fleetserve.

The SDK cannot be imported here: its generated protocol module and tritonclient's (imported by this
pytest process) both register ``inference.*`` messages in protobuf's default descriptor pool, and the
second import fails. So server/tests/kserve_calls.py makes every call in one subprocess against the
session's server and records what each returned or raised; the tests below check those records, and
the README's KServe example runs in a subprocess of its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server.testing import ServerProcess

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"
TRANSPORTS = ("rest", "grpc")
# What each transport's error carries for a code: REST the HTTP status, gRPC the status code's name.
STATUS = {
    "NOT_FOUND": {"rest": 404, "grpc": "NOT_FOUND"},
    "INVALID_ARGUMENT": {"rest": 400, "grpc": "INVALID_ARGUMENT"},
    "DEADLINE_EXCEEDED": {"rest": 504, "grpc": "DEADLINE_EXCEEDED"},
    "UNIMPLEMENTED": {"rest": 501, "grpc": "UNIMPLEMENTED"},
    "UNAVAILABLE": {"rest": 503, "grpc": "UNAVAILABLE"},
}
# kserve_calls.TENSORS, flattened as the subprocess reports them (BYTES as text).
SENT = {
    "FP32": [0.5, -1.25, 3.0, pytest.approx(1e-3), 2.0, -0.0],
    "INT64": [1, -(2**63), 2**63 - 1],
    "BYTES": ["a", "", "h\u00e9llo"],
}
SHAPES = {"FP32": [2, 3], "INT64": [1, 3], "BYTES": [1, 3]}


def run_python(args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=HERE.parents[1])


@pytest.fixture(scope="module")
def calls(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("kserve") / "calls.json"
    proc = run_python([str(HERE / "kserve_calls.py"), server.grpc_address, server.http_url, str(out)])
    assert proc.returncode == 0, f"kserve_calls.py failed:\n{proc.stderr}\nserver log:\n{server.log[-4000:]}"
    return json.loads(out.read_text())


def ok(calls: dict[str, dict[str, Any]], name: str) -> Any:
    record = calls[name]
    assert "ok" in record, f"{name}: the client raised {record}"
    return record["ok"]


def error(calls: dict[str, dict[str, Any]], name: str, transport: str, code: str) -> str:
    """The message of the error the call raised, after checking it carries ``code``'s status."""
    record = calls[name]
    assert "ok" not in record, f"{name}: expected {code}, got a result {record['ok']}"
    got = record["status"] if transport == "rest" else record["code"]
    assert got == STATUS[code][transport], f"{name}: {record}"
    return str(record["message"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_and_model_readiness(calls: dict[str, dict[str, Any]], transport: str) -> None:
    assert ok(calls, f"{transport}.live") is True
    assert ok(calls, f"{transport}.ready") is True
    assert ok(calls, f"{transport}.model_ready") is True
    assert ok(calls, f"{transport}.model_ready.unknown") is False  # REST: the status says it (503); gRPC: ready=false
    assert ok(calls, f"{transport}.model_ready.unavailable") is False  # a model that failed to load


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata(calls: dict[str, dict[str, Any]], transport: str) -> None:
    """REST replies are read by the SDK's own v2 data model (pydantic); gRPC by its generated stub."""
    server = ok(calls, f"{transport}.server_metadata")
    assert server["name"] == "fleetserve" and "binary_tensor_data" in server["extensions"]
    model = ok(calls, f"{transport}.model_metadata")
    tensors = [{"name": n, "datatype": "FP32", "shape": [-1, 4]} for n in ("INPUT0", "INPUT1")]
    assert model["name"] == "simple" and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == tensors
    assert model["outputs"] == [dict(t, name=t["name"].replace("INPUT", "OUTPUT")) for t in tensors]


@pytest.mark.parametrize("encoding", ["json", "binary"])
@pytest.mark.parametrize("datatype", sorted(SENT))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_infer_round_trip(calls: dict[str, dict[str, Any]], transport: str, datatype: str, encoding: str) -> None:
    """JSON ``data`` or binary tensor data over REST; typed ``contents`` or ``raw_input_contents`` over
    gRPC. The request id comes back; INT64 extremes and non-ASCII text survive."""
    name = f"{transport}.infer.{datatype}.{encoding}"
    result = ok(calls, name)
    assert result["id"] == name
    assert result["model_name"] == f"identity_{datatype.lower()}"
    assert result["outputs"] == {"OUTPUT0": {"datatype": datatype, "shape": SHAPES[datatype],
                                             "data": SENT[datatype]}}
    if transport == "grpc":  # the SDK's REST client does not read model_version (InferResponse.from_bytes)
        assert result["model_version"] == "1"


@pytest.mark.parametrize("datatype", sorted(SENT))
@pytest.mark.parametrize("ask", ["binary_output", "binary_data_output"])
def test_rest_binary_outputs(calls: dict[str, dict[str, Any]], ask: str, datatype: str) -> None:
    """Outputs asked for as binary data (the output's ``binary_data``, or the request's
    ``binary_data_output``) are read back by the SDK from after the JSON header."""
    result = ok(calls, f"rest.infer.{datatype}.{ask}")
    assert result["outputs"]["OUTPUT0"]["data"] == SENT[datatype]


def test_request_ids(calls: dict[str, dict[str, Any]]) -> None:
    # The REST client makes up an id (a UUID) when given none; fleetserve echoes it. Over gRPC none is sent.
    assert re.fullmatch(r"[0-9a-f-]{36}", ok(calls, "rest.infer.no_id")["id"])
    assert ok(calls, "grpc.infer.no_id")["id"] == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_parameters(calls: dict[str, dict[str, Any]], transport: str) -> None:
    """Request parameters travel: unknown ones are accepted and unread, ``timeout`` (microseconds) bounds
    the wait in the queue, and sequence parameters are refused as unsupported, not ignored."""
    assert ok(calls, f"{transport}.infer.parameters")["outputs"]["OUTPUT0"]["data"] == [1.0, 1.0, 1.0]
    assert "queue timeout of 1.0 ms" in error(calls, f"{transport}.infer.queue_timeout", transport,
                                              "DEADLINE_EXCEEDED")
    assert "'sequence_id'" in error(calls, f"{transport}.infer.sequence_id", transport, "UNIMPLEMENTED")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_reach_the_caller(calls: dict[str, dict[str, Any]], transport: str) -> None:
    """Each error surfaces through the SDK with its status and fleetserve's message (REST: the SDK
    reads ``{"error": ...}`` into its HTTPStatusError)."""
    message = error(calls, f"{transport}.infer.unknown_model", transport, "NOT_FOUND")
    assert "unknown model 'no_such_model'" in message
    message = error(calls, f"{transport}.infer.wrong_shape", transport, "INVALID_ARGUMENT")
    assert "input 'INPUT0': shape [1, 4] does not match the model's [-1, 3]" in message
    message = error(calls, f"{transport}.infer.unavailable", transport, "UNAVAILABLE")
    assert "model 'corrupt' is not ready" in message


def test_grpc_model_version(calls: dict[str, dict[str, Any]]) -> None:
    result = ok(calls, "grpc.infer.version")
    assert result["model_version"] == "2" and result["outputs"]["OUTPUT0"]["data"] == [2.0] * 16
    assert "has no version 9" in error(calls, "grpc.infer.unknown_version", "grpc", "NOT_FOUND")


def readme_example() -> str:
    """The README's KServe example: the python block that imports kserve."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "from kserve import" in b]
    assert len(found) == 1, "README.md should hold one KServe example"
    return found[0]


def test_readme_example(server: ServerProcess, tmp_path: Path) -> None:
    code = readme_example()
    assert "localhost:8000" in code and "localhost:8001" in code
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://localhost:8000", server.http_url)
                      .replace("localhost:8001", server.grpc_address))
    proc = run_python([str(script)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "r1 [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]",
        "True",
        "r2 [[-1.0, 0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0]]",
    ]
