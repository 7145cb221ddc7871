"""instance_group with gpus: each listed GPU gets its own instances (Triton's meaning), and on a machine
without a GPU provider the same config serves from one CPU session with every instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from model_store.complete import ModelTensor, build_config
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server.servable import kernel_options
from server.testing import ServerProcess, scrape_metrics

TWO_GPUS = "max_batch_size: 8\ninstance_group [ { count: 2, kind: KIND_GPU, gpus: [ 0, 1 ] } ]\n"


def config_of(text: str):
    tensor = [ModelTensor("INPUT0", np.dtype(np.float32), (None, 4))]
    return build_config("m", parse_config_text(text, "config.pbtxt"), tensor, tensor, "config.pbtxt",
                        stated=stated_fields(text))


def test_each_instance_is_given_its_own_gpu():
    options = kernel_options(config_of(TWO_GPUS))
    assert (options.instances, options.device_ids, options.allow_gpu) == (4, (0, 0, 1, 1), True)
    uneven = kernel_options(config_of(
        "instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 2 ] }, { count: 2, kind: KIND_GPU, gpus: [ 0 ] } ]"
    ))
    assert (uneven.instances, uneven.device_ids) == (3, (2, 0, 0))


def test_accelerator_parameters_become_the_kernels_provider_options():
    """Triton's TensorRT keys are mapped; the deprecated CUDA model parameters fill in what the cuda accelerator's
    own parameters leave out."""
    options = kernel_options(config_of(
        'optimization { execution_accelerators { gpu_execution_accelerator: [\n'
        '  { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } },\n'
        '  { name: "cuda" parameters { key: "gpu_mem_limit" value: "1024" } } ] } }\n'
        'parameters { key: "gpu_mem_limit" value { string_value: "2048" } }\n'
        'parameters { key: "cudnn_conv_algo_search" value { string_value: "1" } }\n'
    ))
    assert options.providers == ("tensorrt", "cuda")
    assert options.provider_options == {
        "TensorrtExecutionProvider": {"trt_fp16_enable": "1"},
        "CUDAExecutionProvider": {"gpu_mem_limit": "1024", "cudnn_conv_algo_search": "HEURISTIC"},
    }
    assert kernel_options(config_of("max_batch_size: 8")).provider_options == {}


def test_a_two_gpu_config_serves_four_instances_from_one_cpu_session_here(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model, config=TWO_GPUS)})
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
        assert client.infer("add", [inp]).as_numpy("OUTPUT0")[0, 0] == 1.0
        groups = client.get_model_config("add").config.instance_group
        assert [(g.count, list(g.gpus)) for g in groups] == [(2, [0, 1])]
        instances = scrape_metrics(server.metrics_url)[
            ("fleetserve_kernel_instances", frozenset({("model", "add"), ("version", "1")}))
        ]
        assert instances == 4
        assert "model 'add' version 1 ready on CPUExecutionProvider (4 instances)" in server.log, server.log
        assert server.log.count("are not used") == 1, server.log  # the fallback is logged once, not per GPU
        client.close()


TRITON_GPU_CONFIG = """max_batch_size: 8
optimization { execution_accelerators { gpu_execution_accelerator: [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "trt_engine_cache_enable" value: "1" } } ] } }
model_transaction_policy { decoupled: false }
"""


def test_a_triton_tensorrt_config_serves_on_the_cpu_here_and_reports_its_parameters(tmp_path: Path):
    """A config written for Triton's TensorRT accelerator loads as it is; without a GPU provider the model serves
    from the CPU, and the fallback is logged once."""
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model, config=TRITON_GPU_CONFIG)})
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
        assert client.infer("add", [inp]).as_numpy("OUTPUT0")[0, 0] == 1.0
        accelerators = client.get_model_config("add").config.optimization.execution_accelerators
        assert [(a.name, dict(a.parameters)) for a in accelerators.gpu_execution_accelerator] == [
            ("tensorrt", {"precision_mode": "FP16", "trt_engine_cache_enable": "1"})]
        assert "execution providers tensorrt, cuda are not used" in server.log, server.log
        client.close()
