"""Readiness drops the moment shutdown starts, on HTTP and gRPC alike; JSON logs carry one line per request."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import requests
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_store.testing import ModelSpec, write_dense_model, write_model_repository
from server.testing import ServerProcess


def ready(server: ServerProcess) -> tuple[int, bool, int]:
    """HTTP ready status, OIP ServerReady, grpc.health.v1 status."""
    http = requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
    client = tc.InferenceServerClient(server.grpc_address)
    try:
        oip = client.is_server_ready()
    finally:
        client.close()
    return http, oip, health


def infer_ok(server: ServerProcess, request_id: str) -> bool:
    body = {"id": request_id, "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
    return requests.post(server.http_url + "/v2/models/dense/infer", json=body, timeout=5).status_code == 200


def test_readiness_drops_as_soon_as_shutdown_starts_and_traffic_still_flows(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    with ServerProcess(repo, "--shutdown-delay", "1.5", "--log-format", "json") as server:
        assert ready(server) == (200, True, health_pb2.HealthCheckResponse.SERVING)
        assert requests.get(server.http_url + "/v2/health/live", timeout=5).json() == {"live": True}
        assert infer_ok(server, "before")
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200:
            assert time.monotonic() - signalled < 1.0, "readiness still 200 a second after SIGTERM"
            time.sleep(0.01)
        assert ready(server) == (503, False, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert requests.get(server.http_url + "/v2/health/ready", timeout=5).json() == {"ready": False}
        assert requests.get(server.http_url + "/v2/health/live", timeout=5).status_code == 200
        assert infer_ok(server, "during")  # not ready, yet in-flight and late requests are still served
        assert server.proc.wait(30) == 0  # one signal: a clean exit after the delay and the drain
        assert server.stop() == 0

    records = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert len(records) == len(server.lines), "with --log-format json every line is a JSON object"
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    requests_logged = {r["request_id"]: r for r in records if r["logger"] == "fleetserve.request"}
    assert set(requests_logged) == {"before", "during"}
    line = requests_logged["before"]
    assert (line["model"], line["version"], line["outcome"]) == ("dense", "1", "OK") and line["latency_ms"] > 0
    messages = [r["message"] for r in records]
    assert messages.index("fleetserve stopped") > next(i for i, m in enumerate(messages) if "not ready" in m)


def test_plain_text_logs_have_no_per_request_lines(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
        client.infer("dense", [inp], request_id="quiet")
        client.close()
    assert "quiet" not in server.log and "fleetserve.request" not in server.log


def test_json_request_log_cuts_long_request_ids_and_the_reply_still_echoes_them(tmp_path: Path):
    """A client choosing a megabyte id (or model name) per request cannot make each log line a megabyte."""
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    http_id, grpc_id, model = "h" * 1_000_000, "g" * 1_000_000, "m" * 5_000
    with ServerProcess(repo, "--log-format", "json") as server:
        body = {"id": http_id, "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
        reply = requests.post(server.http_url + "/v2/models/dense/infer", json=body, timeout=30)
        assert reply.status_code == 200 and reply.json()["id"] == http_id
        client = tc.InferenceServerClient(server.grpc_address)
        try:
            inp = tc.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
            assert client.infer("dense", [inp], request_id=grpc_id).get_response().id == grpc_id
            try:
                client.infer(model, [inp], request_id="unknown-model")
            except tc.InferenceServerException as exc:
                assert exc.status() == "StatusCode.NOT_FOUND"
            else:
                raise AssertionError("an unknown model was served")
        finally:
            client.close()
        assert server.wait_for_log('"request_id": "unknown-model"')
    logged = [json.loads(line) for line in server.lines if '"fleetserve.request"' in line]
    assert len(logged) == 3 and all(len(line) < 2_000 for line in server.lines if '"fleetserve.request"' in line)
    by_id = {r["request_id"][:1]: r for r in logged}
    assert by_id["h"]["request_id"] == "h" * 256 + "...[cut: 1000000 characters]"
    assert by_id["g"]["request_id"] == "g" * 256 + "...[cut: 1000000 characters]"
    assert by_id["u"]["model"] == "m" * 256 + "...[cut: 5000 characters]" and by_id["u"]["outcome"] == "NOT_FOUND"
