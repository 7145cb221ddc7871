"""fleetserve serving from remote repositories: a real S3-compatible server and a real HTTP server on loopback.

The whole path: `fleetserve serve --model-repository s3://... --s3-endpoint-url ...` (or http://...)
mirrors the repository into --model-cache-dir, loads it, serves it over gRPC, and in poll mode
picks up what changes in the bucket; a corrupt download shows as UNAVAILABLE with its reason.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

from model_store.remote_store import write_index
from model_store.remote_testing import CREDENTIALS, HttpServer, S3Server
from model_store.testing import ModelSpec, write_add_constant_model, write_dense_model, write_model_repository
from server.testing import ServerProcess, wait_until

ALL_VERSIONS = "version_policy: { all { } }"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch):
    for key, value in CREDENTIALS.items():  # botocore reads them, here and in the server process
        monkeypatch.setenv(key, value)


def ones(features: int = 16) -> list[tc.InferInput]:
    data = tc.InferInput("INPUT0", [1, features], "FP32")
    data.set_data_from_numpy(np.ones((1, features), np.float32))
    return [data]


def index(client: tc.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def test_s3_repository_serves_picks_up_new_versions_and_reports_a_corrupt_download(tmp_path: Path):
    local = write_model_repository(tmp_path / "repo", {
        "add": ModelSpec(lambda p: write_add_constant_model(p, constant=1.0), config=ALL_VERSIONS),
        "dense": ModelSpec(write_dense_model),
    })
    with S3Server() as s3:
        s3.upload(local, "prod")
        cache = tmp_path / "cache"
        with ServerProcess(s3.url("prod"), "--s3-endpoint-url", s3.endpoint_url, "--model-cache-dir", str(cache),
                           "--model-control-mode", "poll", "--repository-poll-secs", "0.5") as server:
            client = tc.InferenceServerClient(server.grpc_address)
            out = client.infer("add", ones()).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(out, np.full((1, 16), 2.0, np.float32))
            assert client.is_model_ready("dense")
            assert "downloaded 3 files" in server.log

            # A new version appears in the bucket: poll mode downloads it and serves it.
            write_add_constant_model(local / "add" / "2", constant=10.0)
            s3.upload(local / "add" / "2", "prod/add/2")
            assert wait_until(lambda: index(client).get(("add", "2")) == ("READY", ""), 30), index(client)
            out = client.infer("add", ones()).as_numpy("OUTPUT0")  # the latest version
            np.testing.assert_array_equal(out, np.full((1, 16), 11.0, np.float32))
            assert client.is_model_ready("add", "1")

            # Version 3 arrives with an index that does not match what the store serves.
            write_add_constant_model(local / "add" / "3", constant=100.0)
            doc = json.loads(write_index(local).read_text())
            for entry in doc["files"]:
                if entry["path"] == "add/3/model.onnx":
                    entry["size"] -= 7
            (local / "index.json").write_text(json.dumps(doc))
            s3.upload(local, "prod")
            assert wait_until(lambda: index(client).get(("add", "3"), ("",))[0] == "UNAVAILABLE", 30), index(client)
            state, reason = index(client)[("add", "3")]
            assert reason.startswith("version 3 could not be downloaded: s3://models/prod/add/3/model.onnx: "
                                     "size mismatch: the index says"), reason
            with pytest.raises(tc.InferenceServerException) as err:
                client.infer("add", ones(), model_version="3")
            assert err.value.status() == "StatusCode.UNAVAILABLE" and "size mismatch" in err.value.message()
            out = client.infer("add", ones(), model_version="2").as_numpy("OUTPUT0")  # the others serve on
            np.testing.assert_array_equal(out, np.full((1, 16), 11.0, np.float32))

            # The model leaves the bucket: poll mode unloads it.
            s3.delete("prod/dense")
            doc["files"] = [e for e in doc["files"] if not e["path"].startswith("dense/")]
            s3.put(json.dumps(doc).encode(), "prod/index.json")
            assert wait_until(lambda: not client.is_model_ready("dense"), 30), index(client)
            client.close()
        assert server.proc is not None and server.proc.returncode == 0


def test_http_repository_serves_from_its_index(tmp_path: Path):
    local = write_model_repository(tmp_path / "repo", {
        "dense": ModelSpec(write_dense_model),
        "broken": ModelSpec(write_add_constant_model),
    })
    doc = json.loads(write_index(local).read_text())
    for entry in doc["files"]:
        if entry["path"].startswith("broken/"):
            entry["sha256"] = "f" * 64
    (local / "index.json").write_text(json.dumps(doc))
    with HttpServer(local) as http:
        with ServerProcess(http.url, "--model-cache-dir", str(tmp_path / "cache")) as server:
            client = tc.InferenceServerClient(server.grpc_address)
            assert client.infer("dense", ones()).as_numpy("OUTPUT0").shape == (1, 8)
            state, reason = index(client)[("broken", "1")]
            assert state == "UNAVAILABLE" and "broken/1/model.onnx: sha256 mismatch: the index says ffff" in reason
            client.close()


def test_an_unreachable_store_with_an_empty_cache_stops_the_server_with_the_reason(tmp_path: Path):
    server = ServerProcess("http://127.0.0.1:9/models", "--model-cache-dir", str(tmp_path / "cache"))
    try:
        with contextlib.suppress(RuntimeError):
            server.start()  # its ports open, then the first sync fails and it exits instead of turning ready
        assert server.proc is not None and server.proc.wait(60) == 1
        assert "fleetserve ready" not in server.log
    finally:
        server.stop()
    assert "Traceback" not in server.log  # one line says why, as the last line
    assert ("cannot start: model repository http://127.0.0.1:9/models: cannot read "
            "http://127.0.0.1:9/models/index.json") in server.lines[-1]


def test_a_remote_repository_url_is_checked_at_the_command_line(tmp_path: Path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", "ftp://host/models"],
                            capture_output=True, text=True, timeout=60, cwd=root)
    assert result.returncode == 2 and "unsupported scheme 'ftp'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", str(tmp_path),
                             "--s3-endpoint-url", "http://127.0.0.1:9000"], capture_output=True, text=True,
                            timeout=60, cwd=root)
    assert result.returncode == 2 and "--s3-endpoint-url applies to s3:// model repositories only" in result.stderr
