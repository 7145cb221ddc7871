"""Execution providers and their options: Triton's accelerator parameters, mapped to onnxruntime's options."""

from __future__ import annotations

import numpy as np
import pytest

import kernels.ort as ort_module
from kernels.ort import GroupPlacement, KernelOptions, OrtKernel, SessionPlan, plan_sessions
from kernels.providers import (
    OptionError,
    ProviderChoice,
    accelerator_options,
    choose_providers,
    cuda_model_parameters,
)
from model_store.testing import write_add_constant_model

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_BUILD = [TRT, CUDA, CPU]


@pytest.mark.parametrize(("requested", "available", "allow_gpu", "providers", "skipped"), [
    ((), GPU_BUILD, True, (TRT, CUDA, CPU), ()),
    ((), [CPU], True, (CPU,), ("tensorrt", "cuda")),
    # as Triton's onnxruntime backend: CUDA runs the nodes TensorRT cannot, on the same GPU
    (("tensorrt",), GPU_BUILD, True, (TRT, CUDA, CPU), ()),
    (("tensorrt", "cpu"), GPU_BUILD, True, (TRT, CUDA, CPU), ()),
    (("cuda",), GPU_BUILD, True, (CUDA, CPU), ()),
    (("cuda", "tensorrt"), GPU_BUILD, True, (CUDA, TRT, CPU), ()),
    (("cpu",), GPU_BUILD, True, (CPU,), ()),
    (("tensorrt",), GPU_BUILD, False, (CPU,), ("tensorrt", "cuda")),  # KIND_CPU
    (("tensorrt",), [CUDA, CPU], True, (CUDA, CPU), ("tensorrt",)),
])
def test_the_chain_is_what_was_asked_for_and_is_installed(requested, available, allow_gpu, providers, skipped):
    assert choose_providers(requested, available, allow_gpu=allow_gpu) == ProviderChoice(providers, skipped)


