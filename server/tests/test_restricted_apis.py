"""Restricted APIs (Triton's --grpc-restricted-protocol and --http-restricted-api): a real server whose
operator APIs need a header, driven by tritonclient, grpc's health stub and requests."""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from model_store.examples import REPOSITORY
from server.http_server import rest_app
from server.http_service import HttpService
from server.protos import grpc_service_pb2 as pb
from server.restrictions import GRPC_METHODS, http_category
from server.testing import ServerProcess, scrape_metrics

ADMIN = {"triton-grpc-protocol-admin-key": "s3cret:=x"}  # a value may hold ':' and '='
ADMIN_HTTP = {"admin-key": "s3cret:=x"}
PROBE = {"triton-grpc-protocol-probe-key": "p"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    with ServerProcess(root, "--model-control-mode", "explicit", "--load-model", "add_one",
                       "--grpc-restricted-protocol=model-repository,logging,trace:admin-key=s3cret:=x",
                       "--grpc-restricted-protocol=health:probe-key=p",
                       "--http-restricted-api=model-repository,logging,shared-memory:admin-key=s3cret:=x") as proc:
        yield proc


def add_one(client: tc.InferenceServerClient, headers: dict | None = None) -> np.ndarray:
    tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
    return client.infer("add_one", [tensor], headers=headers).as_numpy("OUTPUT0")


def test_grpc_operator_apis_need_the_header_and_inference_stays_open(server) -> None:
    with tc.InferenceServerClient(server.grpc_address) as client:
        np.testing.assert_array_equal(add_one(client), np.ones((1, 16), np.float32))  # not restricted
        for call in (client.get_model_repository_index, client.get_log_settings, client.get_trace_settings,
                     lambda **kw: client.unload_model("add_one", **kw)):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
            assert ("This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
                    in refused.value.message())
            with pytest.raises(InferenceServerException, match="restricted"):
                call(headers={"triton-grpc-protocol-admin-key": "s3cret"})  # another value
        assert client.is_model_ready("add_one", headers=PROBE)  # the refused unload did nothing
        assert [m.name for m in client.get_model_repository_index(headers=ADMIN).models] == ["add_one"]
        assert client.get_log_settings(headers=ADMIN, as_json=True)["settings"]


def test_a_restricted_health_group_covers_grpc_health_too(server) -> None:
    with tc.InferenceServerClient(server.grpc_address) as client:
        with pytest.raises(InferenceServerException, match="triton-grpc-protocol-probe-key"):
            client.is_server_live()
        assert client.is_server_live(headers=PROBE)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10,
                           metadata=(("triton-grpc-protocol-probe-key", "p"),))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_rest_operator_apis_answer_403_without_the_header(server) -> None:
    base = f"{server.http_url}/v2"
    for method, path in (("GET", "/logging"), ("POST", "/repository/index"), ("GET", "/systemsharedmemory/status"),
                         ("POST", "/repository/models/add_one/unload")):
        reply = requests.request(method, base + path, timeout=10)
        assert reply.status_code == 403, (path, reply.text)
        assert reply.json() == {"error": "This API is restricted, expecting header 'admin-key'"}
        assert requests.request(method, base + path, headers={"admin-key": "wrong"}, timeout=10).status_code == 403
    assert requests.get(base + "/logging", headers=ADMIN_HTTP, timeout=10).status_code == 200
    assert requests.get(base + "/health/ready", timeout=10).status_code == 200  # REST's health is not restricted
    assert requests.get(base + "/trace/setting", timeout=10).status_code == 200  # restricted over gRPC only
    assert requests.get(base + "/models/add_one/ready", timeout=10).status_code == 200  # not unloaded


def test_a_restricted_inference_api_covers_the_stream(tmp_path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    with ServerProcess(root, "--grpc-restricted-protocol=inference:infer-key=v") as proc:
        with tc.InferenceServerClient(proc.grpc_address) as client:
            with pytest.raises(InferenceServerException) as refused:
                add_one(client)
            assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
            np.testing.assert_array_equal(add_one(client, {"triton-grpc-protocol-infer-key": "v"}),
                                          np.ones((1, 16), np.float32))
            for headers, ok in ((None, False), ({"triton-grpc-protocol-infer-key": "v"}, True)):
                answers: queue.Queue = queue.Queue()
                client.start_stream(callback=lambda result, error: answers.put(error), headers=headers)
                tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
                tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
                try:
                    client.async_stream_infer("add_one", [tensor])
                except InferenceServerException:  # refused at once: the callback has the reason
                    pass
                error = answers.get(timeout=10)
                client.stop_stream()
                assert (error is None) == ok, error
                if not ok:
                    assert "expecting header 'triton-grpc-protocol-infer-key'" in str(error)


def test_every_rpc_and_every_rest_route_has_a_category() -> None:
    methods = {f"/inference.GRPCInferenceService/{m.name}"
               for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert methods <= set(GRPC_METHODS)
    app = rest_app(_service())
    for resource in app.router.resources():
        path = resource.canonical.replace("{model}", "m").replace("{version}", "1").replace("{tail}", "/status")
        path = path.replace("{region}", "r").replace("{repository}", "repo")
        assert http_category(path) is not None, resource.canonical
    assert http_category("/v2/models/m/versions/1/infer") == "inference"
    assert http_category("/v2/models/stats") == "statistics" and http_category("/v2/models/m") == "metadata"
    assert http_category("/v2/models/m/trace/setting") == "trace" and http_category("/v2/nothing") is None


def _service() -> HttpService:
    from model_store.registry import ModelRegistry
    from model_store.repository import ModelRepository
    from server.dataplane import ControlMode, DataPlane

    async def never(source, version):  # nothing is loaded: only the routes are read
        raise AssertionError("not loaded")

    registry = ModelRegistry(ModelRepository(REPOSITORY), never)
    dataplane = DataPlane(registry, version="0", control_mode=ControlMode.NONE, is_ready=lambda: True)
    return HttpService(dataplane, max_body_bytes=1024, body_idle_timeout_s=1.0)


@pytest.mark.parametrize("args, message", [
    (["--grpc-restricted-protocol=model-reposit:k=v"], "unknown restricted protocol 'model-reposit'"),
    (["--grpc-restricted-protocol=health,metadata:k1=v", "--grpc-restricted-protocol=health:k2=v"],
     "protocol 'health' can not be specified in multiple config groups"),
    (["--http-restricted-api=logging"], "--http-restricted-api takes CATEGORIES:KEY=VALUE"),
    (["--http-restricted-api=logging:=v"], "--http-restricted-api takes CATEGORIES:KEY=VALUE"),
    (["--http-restricted-api=logging:a b=v"], "the header key must be letters, digits"),
])
def test_restrictions_that_do_not_parse_are_refused_before_anything_starts(args, message, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_refusals_are_counted_by_transport_and_category(server) -> None:
    def refused() -> dict[tuple[str, str], float]:
        samples = scrape_metrics(server.metrics_url)
        return {(dict(labels)["transport"], dict(labels)["category"]): value
                for (name, labels), value in samples.items() if name == "fleetserve_restricted_requests_refused_total"}

    before = refused()
    with tc.InferenceServerClient(server.grpc_address) as client:
        with pytest.raises(InferenceServerException):
            client.get_log_settings()
        client.get_log_settings(headers=ADMIN)  # allowed: not counted
    assert requests.post(f"{server.http_url}/v2/repository/index", timeout=10).status_code == 403
    after = refused()
    assert after[("grpc", "logging")] - before.get(("grpc", "logging"), 0) == 1
    assert after[("http", "model-repository")] - before.get(("http", "model-repository"), 0) == 1
