"""instance_group as Triton means it: each listed GPU gets its own instances, a group without gpus has its count
on every visible GPU, and on a machine without a GPU provider the same config serves from one CPU session."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as tc
from prometheus_client import CollectorRegistry

import kernels.ort as ort_module
from kernels.placement import GroupPlacement
from kernels.testing import GPU_BUILD, GpuSessions
from model_store.complete import ModelTensor, build_config
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.repository import ModelRepository
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from ops.metrics import ServerMetrics
from ops.visible_gpus import visible_gpus
from server.servable import ServingDefaults, kernel_options, load_servable
from server.testing import ServerProcess, scrape_metrics

TWO_GPUS = "max_batch_size: 8\ninstance_group [ { count: 2, kind: KIND_GPU, gpus: [ 0, 1 ] } ]\n"


def config_of(text: str):
    tensor = [ModelTensor("INPUT0", np.dtype(np.float32), (None, 4))]
    return build_config("m", parse_config_text(text, "config.pbtxt"), tensor, tensor, "config.pbtxt",
                        stated=stated_fields(text))


def test_the_kernel_is_given_the_groups_as_written():
    options = kernel_options(config_of(TWO_GPUS))
    assert (options.groups, options.allow_gpu) == ((GroupPlacement(2, (0, 1)),), True)
    uneven = kernel_options(config_of(
        "instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 2 ] }, { count: 2, kind: KIND_GPU, gpus: [ 0 ] } ]"
    ))
    assert uneven.groups == (GroupPlacement(1, (2,)), GroupPlacement(2, (0,)))
    assert kernel_options(config_of("max_batch_size: 8")).groups == (GroupPlacement(1),)  # KIND_AUTO, count 1
    assert kernel_options(config_of("instance_group [ { count: 3, kind: KIND_CPU } ]")).allow_gpu is False


@pytest.fixture
def two_visible_gpus(monkeypatch):
    """A GPU build of onnxruntime whose providers start, on 8 cores, with CUDA_VISIBLE_DEVICES=0,1 (found by
    ops.visible_gpus as the server finds it)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(onnxruntime, "InferenceSession", GpuSessions())
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD))
    monkeypatch.setattr(ort_module, "available_cores", lambda: 8)
    visible_gpus.cache_clear()
    yield
    visible_gpus.cache_clear()


async def test_a_gpu_group_without_gpus_serves_on_every_visible_gpu(tmp_path: Path, two_visible_gpus, caplog):
    """count: 2 and no gpus on 2 visible GPUs: four instances. The batches in flight, the executor's threads,
    fleetserve_kernel_instances and the ready line count all four; the config keeps the group as written."""
    config = "max_batch_size: 8\ndynamic_batching { }\ninstance_group [ { count: 2, kind: KIND_GPU } ]\n"
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model, config=config)})
    metrics = ServerMetrics(CollectorRegistry())
    with caplog.at_level(logging.INFO):
        servable = await load_servable(ModelRepository(repo).read("add"), 1, ServingDefaults(), metrics)
    try:
        assert (servable.instances, servable.kernel.executor._max_workers) == (4, 4)
        assert servable.batcher.config.max_concurrent_batches == 4
        assert servable.metrics.instances == 4
        assert servable.config.instance_count == 2  # the CPU's count: what a machine without GPUs would serve
        assert [(g.count, list(g.gpus)) for g in servable.config.to_proto().instance_group] == [(2, [])]
        assert ("model 'add' version 1 ready on TensorrtExecutionProvider, CUDAExecutionProvider, "
                "CPUExecutionProvider (instances: 2 on GPU 0, 2 on GPU 1)") in caplog.text, caplog.text
        assert "2 GPUs visible (CUDA_VISIBLE_DEVICES='0,1')" in caplog.text
        outputs = await servable.submit({"INPUT0": np.zeros((1, 16), np.float32)}, 1, ("INPUT0",), None)
        np.testing.assert_array_equal(outputs["OUTPUT0"], np.ones((1, 16), np.float32))
    finally:
        await servable.close()


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
