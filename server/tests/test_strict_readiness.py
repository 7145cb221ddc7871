"""--strict-readiness (Triton's): the server is ready only while every model it loaded serves. Real servers on a
repository with a model whose file is not ONNX; readiness read over HTTP, gRPC, grpc.health.v1 and /metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
import requests
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_store.examples import REPOSITORY
from server.testing import ServerProcess, scrape_metrics, wait_until


def repository(root: Path) -> Path:
    """add_one, and "broken": add_one's folder with a model file that is not ONNX."""
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    return root


def readiness(server: ServerProcess) -> dict[str, object]:
    """The server's readiness as each interface reports it."""
    with tc.InferenceServerClient(server.grpc_address) as client:
        grpc_ready = client.is_server_ready()
        model_ready = client.is_model_ready("add_one")
    with grpc.insecure_channel(server.grpc_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    return {
        "http": requests.get(f"{server.http_url}/v2/health/ready", timeout=10).status_code,
        "grpc": grpc_ready,
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        "metric": scrape_metrics(server.metrics_url)[("fleetserve_server_ready", frozenset())],
        "add_one": model_ready,
    }


READY = {"http": 200, "grpc": True, "health": "SERVING", "metric": 1.0, "add_one": True}
NOT_READY = {"http": 503, "grpc": False, "health": "NOT_SERVING", "metric": 0.0, "add_one": True}


def test_by_default_a_model_that_failed_to_load_leaves_the_server_ready(tmp_path: Path) -> None:
    with ServerProcess(repository(tmp_path / "repo")) as server:
        assert readiness(server) == READY


def test_strict_readiness_holds_the_server_unready_until_the_model_loads(tmp_path: Path) -> None:
    root = repository(tmp_path / "repo")
    with ServerProcess(root, "--strict-readiness", "--model-control-mode", "poll",
                       "--repository-poll-secs", "0.2") as server:
        assert readiness(server) == NOT_READY  # add_one serves all the same
        assert "not ready (--strict-readiness): model(s) broken not ready" in server.log
        shutil.copyfile(REPOSITORY / "add_one" / "1" / "model.onnx", root / "broken" / "1" / "model.onnx")
        assert wait_until(lambda: readiness(server) == READY, timeout_s=20), readiness(server)
        assert server.wait_for_log("ready again: every model is ready")


def test_strict_readiness_returns_when_the_failed_model_is_unloaded(tmp_path: Path) -> None:
    with ServerProcess(repository(tmp_path / "repo"), "--strict-readiness=true", "--model-control-mode", "explicit",
                       "--load-model", "add_one", "--load-model", "broken") as server:
        assert readiness(server) == NOT_READY
        with tc.InferenceServerClient(server.grpc_address) as client:
            client.unload_model("broken")
        assert wait_until(lambda: readiness(server) == READY, timeout_s=10), readiness(server)


@pytest.mark.parametrize("value", ["false", "0"])
def test_strict_readiness_off_spelled_as_triton_does(tmp_path: Path, value: str) -> None:
    with ServerProcess(repository(tmp_path / "repo"), f"--strict-readiness={value}") as server:
        assert readiness(server) == READY
