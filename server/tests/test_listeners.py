"""Triton's --allow-grpc, --allow-http, --allow-metrics and --grpc-address, --http-address, --metrics-address: a
transport left off opens no port, each listener binds its own address, and settings that leave nothing to serve
requests are refused."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tc

from model_store.examples import REPOSITORY
from server.testing import ServerProcess


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    return root


def listening(log: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"(gRPC|HTTP|metrics) listening on (\S+):\d+", log)}


def test_rest_and_metrics_off_leave_only_grpc(repo: Path) -> None:
    with ServerProcess(repo, "--allow-http=false", "--allow-metrics", "false") as server:
        assert listening(server.log) == {"gRPC": "127.0.0.1"}
        assert server.http_port == 0 and server.metrics_port == 0
        with tc.InferenceServerClient(server.grpc_address) as client:
            tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
            assert client.infer("add_one", [tensor]).as_numpy("OUTPUT0")[0, 0] == 1.0
            assert client.is_server_ready()


def test_grpc_off_leaves_rest(repo: Path) -> None:
    with ServerProcess(repo, "--allow-grpc", "false") as server:
        assert set(listening(server.log)) == {"HTTP", "metrics"} and server.grpc_port == 0
        assert requests.get(f"{server.http_url}/v2/health/ready", timeout=10).status_code == 200


def test_each_listener_binds_its_own_address(repo: Path) -> None:
    with ServerProcess(repo, "--host", "0.0.0.0", "--grpc-address", "127.0.0.1",
                       "--http-address", "127.0.0.2", "--metrics-address", "127.0.0.3") as server:
        assert listening(server.log) == {"gRPC": "127.0.0.1", "HTTP": "127.0.0.2", "metrics": "127.0.0.3"}
        assert requests.get(f"http://127.0.0.2:{server.http_port}/v2/health/live", timeout=10).status_code == 200
        with pytest.raises(requests.ConnectionError):  # not on another loopback address
            requests.get(f"http://127.0.0.1:{server.http_port}/v2/health/live", timeout=10)
        assert requests.get(f"http://127.0.0.3:{server.metrics_port}/metrics", timeout=10).status_code == 200


def serve(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", str(repo), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("args, message", [
    (["--allow-grpc=false", "--allow-http=false"], "nothing would serve requests"),
    (["--allow-grpc=false", "--redis-url", "redis://127.0.0.1:1/0"], "fleet mode (--redis-url) needs gRPC"),
    (["--allow-metrics=maybe"], "expected true or false"),
])
def test_settings_that_leave_nothing_to_serve_are_refused(repo: Path, args: list[str], message: str) -> None:
    done = serve(repo, *args)
    assert done.returncode == 2 and message in done.stdout, done.stdout


def test_an_address_in_use_names_the_listener_and_its_address(repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(repo, "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
                     "--http-address", "127.0.0.2", "--http-port", str(port))
    assert done.returncode == 1 and f"cannot listen for HTTP on 127.0.0.2:{port}" in done.stdout, done.stdout


def test_the_tls_files_of_a_listener_left_off_are_not_read(repo: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    with ServerProcess(repo, "--allow-http=false", "--http-use-ssl", "--http-server-cert", missing,
                       "--http-server-key", missing) as server:
        assert listening(server.log) == {"gRPC": "127.0.0.1", "metrics": "127.0.0.1"}
