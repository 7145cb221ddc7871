"""A full Triton config for an ONNX model, as Triton's docs and its complete configs write it, on a real server.

Dynamic batching, instance groups, a version policy, warm-up samples, a GPU accelerator with Triton's
parameters, the onnxruntime backend's parameters and the fields Triton writes at their defaults into every
complete config: the model loads unchanged, serves the versions its policy selects over gRPC and HTTP with
the model's own results, and reports its config back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc
import tritonclient.http as th

from model_store.testing import ModelSpec, reference_outputs, write_dense_model, write_model_repository
from server.testing import ServerProcess

CONFIG = """
name: "ranker"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
runtime: ""
max_batch_size: 16
version_policy: { latest: { num_versions: 2 } }
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    format: FORMAT_NONE
    dims: [ 16 ]
    is_shape_tensor: false
    allow_ragged_batch: false
    optional: false
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 8 ]
    is_shape_tensor: false
  }
]
batch_input: []
batch_output: []
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
  preserve_ordering: false
  default_queue_policy { max_queue_size: 64 }
}
instance_group [
  { name: "ranker_0" count: 2 kind: KIND_GPU gpus: [ 0 ] passive: false host_policy: "" }
]
optimization {
  priority: PRIORITY_DEFAULT
  graph: { level: 1 }
  execution_accelerators {
    gpu_execution_accelerator: [
      { name: "cuda"
        parameters { key: "cudnn_conv_algo_search" value: "HEURISTIC" }
        parameters { key: "arena_extend_strategy" value: "kSameAsRequested" } }
    ]
  }
  input_pinned_memory { enable: true }
  output_pinned_memory { enable: true }
  gather_kernel_buffer_threshold: 0
  eager_batching: false
}
model_warmup [
  {
    name: "full_batch"
    batch_size: 8
    count: 2
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
  },
  {
    name: "one_row"
    batch_size: 1
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] random_data: true } }
  }
]
model_transaction_policy { decoupled: false }
default_model_filename: "model.onnx"
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "execution_mode" value: { string_value: "0" } }
parameters { key: "enable_mem_arena" value: { string_value: "1" } }
"""


def _write_version(folder: Path) -> Path:
    return write_dense_model(folder, in_features=16, out_features=8, seed=int(folder.name))  # weights per version


def test_a_full_triton_onnx_config_loads_unchanged_and_serves(tmp_path: Path) -> None:
    repo = write_model_repository(tmp_path, {"ranker": ModelSpec(_write_version, config=CONFIG, versions=(1, 2, 3))})
    rows = np.random.default_rng(7).standard_normal((12, 16)).astype(np.float32)
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        states = {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert states[("ranker", "3")] == ("READY", ""), states
        assert states[("ranker", "2")] == ("READY", ""), states
        assert client.is_model_ready("ranker", "3") and not client.is_model_ready("ranker", "1")

        def infer(version: str, row: int) -> np.ndarray:
            inp = tc.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(rows[row : row + 1])
            return client.infer("ranker", [inp], model_version=version).as_numpy("OUTPUT0")

        with ThreadPoolExecutor(8) as pool:  # concurrent single rows: the dynamic batcher merges them
            latest = np.concatenate(list(pool.map(lambda r: infer("", r), range(12))))
        expected = reference_outputs(repo / "ranker" / "3", {"INPUT0": rows})["OUTPUT0"]
        np.testing.assert_allclose(latest, expected, rtol=1e-2, atol=1e-3)
        older = reference_outputs(repo / "ranker" / "2", {"INPUT0": rows[:1]})["OUTPUT0"]
        np.testing.assert_allclose(infer("2", 0), older, rtol=1e-2, atol=1e-3)

        http = th.InferenceServerClient(server.http_address)
        inp = th.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(rows[:2])
        np.testing.assert_allclose(http.infer("ranker", [inp]).as_numpy("OUTPUT0"), expected[:2], rtol=1e-2, atol=1e-3)
        http.close()

        config = client.get_model_config("ranker").config
        assert config.max_batch_size == 16
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
        assert [(g.count, list(g.gpus)) for g in config.instance_group] == [(2, [0])]
        assert config.version_policy.latest.num_versions == 2
        assert [s.name for s in config.model_warmup] == ["full_batch", "one_row"]
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert (accelerator.name, accelerator.parameters["cudnn_conv_algo_search"]) == ("cuda", "HEURISTIC")
        client.close()
    assert "enable_mem_arena, execution_mode" in server.log  # the backend's parameters fleetserve does not apply
