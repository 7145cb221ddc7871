"""Triton's reshape on a real server: clients send and receive the config's dims, the model runs its own shape,
and requests of the client shape batch together as usual."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from model_store.testing import (
    ModelSpec, reference_outputs, write_dense_model, write_lookup_model, write_model_repository,
)
from server.testing import ServerProcess

CONFIG = """max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 20000 }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4, 4 ] reshape: { shape: [ 16 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 4 ] reshape: { shape: [ 8 ] } } ]
model_warmup [ { name: "rows" batch_size: 8
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4, 4 ] random_data: true } } } ]
"""


def test_clients_see_the_configs_dims_and_the_model_runs_its_own_shape(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model, config=CONFIG)})
    rows = np.random.default_rng(0).normal(size=(6, 4, 4)).astype(np.float32)
    expected = reference_outputs(repo / "dense" / "1", {"INPUT0": rows.reshape(6, 16)})["OUTPUT0"].reshape(6, 2, 4)
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        metadata = client.get_model_metadata("dense")
        assert [list(t.shape) for t in (*metadata.inputs, *metadata.outputs)] == [[-1, 4, 4], [-1, 2, 4]]

        def one(i: int) -> np.ndarray:
            inp = tc.InferInput("INPUT0", [1, 4, 4], "FP32")
            inp.set_data_from_numpy(rows[i:i + 1])
            return client.infer("dense", [inp]).as_numpy("OUTPUT0")

        with ThreadPoolExecutor(6) as pool:  # six one-row requests within the queue delay: batched together
            answers = list(pool.map(one, range(6)))
        np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5, atol=1e-5)
        stats = client.get_inference_statistics("dense").model_stats[0]
        assert stats.inference_count == 6 and stats.execution_count < 6, stats

        body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4, 4],
                                       "data": rows[0].ravel().tolist()}]}).encode()
        request = urllib.request.Request(f"{server.http_url}/v2/models/dense/infer", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            output = json.load(reply)["outputs"][0]
        assert output["shape"] == [1, 2, 4]
        np.testing.assert_allclose(np.array(output["data"]).reshape(1, 2, 4), expected[:1], rtol=1e-5, atol=1e-5)

        wrong = tc.InferInput("INPUT0", [1, 16], "FP32")  # the model's own shape is not what the config serves
        wrong.set_data_from_numpy(rows[:1].reshape(1, 16))
        try:
            client.infer("dense", [wrong])
            raise AssertionError("a request in the model's shape was accepted")
        except tc.InferenceServerException as exc:
            assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "[-1, 4, 4]" in exc.message(), exc
        assert list(client.get_model_config("dense").config.input[0].reshape.shape) == [16]
        client.close()


def test_tritons_config_for_a_tensor_of_shape_batch_serves_it_as_batch_by_one(tmp_path: Path):
    """Triton's auto-complete writes `dims: [ 1 ] reshape: { shape: [ ] }` for an input of shape [batch]."""
    config = 'max_batch_size: 8\ninput [ { name: "INDEX" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
    repo = write_model_repository(tmp_path, {"lookup": ModelSpec(write_lookup_model, config=config)})
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        inp = tc.InferInput("INDEX", [3, 1], "INT64")
        inp.set_data_from_numpy(np.array([[2], [0], [1]], np.int64))
        assert client.infer("lookup", [inp]).as_numpy("OUT").tolist() == [[3.0], [1.0], [2.0]]
        client.close()