@pytest.mark.parametrize(("short", "parameters", "options"), [
    ("tensorrt", {"precision_mode": "FP16"}, {"trt_fp16_enable": "1"}),
    ("tensorrt", {"precision_mode": "INT8", "int8_calibration_table_name": "calib.flatbuffers"},
     {"trt_int8_enable": "1", "trt_int8_calibration_table_name": "calib.flatbuffers"}),
    ("tensorrt", {"precision_mode": "FP32"}, {}),
    ("tensorrt", {"max_workspace_size_bytes": "1073741824", "trt_engine_cache_enable": "true",
                  "trt_engine_cache_path": "/cache", "trt_builder_optimization_level": "3"},
     {"trt_max_workspace_size": "1073741824", "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/cache",
      "trt_builder_optimization_level": "3"}),
    ("tensorrt", {"trt_auxiliary_streams": "-1", "trt_timing_cache_enable": "False"},
     {"trt_auxiliary_streams": "-1", "trt_timing_cache_enable": "0"}),
    ("cuda", {"cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "4294967296", "use_tf32": "0"},
     {"cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "4294967296", "use_tf32": "0"}),
    ("cuda", {}, {}),
    ("cpu", {}, {}),
])
def test_accelerator_parameters_become_onnxruntime_provider_options(short, parameters, options):
    assert accelerator_options(short, parameters) == options


@pytest.mark.parametrize(("short", "parameters", "key", "says"), [
    ("tensorrt", {"precision_mode": "fp16"}, "precision_mode", 'use "FP32", "FP16", "BF16" or "INT8"'),
    ("tensorrt", {"max_workspace_size_bytes": "-1"}, "max_workspace_size_bytes", "a whole number of 0 or more"),
    ("tensorrt", {"max_workspace_size_bytes": str(2**64)}, "max_workspace_size_bytes", "0 or more"),
    ("tensorrt", {"trt_dla_core": "one"}, "trt_dla_core", "a whole number"),
    ("tensorrt", {"trt_engine_cache_path": ""}, "trt_engine_cache_path", "a non-empty text"),
    ("tensorrt", {"fp16": "1"}, "fp16", "not a tensorrt accelerator parameter"),
    ("tensorrt", {"device_id": "0"}, "device_id", "instance group's gpus"),
    ("cuda", {"device_id": "0"}, "device_id", "instance group's gpus"),
    ("cuda", {"precision_mode": "FP16"}, "precision_mode", "not a cuda accelerator parameter"),
    ("cuda", {"arena_extend_strategy": "1"}, "arena_extend_strategy", '"kNextPowerOfTwo" or "kSameAsRequested"'),
    ("cpu", {"x": "1"}, "x", "takes no parameters"),
    ("cuda", {"enable_cuda_graph": "1"}, "enable_cuda_graph", "CUDA graphs need every run to have the same shapes"),
    ("tensorrt", {"trt_cuda_graph_enable": "1"}, "trt_cuda_graph_enable", "dynamic batches do not have"),
])
def test_a_parameter_an_accelerator_cannot_take_is_refused_by_name(short, parameters, key, says):
    with pytest.raises(OptionError) as caught:
        accelerator_options(short, parameters)
    assert caught.value.key == key and says in str(caught.value)


def test_tritons_deprecated_cuda_model_parameters_map_to_cuda_options():
    assert cuda_model_parameters({
        "cudnn_conv_algo_search": "1", "arena_extend_strategy": "1", "gpu_mem_limit": "4294967200",
        "do_copy_in_default_stream": "0", "intra_op_thread_count": "2",
    }) == {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested",
           "gpu_mem_limit": "4294967200", "do_copy_in_default_stream": "0"}
    with pytest.raises(OptionError, match="0 .kNextPowerOfTwo., 1 .kSameAsRequested."):
        cuda_model_parameters({"arena_extend_strategy": "kSameAsRequested"})


def test_each_gpu_session_gets_the_configs_options_and_its_own_device_id():
    options = {TRT: {"trt_fp16_enable": "1"}, CUDA: {"gpu_mem_limit": "1024"}}
    assert plan_sessions((TRT, CUDA, CPU), (0, 1), options) == (
        SessionPlan(0, 1, ({"trt_fp16_enable": "1", "device_id": "0"}, {"gpu_mem_limit": "1024", "device_id": "0"}, {})),
        SessionPlan(1, 1, ({"trt_fp16_enable": "1", "device_id": "1"}, {"gpu_mem_limit": "1024", "device_id": "1"}, {})),
    )
    assert plan_sessions((CPU,), (0, 1), options) == (SessionPlan(None, 2, ({},)),)


@pytest.mark.filterwarnings("ignore:Specified provider .* is not in available provider names")
def test_the_options_reach_onnxruntime(tmp_path, monkeypatch):
    """The session is created with each provider's options (this CPU build of onnxruntime then runs on the CPU)."""
    import onnxruntime

    created: list[dict] = []
    real = onnxruntime.InferenceSession

    def recording(path, **kwargs):
        created.append({"providers": kwargs["providers"], "provider_options": kwargs["provider_options"]})
        return real(path, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    monkeypatch.setattr(ort_module, "choose_providers", lambda *a, **k: ProviderChoice((TRT, CUDA, CPU), ()))
    kernel = OrtKernel(write_add_constant_model(tmp_path / "model.onnx", features=4), KernelOptions(
        providers=("tensorrt",), groups=(GroupPlacement(1, (1,)),),
        provider_options={TRT: {"trt_fp16_enable": "1"}, CUDA: {"cudnn_conv_algo_search": "HEURISTIC"}},
    ))
    kernel.load()
    try:
        assert created[0] == {
            "providers": [TRT, CUDA, CPU],
            "provider_options": [{"trt_fp16_enable": "1", "device_id": "1"},
                                 {"cudnn_conv_algo_search": "HEURISTIC", "device_id": "1"}, {}],
        }
        np.testing.assert_array_equal(kernel.run({"INPUT0": np.zeros((1, 4), np.float32)})["OUTPUT0"], np.ones((1, 4)))
    finally:
        kernel.close()
