"""A real fleetserve for the ops checks: a small repository (one model fails to load) and its metrics port."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th

from model_store.testing import ModelSpec, write_add_constant_model, write_dense_model, write_model_repository
from server.testing import ServerProcess

OPS = Path(__file__).resolve().parents[1]
BATCHING = "max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"
# A latency objective, so the scheduler's objective-only gauges are exported too.
OBJECTIVE = 'max_batch_size: 32\ndynamic_batching { }\nparameters { key: "latency_slo_ms" value { string_value: "500" } }\n'


@pytest.fixture(scope="session")
def fleetserve(tmp_path_factory: pytest.TempPathFactory):
    repo = write_model_repository(tmp_path_factory.mktemp("ops-repo"), {
        "dense": ModelSpec(write_dense_model, config=BATCHING),
        "add_one": ModelSpec(partial(write_add_constant_model, features=4), config=OBJECTIVE),
        "broken": ModelSpec(lambda p: (p / "model.onnx").write_bytes(b"not onnx")),
    })
    with ServerProcess(repo) as server:
        yield server


@pytest.fixture(scope="session")
def tool():
    """The path of a Prometheus binary (Debian's prometheus package); missing fails, as the test command installs it."""
    def find(name: str) -> str:
        path = shutil.which(name)
        assert path, f"{name} not found: install Debian's prometheus package (apt-get install -y prometheus), see README"
        return path
    return find


def send_traffic(server: ServerProcess, rounds: int) -> None:
    """``rounds`` x (4 good gRPC, 4 good HTTP batches of 1-3 rows, 1 invalid HTTP request) to dense."""
    rng = np.random.default_rng(0)
    grpc_client = tc.InferenceServerClient(server.grpc_address)
    http_client = th.InferenceServerClient(server.http_address)
    try:
        for i in range(rounds):
            for client, module in ((grpc_client, tc), (http_client, th)):
                for rows in (1, 2, 3, 1):
                    inp = module.InferInput("INPUT0", [rows, 16], "FP32")
                    inp.set_data_from_numpy(rng.standard_normal((rows, 16), dtype=np.float32))
                    client.infer("dense", [inp])
            bad = th.InferInput("INPUT0", [1, 15], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 15), np.float32))
            with pytest.raises(th.InferenceServerException):
                http_client.infer("dense", [bad])
    finally:
        grpc_client.close()
        http_client.close()


@pytest.fixture(scope="session")
def traffic():
    return send_traffic
