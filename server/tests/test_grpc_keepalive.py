"""gRPC keepalive (Triton's --grpc-keepalive-* and --grpc-http2-* flags): a client that keeps an idle stream
alive with frequent pings (tritonclient's KeepAliveOptions) is cut off by gRPC's default ping policy
(GOAWAY too_many_pings), and served once the server is told to accept its pings."""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from model_store.examples import REPOSITORY
from server.grpc_options import GrpcKeepalive, server_options
from server.settings import Settings
from server.testing import ServerProcess

IDLE_S = 4.0  # a 1 s keepalive sends three idle pings: gRPC's default tolerates two strikes


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    return root


def idle_stream_answers(address: str) -> bool:
    """Whether a stream held open with 1 s keepalive pings still answers after ``IDLE_S`` of silence."""
    keepalive = tc.KeepAliveOptions(keepalive_time_ms=1000, keepalive_timeout_ms=1000,
                                    keepalive_permit_without_calls=True, http2_max_pings_without_data=0)
    answers: queue.Queue = queue.Queue()
    tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with tc.InferenceServerClient(address, keepalive_options=keepalive) as client:
        client.start_stream(callback=lambda result, error: answers.put(error))
        try:
            client.async_stream_infer("add_one", [tensor])
            assert answers.get(timeout=10) is None
            time.sleep(IDLE_S)
            try:
                client.async_stream_infer("add_one", [tensor])
            except InferenceServerException:  # the stream ended meanwhile
                return False
            return answers.get(timeout=10) is None
        finally:
            client.stop_stream()


def test_by_default_a_client_pinging_an_idle_stream_every_second_is_cut_off(repo: Path) -> None:
    with ServerProcess(repo) as server:
        assert not idle_stream_answers(server.grpc_address)


def test_the_http2_flags_let_such_a_client_keep_its_stream(repo: Path) -> None:
    with ServerProcess(repo, "--grpc-keepalive-permit-without-calls=true",
                       "--grpc-http2-min-recv-ping-interval-without-data", "500") as server:
        assert idle_stream_answers(server.grpc_address)


def test_each_flag_sets_its_grpc_channel_argument() -> None:
    keepalive = GrpcKeepalive(time_ms=1, timeout_ms=2, permit_without_calls=True, max_pings_without_data=3,
                              min_recv_ping_interval_without_data_ms=4, max_ping_strikes=5)
    options = dict(server_options(Settings(grpc_keepalive=keepalive)))
    assert {k: v for k, v in options.items() if "keepalive" in k or "ping" in k} == {
        "grpc.keepalive_time_ms": 1, "grpc.keepalive_timeout_ms": 2, "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 3, "grpc.http2.min_ping_interval_without_data_ms": 4,
        "grpc.http2.max_ping_strikes": 5}
    defaults = dict(server_options(Settings()))  # gRPC's own defaults, as Triton's
    assert defaults["grpc.keepalive_time_ms"] == 7_200_000 and defaults["grpc.keepalive_timeout_ms"] == 20_000
    assert defaults["grpc.http2.min_ping_interval_without_data_ms"] == 300_000


@pytest.mark.parametrize("args, message", [
    (["--grpc-keepalive-time", "0"], "--grpc-keepalive-time must be an integer in 1..2147483647, got 0"),
    (["--grpc-http2-max-ping-strikes", "-1"], "--grpc-http2-max-ping-strikes must be an integer in 0..2147483647"),
    (["--grpc-http2-min-recv-ping-interval-without-data", "-5"],
     "--grpc-http2-min-recv-ping-interval-without-data must be an integer in 0..2147483647"),
    (["--grpc-keepalive-permit-without-calls=sometimes"], "expected true or false, got 'sometimes'"),
])
def test_keepalive_values_out_of_range_are_refused(repo: Path, args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", str(repo), *args],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and message in done.stderr, done.stderr
